"""Checkpoints and baked maps that know which project they belong to.

Why: a project folder holds files written at different times (``checkpoint.pt`` every few
seconds while training, ``maps.npz`` once baked). A ``kill -9`` between the two, or a
checkpoint copied from another project, would otherwise let ``edit`` mix networks and maps
of different runs or projects without a word. So:

* a checkpoint records the project's **identity** (source fingerprint, frames, working size,
  layers) and its training step; loading it into another project is refused;
* baked maps record (``BakedMaps.meta``) the identity and the checkpoint they were baked
  from (its step, size and SHA-256); when the checkpoint on disk is not that one, the
  project "needs bake" and ``inve train --resume`` re-bakes it;
* a damaged file (truncated, random bytes, empty) is one line naming the file and what to do.

Imports torch only inside the functions that need it, so ``info`` stays light.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core import fsutil
from core.errors import InveError

RESUME_HINT = "run 'inve train VIDEO -o {project} --resume' to re-bake it"


def identity(info: Any) -> dict[str, Any]:
    """What makes a project itself: where its frames come from and how they are modelled."""
    return {"source_fingerprint": getattr(info, "source_fingerprint", None),
            "frames": [int(info.frames[0]), int(info.frames[-1]) + 1] if info.frames else [],
            "work_size": [int(v) for v in info.work_size],
            "layers": list(info.layers)}


def identity_differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Human-readable differences (keys missing on either side are not compared)."""
    out = []
    for key in ("source_fingerprint", "frames", "work_size", "layers"):
        a, b = have.get(key), want.get(key)
        if a is None or b is None:
            continue
        if _norm(a) != _norm(b):
            out.append(f"{key} {_show(a)} vs {_show(b)}")
    return out


def _norm(v: Any) -> Any:
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def _show(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return f"{v[0]}:{v[1]}" if v[1] > v[0] else f"{v[0]}x{v[1]}"
    if isinstance(v, str) and len(v) > 12:
        return v[:8] + "..."
    return str(_norm(v))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], info: Any) -> None:
    """Write a training state with the project's identity, atomically.

    ``torch.save`` into an open file, so a full disk surfaces as an ``OSError`` (one line via
    :mod:`core.fsutil`) instead of a zip-writer assertion, and no partial file is left.
    """
    import torch

    state = {**state, "identity": identity(info)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    try:
        fsutil.write_with(path, write)
    except RuntimeError as exc:  # torch's zip writer reports a failed write as RuntimeError
        raise fsutil.OutputError(f"cannot write the checkpoint {path}: {str(exc).splitlines()[0]} "
                                 "(is the disk full?); the previous checkpoint is kept") from None


def read_checkpoint(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file; a damaged one is one line naming it and what to do."""
    import torch

    path = Path(path)
    what_to_do = (f"delete it and train again with 'inve train VIDEO -o {path.parent} --resume' "
                  "(training restarts; the project's frames are kept)")
    if not path.is_file():
        raise InveError(f"{path.parent} has no trained networks ({path.name}); train it first")
    if path.stat().st_size == 0:
        raise InveError(f"the checkpoint {path} is empty (damaged); {what_to_do}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip failure means a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InveError(f"the checkpoint {path} is damaged ({first}); {what_to_do}") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise InveError(f"the checkpoint {path} is not an inve training state; {what_to_do}")
    return state


def check_belongs(state: dict[str, Any], info: Any, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained for another project (a copy from elsewhere)."""
    have = state.get("identity")
    if not isinstance(have, dict):  # before identities: compare what the model config says
        mc = state.get("model_config") or {}
        have = {"frames": None, "work_size": mc.get("work_size"), "layers": mc.get("layers")}
        n = mc.get("n_frames")
        if isinstance(n, int) and n != info.n_frames:
            have["frames"] = [0, n]
            want = {"frames": [0, info.n_frames]}
            diffs = identity_differences(have, want)
        else:
            diffs = []
        diffs += identity_differences({k: have[k] for k in ("work_size", "layers")}, identity(info))
    else:
        diffs = identity_differences(have, identity(info))
    if diffs:
        raise InveError(f"the checkpoint {path} belongs to another project ({'; '.join(diffs)}); "
                        f"put this project's own checkpoint back, or delete {Path(path).name} and "
                        "train again with --resume")


def checkpoint_record(path: str | os.PathLike, step: int) -> dict[str, Any]:
    """What baked maps remember about the checkpoint they were baked from."""
    path = Path(path)
    st = path.stat()
    return {"step": int(step), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": fsutil.sha256_file(path)}


def maps_meta(info: Any, ckpt_path: str | os.PathLike, step: int) -> dict[str, Any]:
    return {"identity": identity(info), "checkpoint": checkpoint_record(ckpt_path, step)}


def maps_state(meta: dict[str, Any], info: Any, ckpt_path: str | os.PathLike) -> tuple[str, str]:
    """``("ok", "")`` when the maps belong to this project and to the checkpoint on disk;
    otherwise ``("foreign" | "stale", reason)``. Maps from before identities are trusted."""
    if not meta:
        return "ok", ""
    diffs = identity_differences(meta.get("identity") or {}, identity(info))
    if diffs:
        return "foreign", f"the baked maps belong to another project ({'; '.join(diffs)})"
    rec = meta.get("checkpoint") or {}
    ckpt = Path(ckpt_path)
    if not rec:
        return "ok", ""
    if not ckpt.is_file():
        return "ok", ""  # maps alone still render; networks are asked for separately
    st = ckpt.stat()
    if st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns"):
        return "ok", ""
    if st.st_size == rec.get("size") and fsutil.sha256_file(ckpt) == rec.get("sha256"):
        return "ok", ""  # the same checkpoint, copied (cp without -p changes times)
    return "stale", (f"the baked maps come from checkpoint step {rec.get('step')}, but {ckpt.name} holds "
                     "another training state (a run stopped before baking, or a copied checkpoint)")

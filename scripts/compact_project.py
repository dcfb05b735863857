"""Re-store a trained project's baked maps in the compact store and print its size before/after.

    .venv/bin/python scripts/compact_project.py PROJECT

What a bake of this inve writes (core/project.py ``BakedMaps``): 8-bit atlases and alpha, no
stored usage maps, no all-zero alpha; segments keep no atlas PNGs (``inve atlas`` exports
them) and no masks preview, and their checkpoints (already without optimizer state) keep
every hash table in float16 (``core.train.compact_model``). Nothing is retrained: the maps keep
their values to within half an 8-bit level and their ``meta``, whose checkpoint record is
renewed for a checkpoint rewritten in float16 (its mapping moves uv by under 1e-5), so the
project stays "trained". A segment with confirmed keys (``inve correct``) keeps its checkpoint
as it is: the keys are tied to it. Segment atlas PNGs are removed only while unchanged since
inve wrote them; masks previews are inve's cache. Holds the project's lock, like every writer
of its trained state. Projects already compact are left as they are.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import fsutil  # noqa: E402
from core.arraystore import META, folder_size, read_meta  # noqa: E402
from core.errors import InveError  # noqa: E402
from core.lock import project_lock  # noqa: E402
from core.preprocess import PREVIEW_FILE  # noqa: E402
from core.project import BakedMaps, Project  # noqa: E402


def compact_checkpoint(part: Project) -> bool:
    """Rewrite a segment's compact checkpoint with every hash table in float16 and renew the
    checkpoint record of its maps (True when it changed). Only a checkpoint the maps were
    baked from (state "trained") and that holds no optimizer state is touched."""
    import torch  # noqa: PLC0415

    from core import checkpoint  # noqa: PLC0415
    from core.correct import CONFIRMED_FILE  # noqa: PLC0415
    from core.train import _compactable, compact_model_state  # noqa: PLC0415

    ckpt = part.path / Project.CHECKPOINT
    if not ckpt.is_file() or (part.path / CONFIRMED_FILE).is_file() or part.state()[0] != "trained":
        return False
    state = checkpoint.read_checkpoint(ckpt)
    model = state["model"]
    if state.get("optimizer") is not None or not any(_compactable(v) and v.dtype == torch.float32
                                                     for v in model.values()):
        return False
    maps_dir = part.path / Project.MAPS
    stored = read_meta(maps_dir)
    meta = dict(stored.get("meta") or {}) if stored else {}
    if stored is None or not meta.get("checkpoint"):
        return False
    checkpoint.save_checkpoint(ckpt, {**state, "model": compact_model_state(model)}, part.info)
    meta["checkpoint"] = checkpoint.checkpoint_record(ckpt, int(state["step"]))
    fsutil.write_json(maps_dir / META, {**stored, "meta": meta})  # the maps' commit marker, renewed
    return True


def compact(project_dir: Path) -> tuple[int, int]:
    project = Project.open(project_dir)
    parts = project.segments() if project.is_segmented else [project]
    before = folder_size(project_dir)
    with project_lock(project_dir, "compact"):
        for part in parts:
            maps_dir = part.path / Project.MAPS
            stored = read_meta(maps_dir)
            if stored is None:
                raise InveError(f"{part.path} has no complete baked maps; train it first")
            if stored.get("store") != BakedMaps.STORE:
                maps = BakedMaps.load(maps_dir, mmap=False)
                maps.atlas_used = {}  # not stored any more (recomputed when exported)
                maps.save(maps_dir)
            if part is not project:
                for png in part.path.glob("atlas_*.png"):
                    if fsutil.is_ours(png):
                        png.unlink()
                (part.path / "cache" / PREVIEW_FILE).unlink(missing_ok=True)  # inve's cache, not output
                compact_checkpoint(part)
    return before, folder_size(project_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        before, after = compact(Path(argv[0]))
    except InveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{argv[0]}: {before / 1e6:.1f} MB ({before / 2**20:.1f} MiB) -> {after / 1e6:.1f} MB "
          f"({after / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

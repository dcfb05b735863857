"""Corrections that teach the model (``inve correct``): confirmed positions become constraints.

A user who sees a track or an edit slide moves a marker by hand on a few frames (Blender's
Movie Clip editor) and hands the confirmed positions back as CORRECTIONS.json::

    {"tracks": [{"id": "p0", "keys": [{"frame": 0, "x": 101.5, "y": 40.25},
                                      {"frame": 30, "x": 140.0, "y": 52.0}]}]}

Each track is one surface point: every key of it must map to the same atlas point, and the
inverse mapping must bring that atlas point back to each key. Fitting resumes from the
checkpoint for a short budget with the full objective (so the rest of the clip keeps what it
learned) plus that correction term, at a lower learning rate, then the project is baked
again. The project lock (core/lock.py) is held throughout: one writer per project.

The confirmed keys are also kept in the project (:data:`CONFIRMED_FILE`, beside the
checkpoint): rendering and tracking refine every propagated position against the drawing
frame's pixels (core/refine.py), which would pull a point back to where appearance puts it
and undo what the user confirmed; core/edits/context.py reads the keys and fades that
refinement out near them. The file records the checkpoint it was fitted into (step and
SHA-256, as baked maps do), so a retrain makes it stale and it is ignored; a later
``correct`` fits the kept keys again together with the new ones (the user's word stays).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import fsutil
from core.coords import SourceCoords
from core.errors import InveError
from core.layers import layer_at
from core.model import LayeredAtlasModel
from core.progress import Progress
from core.project import Project, ProjectInfo

DEFAULT_MINUTES = 0.5
#: weight of the correction term (per source pixel of disagreement) against the objective
CORRECTION_WEIGHT = 0.5
#: learning rates of the fine-tuning, as a share of the training's initial rates
LR_SHARE = 0.3
#: the keys the user confirmed, kept in the project for rendering and tracking (see above)
CONFIRMED_FILE = Project.CONFIRMED


@dataclass
class CorrectionTrack:
    id: str
    layer: str
    t: np.ndarray  # [K] project frame indices
    xy: np.ndarray  # [K, 2] source pixels


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def parse_corrections(doc: Any, info: ProjectInfo, alpha: np.ndarray | None = None,
                      fname: str = "CORRECTIONS.json") -> list[CorrectionTrack]:
    """Validate a CORRECTIONS document; one clear error naming the track and key.

    ``alpha`` (the baked [T, h, w] foreground alpha) picks each track's layer where it does
    not name one: the layer seen at its first key.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("tracks"), list):
        raise InveError(f"{fname}: must be a JSON object with a 'tracks' list")
    if not doc["tracks"]:
        raise InveError(f"{fname}: 'tracks' is empty; nothing to correct")
    W, H = info.source_size
    out: list[CorrectionTrack] = []
    for i, tr in enumerate(doc["tracks"]):
        where = f"{fname} tracks[{i}]"
        if not isinstance(tr, dict) or not isinstance(tr.get("keys"), list):
            raise InveError(f"{where}: must be an object with 'id' and a 'keys' list")
        tid = str(tr.get("id", i))
        keys = tr["keys"]
        if len(keys) < 2:
            raise InveError(f"{where} ({tid}): needs at least two keys (the same point confirmed on two frames)")
        ts, xys, seen = [], [], set()
        for j, k in enumerate(keys):
            kw = f"{where} ({tid}) keys[{j}]"
            if not isinstance(k, dict) or not all(f in k for f in ("frame", "x", "y")):
                raise InveError(f"{kw}: must be an object with frame, x, y")
            if not (_num(k["x"]) and _num(k["y"])):
                raise InveError(f"{kw}: x and y must be numbers")
            frame = k["frame"]
            if isinstance(frame, float) and frame.is_integer():
                frame = int(frame)
            try:
                t = info.frame_index(frame)
            except InveError as exc:
                raise InveError(f"{kw}: {exc}") from None
            if t in seen:
                raise InveError(f"{kw}: frame {frame} appears twice in this track")
            if not (0.0 <= k["x"] <= W and 0.0 <= k["y"] <= H):
                raise InveError(f"{kw}: ({k['x']}, {k['y']}) is outside the {W}x{H} frame")
            seen.add(t)
            ts.append(t)
            xys.append((float(k["x"]), float(k["y"])))
        layer = tr.get("layer")
        if layer is None:
            layer = "bg"
            if alpha is not None and "fg" in info.layers:
                h, w = alpha.shape[1:]
                x, y = xys[0]
                layer = layer_at(alpha[ts[0], min(h - 1, int(y * h / H)), min(w - 1, int(x * w / W))])
        if layer not in info.layers:
            raise InveError(f"{where} ({tid}): 'layer' must be one of {', '.join(info.layers)}, got {layer!r}")
        out.append(CorrectionTrack(tid, layer, np.array(ts), np.array(xys, np.float64)))
    return out


def _key_doc(tr: CorrectionTrack, info: ProjectInfo) -> dict[str, Any]:
    return {"id": tr.id, "layer": tr.layer,
            "keys": [{"frame": int(info.frames[int(t)]), "x": float(x), "y": float(y)} for t, (x, y) in zip(tr.t, tr.xy)]}


def read_confirmed(project_dir: Path, info: ProjectInfo, maps_meta: dict[str, Any] | None) -> list[CorrectionTrack]:
    """The confirmed keys kept in the project, if they belong to its current fit.

    Kept keys are valid for the checkpoint the correction wrote (its step and SHA-256, which
    the baked maps record too: ``maps_meta``); after a retrain, or with maps from before
    corrections were kept, they are stale and ignored (empty list). A damaged or foreign
    file is ignored as well: the keys only steer refinement, the mapping holds the fit.
    """
    from core import checkpoint  # noqa: PLC0415

    path = Path(project_dir) / CONFIRMED_FILE
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        rec, have = doc["checkpoint"], (maps_meta or {}).get("checkpoint") or {}
        if (checkpoint.identity_differences(doc.get("identity") or {}, checkpoint.identity(info))
                or not have or rec.get("sha256") != have.get("sha256") or rec.get("step") != have.get("step")):
            return []
        return parse_corrections({"tracks": doc["tracks"]}, info, None, CONFIRMED_FILE)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InveError):
        return []


def merge_confirmed(kept: list[CorrectionTrack], new: list[CorrectionTrack]) -> list[CorrectionTrack]:
    """Kept keys plus new ones; a track (id and layer) confirmed again on a frame takes the new key."""
    out: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for tr in [*kept, *new]:
        keys = out.setdefault((tr.id, tr.layer), {})
        for t, xy in zip(tr.t, tr.xy):
            keys[int(t)] = xy
    return [CorrectionTrack(tid, layer, np.array(sorted(keys)), np.array([keys[t] for t in sorted(keys)], np.float64))
            for (tid, layer), keys in out.items()]


def write_confirmed(project_dir: Path, info: ProjectInfo, tracks: list[CorrectionTrack], ckpt_record: dict[str, Any]) -> None:
    """Keep the confirmed keys with the checkpoint they were fitted into (atomic write)."""
    from core import checkpoint  # noqa: PLC0415

    fsutil.write_json(Path(project_dir) / CONFIRMED_FILE,
                      {"format": 1, "identity": checkpoint.identity(info),
                       "checkpoint": {k: ckpt_record[k] for k in ("step", "sha256")},
                       "tracks": [_key_doc(tr, info) for tr in tracks]})


class CorrectionTerm:
    """Keys of a track share one atlas point; the inverse brings it back to each key.

    Both parts are measured in source pixels (the forward part through the atlas scale), so
    "one pixel off" weighs the same everywhere.
    """

    def __init__(self, tracks: list[CorrectionTrack], coords: SourceCoords, px_per_uv: float,
                 device: torch.device, weight: float = CORRECTION_WEIGHT) -> None:
        self.tracks, self.weight, self.px_per_uv = tracks, weight, px_per_uv
        self.coords = coords
        self.p = [torch.as_tensor(coords.to_norm(tr.xy), dtype=torch.float32, device=device) for tr in tracks]
        self.t = [torch.as_tensor(tr.t, dtype=torch.float32, device=device) for tr in tracks]
        self.xy = [torch.as_tensor(tr.xy, dtype=torch.float32, device=device) for tr in tracks]

    def errors_px(self, model: LayeredAtlasModel) -> list[np.ndarray]:
        """Per track and key: distance from the key to where the mapping carries the track (source px)."""
        out = []
        with torch.no_grad():
            for tr, p, t in zip(self.tracks, self.p, self.t):
                uv = model.uv(tr.layer, p, t).mean(0, keepdim=True).expand(len(t), -1)
                back = self.coords.from_norm(model.inverse(tr.layer, uv, t).cpu().numpy().astype(np.float64))
                out.append(np.linalg.norm(back - tr.xy, axis=1))
        return out

    def __call__(self, model: LayeredAtlasModel, fr: float) -> torch.Tensor:
        total = torch.zeros((), device=self.p[0].device)
        for tr, p, t, xy in zip(self.tracks, self.p, self.t, self.xy):
            uv = model.uv(tr.layer, p, t)  # [K, 2]
            centre = uv.mean(0, keepdim=True)
            agree = (uv - centre).norm(dim=1).mean() * self.px_per_uv
            back = model.inverse(tr.layer, centre.detach().expand(len(t), -1), t)
            d = self.coords.delta_to_source_px(back - p)
            total = total + agree + d.norm(dim=1).mean()
        return self.weight * total / len(self.tracks)


def correct_project(project_dir: Path, corrections: Path, minutes: float | None, progress: Progress) -> dict[str, Any]:
    """``inve correct``: fine-tune a trained project with confirmed positions, then re-bake."""
    from core.lock import project_lock  # noqa: PLC0415

    project_dir = Path(project_dir)
    project = Project.open(project_dir)
    if not project.is_trained:
        raise InveError(f"{project_dir} is not trained yet; run 'inve train' first")
    doc = fsutil.read_json(corrections, "corrections file")
    minutes = DEFAULT_MINUTES if minutes is None else minutes
    if not (minutes > 0):
        raise InveError("--minutes must be positive")
    if project.is_segmented:  # each segment fine-tuned with the keys in its frames
        from core.segments import correct_segmented  # noqa: PLC0415

        with project_lock(project_dir, "correct"):
            return correct_segmented(project, doc, Path(corrections).name, minutes, progress)
    tracks = parse_corrections(doc, project.info, project.maps().alpha, Path(corrections).name)
    with project_lock(project_dir, "correct"):
        return _fine_tune(project, tracks, minutes, progress)


def _fine_tune(project: Project, tracks: list[CorrectionTrack], minutes: float, progress: Progress,
               segment: bool = False) -> dict[str, Any]:
    """Fine-tune ``project``'s networks towards ``tracks``, re-bake, keep the keys.

    ``segment``: a segment of a long shot keeps the layout training gave it (a compact
    checkpoint without optimizer state, no atlas PNGs), so a corrected segment is not three
    times the size of the others.
    """
    from core.bake import atlas_psnr, bake  # noqa: PLC0415
    from core.preprocess import preprocess  # noqa: PLC0415
    from core.schedules import FullDetail, LearningRate  # noqa: PLC0415
    from core import video as vio  # noqa: PLC0415
    from core.device import pick_device  # noqa: PLC0415
    from core.model import load_model  # noqa: PLC0415
    from core.objectives import LossWeights  # noqa: PLC0415
    from core.sampling import TrainingData  # noqa: PLC0415
    from core.preprocess import working_frames  # noqa: PLC0415
    from core import checkpoint  # noqa: PLC0415
    from core.train import TrainConfig, Trainer, _check_project_atlases, compact_model, run_loop  # noqa: PLC0415

    info = project.info
    # keys confirmed in earlier rounds (still valid for this fit) are met again with the new ones
    tracks = merge_confirmed(read_confirmed(project.path, info, project.maps().meta), tracks)
    stored = dict(info.settings.get("train", {}))
    device = pick_device(str(stored.get("device", "auto")))
    ckpt = project.path / Project.CHECKPOINT
    model, state = load_model(ckpt, str(device))
    checkpoint.check_belongs(state, info, ckpt)  # a checkpoint copied from elsewhere is not corrected
    _check_project_atlases(project.path)  # an atlas painted in place is never overwritten by the re-bake
    source = str(project.source_path())
    vinfo = vio.probe(source)
    start, end = info.frames[0], info.frames[-1] + 1
    frames = working_frames(project.path / "cache", source, vinfo, start, end, tuple(info.work_size), progress)
    masks = stored.get("masks")
    if not masks and stored.get("fg_hint") and (project.path / "cache" / "hint_masks").is_dir():
        masks = str(project.path / "cache" / "hint_masks")  # the masks the hints grew into
    prep = preprocess(project.path / "cache", frames, Path(masks) if masks and Path(masks).is_dir() else None,
                      info.layers == ["bg"], info.frames[0], progress)
    known = set(LossWeights.__dataclass_fields__)
    weights = LossWeights(**{k: v for k, v in dict(stored.get("weights") or {}).items() if k in known})
    # bootstrap masks faded long ago in the run being corrected: keep them faded
    weights.bootstrap_until = 1e-9
    cfg = TrainConfig(iters=None, minutes=minutes, seed=int(stored.get("seed", 0)) + 1,
                      batch=int(stored.get("batch", 8192)), weights=weights,
                      lr_table=float(stored.get("lr_table", 1e-2)), lr_mlp=float(stored.get("lr_mlp", 3e-3)))
    mask_source = info.settings.get("mask_source", prep.mask_source)
    data = TrainingData(prep.frames, prep.flow, prep.masks if "fg" in info.layers else None, device)
    base = {"map_tables": cfg.lr_table * LR_SHARE, "map_mlps": cfg.lr_mlp * LR_SHARE,
            "tables": cfg.lr_table * LR_SHARE, "mlps": cfg.lr_mlp * LR_SHARE}
    trainer = Trainer(model, data, cfg, mask_source, schedules=[LearningRate(base, cfg.lr_final), FullDetail()])
    coords = SourceCoords(tuple(info.source_size), tuple(info.work_size))
    # source px per atlas unit: the atlas spans uv_scale per normalised unit of the working frame
    px_per_uv = coords.work.half / model.cfg.uv_scale * max(info.source_size) / max(info.work_size)
    term = CorrectionTerm(tracks, coords, px_per_uv, device)
    before = term.errors_px(model)
    trainer.objective.add_term("correction", term)
    t0 = time.monotonic()
    scratch = project.path / "checkpoint.correct.tmp.pt"
    try:  # cancelled or failed: the project's own checkpoint and maps stay as they were
        run_loop(trainer, scratch, progress)
    finally:
        scratch.unlink(missing_ok=True)
    after = term.errors_px(model)
    # the corrected networks continue the project's own history (resume counts on)
    trainer.step = int(state.get("step", 0)) + trainer.step
    trainer.elapsed = float(state.get("elapsed", 0.0)) + trainer.elapsed
    # the same identity-carrying checkpoint and maps as training writes (core/checkpoint.py)
    state = trainer.state()
    if segment:
        state = {**state, "optimizer": None, "model": compact_model(model)}
    checkpoint.save_checkpoint(ckpt, state, info)
    model.set_atlas_detail(1.0)
    result = bake(model, prep.frames, info.source_size, progress)
    result.maps.meta = {**result.maps.meta, **checkpoint.maps_meta(info, ckpt, trainer.step)}
    result.maps.save(project.path / Project.MAPS)
    write_confirmed(project.path, info, tracks, result.maps.meta["checkpoint"])
    for layer, atlas in (() if segment else result.maps.atlas.items()):
        fsutil.write_output_file(project.path / f"atlas_{layer}.png", fsutil.png_writer(atlas), "project atlas")
    metrics = project.metrics()
    metrics.update({"psnr": round(result.psnr, 3), "atlas_psnr": round(atlas_psnr(result.maps, prep.frames), 3),
                    "iterations": trainer.step, "train_seconds": round(trainer.elapsed, 2),
                    "cycle_error_px": {k: round(v, 4) for k, v in result.cycle_error_px.items()},
                    "per_frame": result.per_frame(info.frames)})
    history = list(metrics.get("corrections", []))
    history.append({"tracks": len(tracks), "keys": int(sum(len(tr.t) for tr in tracks)),
                    "seconds": round(time.monotonic() - t0, 2),
                    "error_before_px": round(float(np.median(np.concatenate(before))), 3),
                    "error_after_px": round(float(np.median(np.concatenate(after))), 3)})
    metrics["corrections"] = history
    fsutil.write_json(project.path / Project.METRICS, metrics)
    last = history[-1]
    return {"project": str(project.path.resolve()), "psnr": metrics["psnr"], **last,
            "per_track": {tr.id: {"frames": [info.frames[int(t)] for t in tr.t],
                                  "before_px": [round(float(e), 3) for e in b],
                                  "after_px": [round(float(e), 3) for e in a]}
                          for tr, b, a in zip(tracks, before, after)},
            "summary": f"corrected {len(tracks)} track(s): median key error {last['error_before_px']:.2f} px -> "
                       f"{last['error_after_px']:.2f} px; PSNR {metrics['psnr']:.2f} dB; maps re-baked"}


__all__ = ["CONFIRMED_FILE", "CorrectionTrack", "CorrectionTerm", "parse_corrections", "correct_project",
           "read_confirmed", "merge_confirmed", "write_confirmed"]

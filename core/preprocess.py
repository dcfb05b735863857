"""Preprocessing for training: optical flow and foreground masks, cached in the project.

Flow for a long clip takes a while and never changes for the same frames, so it is stored
in ``PROJECT/cache`` and reused by ``--resume``; the cache is keyed by a hash of the
working-resolution frames and every setting that shapes the result, so a changed input
or a new algorithm version recomputes instead of reusing stale data.

Flow is stored as float16 (under 0.03 px rounding at 100 px of motion) and the in-memory
result is always that rounded flow, so a fresh run and a resumed run see identical data.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import flow as flow_mod
from core import fsutil
from core.errors import InveError
from core.flow import FlowField, compute_flow
from core.masks import auto_masks, load_masks, save_mask_preview
from core.progress import Progress
from core.video import list_images

FLOW_FILE = "flow.npz"
MASKS_FILE = "masks.npz"
PREVIEW_FILE = "masks_preview.png"
MASKS_VERSION = "auto-v1"


@dataclass
class Preprocessed:
    frames: np.ndarray  # uint8 [T,h,w,3] working resolution
    flow: FlowField
    masks: np.ndarray | None  # float32 [T,h,w] in 0..1; None for a single-layer project
    mask_source: str  # "user" | "auto" | "none"


def frames_digest(frames: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{frames.shape}|{frames.dtype}".encode())
    h.update(np.ascontiguousarray(frames).data)
    return h.hexdigest()


def _folder_digest(folder: Path) -> str:
    """Names and contents of a mask folder's images: editing a mask invalidates the cache."""
    h = hashlib.sha256()
    for f in list_images(folder):
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _flow_key(digest: str) -> str:
    return (f"{digest}|{flow_mod.FLOW_VERSION}|{flow_mod.CONSISTENCY_ABS}|"
            f"{flow_mod.CONSISTENCY_REL}")


def _load_npz(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file whose key matches, or None (missing, stale or damaged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if "key" not in z.files or str(z["key"]) != key:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def _round_flow(fl: FlowField) -> FlowField:
    """Round to float16 precision in place (no second float32 copy of the flow at peak)."""
    for a in (fl.fwd, fl.bwd):
        for t in range(a.shape[0]):
            a[t] = a[t].astype(np.float16)
    return fl


def _save_flow(path: Path, fl: FlowField, key: str) -> None:
    shape = np.array(fl.fwd_ok.shape, np.int64)
    fsutil.save_npz(path, key=np.array(key), fwd=fl.fwd.astype(np.float16), bwd=fl.bwd.astype(np.float16),
                    fwd_ok=np.packbits(fl.fwd_ok, axis=None), bwd_ok=np.packbits(fl.bwd_ok, axis=None),
                    ok_shape=shape)


def _unpack_flow(z: dict[str, np.ndarray]) -> FlowField:
    shape = tuple(int(v) for v in z["ok_shape"])
    n = int(np.prod(shape))
    return FlowField(z["fwd"].astype(np.float32), z["bwd"].astype(np.float32),
                     np.unpackbits(z["fwd_ok"], count=n).astype(bool).reshape(shape),
                     np.unpackbits(z["bwd_ok"], count=n).astype(bool).reshape(shape))


def get_flow(cache_dir: Path, frames: np.ndarray, digest: str, progress: Progress | None) -> FlowField:
    key = _flow_key(digest)
    path = Path(cache_dir) / FLOW_FILE
    cached = _load_npz(path, key)
    if cached is not None:
        fl = _unpack_flow(cached)
        if fl.fwd.shape[:3] == (frames.shape[0] - 1, *frames.shape[1:3]):
            if progress is not None:
                progress.message("optical flow: reusing the cached result")
            return fl
    fl = _round_flow(compute_flow(frames, progress))
    _save_flow(path, fl, key)
    return fl


def preprocess(cache_dir: Path, frames: np.ndarray, masks_dir: Path | None, single_layer: bool,
               start: int, progress: Progress | None = None) -> Preprocessed:
    """Flow and masks for ``frames`` (uint8 [T,h,w,3], source frames start..start+T-1), cached."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,h,w,3], got {frames.dtype} {frames.shape}")
    if masks_dir is not None and single_layer:
        raise InveError("--masks and --single-layer contradict each other: masks describe a foreground layer")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = frames_digest(frames)
    fl = get_flow(cache_dir, frames, digest, progress)
    t_count, h, w = frames.shape[:3]

    if single_layer:
        return Preprocessed(frames, fl, None, "none")

    if masks_dir is not None:
        source = "user"
        key = f"{digest}|user|{_folder_digest(Path(masks_dir))}|{start}"
    else:
        source = "auto"
        key = f"{_flow_key(digest)}|{MASKS_VERSION}"
    path = cache_dir / MASKS_FILE
    cached = _load_npz(path, key)
    if cached is not None and cached["masks"].shape[1:] in ((0, 0), (h, w)):
        masks = cached["masks"] if cached["masks"].shape[0] == t_count else None
        if progress is not None:
            progress.message("masks: reusing the cached result")
    else:
        if source == "user":
            masks = load_masks(Path(masks_dir), t_count, start, (w, h))  # type: ignore[arg-type]
        else:
            if progress is not None:
                progress.update("masks", 0, 1)
            masks = auto_masks(frames, fl)
            if progress is not None:
                progress.update("masks", 1, 1)
        stored = masks if masks is not None else np.zeros((0, 0, 0), np.float32)
        fsutil.save_npz(path, key=np.array(key), masks=stored.astype(np.float32))
        if masks is not None:
            save_mask_preview(frames, masks, cache_dir / PREVIEW_FILE)
    if masks is None:  # nothing moves apart from the background (the caller tells the user)
        return Preprocessed(frames, fl, None, "none")
    return Preprocessed(frames, fl, masks.astype(np.float32), source)

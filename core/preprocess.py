"""Preprocessing for training: optical flow and foreground masks, cached in the project.

Flow for a long clip takes a while and never changes for the same frames, so it is stored
in ``PROJECT/cache`` and reused by ``--resume``; the cache is keyed by a hash of the
working-resolution frames and every setting that shapes the result, so a changed input
or a new algorithm version recomputes instead of reusing stale data.

Caches are folders of memory-mapped ``.npy`` files (:mod:`core.arraystore`): flow is
computed pair by pair straight into float16 files, so a long clip's flow never sits in
RAM as float32, and a fresh run and a resumed run read identical data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import arraystore
from core import flow as flow_mod
from core.errors import InveError
from core.flow import FlowField, compute_flow
from core.masks import auto_masks, load_masks, save_mask_preview
from core.progress import Progress
from core.video import list_images

FLOW_DIR = "flow"  # memory-mapped float16 fwd/bwd, bool fwd_ok/bwd_ok (core.arraystore)
MASKS_DIR = "masks"  # memory-mapped uint8 masks
PREVIEW_FILE = "masks_preview.png"
MASKS_VERSION = "auto-v1"


@dataclass
class Preprocessed:
    frames: np.ndarray  # uint8 [T,h,w,3] working resolution
    flow: FlowField  # float16 vectors, bool flags (as stored in the cache)
    masks: np.ndarray | None  # uint8 [T,h,w], 1 = foreground, 0 = background; None for a single-layer project
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


def _open_store(folder: Path, key: str) -> dict[str, np.ndarray] | None:
    """Arrays of a committed cache store whose key matches; None if stale or damaged.

    Read into memory (compact dtypes, one copy): the whole clip's flow and masks are read by
    the mask pass and by training anyway, and pages of a file mapping touched in full would
    count once more towards the process's resident memory.
    """
    meta = arraystore.read_meta(folder)
    if meta is None or meta.get("key") != key:
        return None
    try:
        arrays: dict[str, Any] = {name: arraystore.open_array(folder, name, mmap=False)
                                  for name in meta.get("arrays", [])}
        arrays["meta"] = meta
        return arrays
    except (OSError, ValueError):
        return None


def _unpack_masks(cached: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    if cached is None or "masks" not in cached or "meta" not in cached:
        return None
    meta = cached["meta"]
    shape = tuple(int(v) for v in meta.get("shape", ()))
    if len(shape) != 3:
        return None
    m = cached["masks"]
    if meta.get("packed"):
        n = int(np.prod(shape))
        if m.size * 8 < n:
            return None
        m = np.unpackbits(m, count=n).reshape(shape)
    elif m.shape != shape:
        return None
    return {"masks": m}


FRAMES_DIR = "frames"  # PROJECT/cache/frames: working-size frames (core.arraystore)


def working_frames(cache_dir: Path, source: str, vinfo: Any, start: int, end: int, work: tuple[int, int],
                   progress: Progress | None) -> np.ndarray:
    """Working-size frames uint8 [T, h, w, 3]: from the project's cache, or decoded once and cached.

    The cache holds only what the fit needs (a few MB where a source-resolution copy took
    hundreds); a resume reads it instead of decoding the movie again. Keyed by the source's
    content fingerprint, the range and the size, so a replaced source is decoded anew.
    """
    from core import video as vio  # noqa: PLC0415
    from core.identity import source_fingerprint  # noqa: PLC0415

    key = f"{source_fingerprint(source)}|{vinfo.width}x{vinfo.height}|{start}:{end}|{work[0]}x{work[1]}"
    folder = Path(cache_dir) / FRAMES_DIR
    meta = arraystore.read_meta(folder)
    if meta is not None and meta.get("key") == key:
        try:
            frames = arraystore.open_array(folder, "frames", mmap=False)
            if frames.shape == (end - start, work[1], work[0], 3) and frames.dtype == np.uint8:
                return frames
        except (OSError, ValueError):
            pass
    frames = vio.load_clip(source, start, end, work, None, progress)
    store = arraystore.StoreWriter(folder)
    store.put("frames", frames, np.uint8)
    store.commit({"key": key})
    return frames


def release_cache(cache_dir: Path) -> int:
    """Remove what a finished project does not need: working frames and flow (bytes freed).

    Editing reads only the baked maps and the source; flow is the largest part of a long
    shot's project (8 bytes per working pixel per frame) and is recomputed (with the frames)
    when training resumes. Masks stay: they are small, and a user's masks may be gone later.
    """
    import shutil  # noqa: PLC0415

    freed = 0
    for name in (FLOW_DIR, FRAMES_DIR):
        folder = Path(cache_dir) / name
        if folder.is_dir():
            freed += arraystore.folder_size(folder)
            shutil.rmtree(folder, ignore_errors=True)
    return freed


def get_flow(cache_dir: Path, frames: np.ndarray, digest: str, progress: Progress | None) -> FlowField:
    """Flow of ``frames``: from the cache, or computed pair by pair straight into it.

    The vectors are stored as float16 (under 0.03 px rounding at 100 px of motion), written
    pair by pair into memory-mapped files, so no float32 copy of a long clip's flow is ever
    held, and a fresh run and a resumed run see identical data.
    """
    key = _flow_key(digest)
    folder = Path(cache_dir) / FLOW_DIR
    t_count, h, w = frames.shape[:3]
    pairs = max(0, t_count - 1)
    cached = _open_store(folder, key)
    if cached is not None and {"fwd", "bwd", "fwd_ok", "bwd_ok"} <= set(cached):
        fl = FlowField(cached["fwd"], cached["bwd"], cached["fwd_ok"], cached["bwd_ok"])
        if fl.fwd.shape == (pairs, h, w, 2) and fl.fwd_ok.shape == (pairs, h, w):
            if progress is not None:
                progress.message("optical flow: reusing the cached result")
            return fl
    store = arraystore.StoreWriter(folder)
    try:
        out = FlowField(store.create("fwd", (pairs, h, w, 2), np.float16),
                        store.create("bwd", (pairs, h, w, 2), np.float16),
                        store.create("fwd_ok", (pairs, h, w), bool), store.create("bwd_ok", (pairs, h, w), bool))
        compute_flow(frames, progress, out=out)
        del out
        store.commit({"key": key})
    except BaseException:
        store.abort()
        raise
    cached = _open_store(folder, key)
    assert cached is not None
    return FlowField(cached["fwd"], cached["bwd"], cached["fwd_ok"], cached["bwd_ok"])


def preprocess(cache_dir: Path, frames: np.ndarray, masks_dir: Path | None, single_layer: bool,
               start: int, progress: Progress | None = None, preview: bool = True) -> Preprocessed:
    """Flow and masks for ``frames`` (uint8 [T,h,w,3], source frames start..start+T-1), cached.

    ``preview``: also write ``cache/masks_preview.png`` (the masks over the frames, for people
    to look at; segments of a long shot do not, like their atlas PNGs)."""
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
    folder = cache_dir / MASKS_DIR
    cached = _open_store(folder, key)
    cached = _unpack_masks(cached)
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
        store = arraystore.StoreWriter(folder)
        stored = masks if masks is not None else np.zeros((0, 0, 0), np.uint8)
        binary = bool(stored.size == 0 or stored.max() <= 1)
        # binary masks (auto, user) are stored as bits: 1/8 of the bytes on disk
        store.put("masks", np.packbits(stored.reshape(-1)) if binary else stored, np.uint8)
        store.commit({"key": key, "shape": list(stored.shape), "packed": binary})
        if masks is not None and preview:
            save_mask_preview(frames, masks, cache_dir / PREVIEW_FILE)
    if masks is None:  # nothing moves apart from the background (the caller tells the user)
        return Preprocessed(frames, fl, None, "none")
    return Preprocessed(frames, fl, masks.astype(np.uint8, copy=False), source)

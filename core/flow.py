"""Optical flow between consecutive frames (OpenCV DIS) with a forward-backward consistency mask.

The flow supervises the atlas mappings (a point and where the flow sends it must map to
the same atlas position), so wrong flow teaches wrong mappings: the consistency mask keeps
only vectors that the reverse flow undoes, which drops occlusions, disocclusions and most
failures in textureless areas.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from core.progress import Progress

# Consistent when |fwd(p) + bwd(p + fwd(p))| < ABS + REL * |fwd(p)| (working-res pixels).
CONSISTENCY_ABS = 1.0
CONSISTENCY_REL = 0.05
# Bump when anything below changes the result: preprocessing caches are keyed on it.
FLOW_VERSION = "dis-medium-p6-v1"
# DIS's MEDIUM preset with 6 px patches instead of 8: motion bleeds less across object
# outlines (a third of the smeared background in a sliding-square test) for ~20% more time.
PATCH_SIZE = 6


@dataclass
class FlowField:
    """Flow between consecutive working-resolution frames.

    ``fwd[t]``: float32 [h, w, 2] displacement (dx, dy) of frame t's pixels into frame t+1.
    ``bwd[t]``: float32 [h, w, 2] displacement of frame t+1's pixels back into frame t.
    ``fwd_ok`` / ``bwd_ok``: bool [T-1, h, w], the vector is forward-backward consistent
    and lands inside the frame.
    """

    fwd: np.ndarray
    bwd: np.ndarray
    fwd_ok: np.ndarray
    bwd_ok: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.fwd.shape[0])


def _dis() -> cv2.DISOpticalFlow:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setPatchSize(PATCH_SIZE)
    dis.setUseSpatialPropagation(True)
    return dis


def sample(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``field`` [h, w, C] at pixel positions ``xy`` [h, w, 2] (pixel-centre grid)."""
    return cv2.remap(field, xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32),
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def pixel_grid(h: int, w: int) -> np.ndarray:
    """Pixel positions (x, y) [h, w, 2]; cached and read-only (every pair of frames needs it)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.stack([xs, ys], axis=-1)
    g.flags.writeable = False
    return g


def norm2(v: np.ndarray) -> np.ndarray:
    """Length of 2-vectors [..., 2] (np.hypot: several times faster than linalg.norm on axis -1)."""
    return np.hypot(v[..., 0], v[..., 1])


def consistency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where flow ``a`` (frame s -> r) is undone by ``b`` (frame r -> s) and stays inside the frame."""
    h, w = a.shape[:2]
    target = pixel_grid(h, w) + a
    inside = ((target[..., 0] >= -0.5) & (target[..., 0] <= w - 0.5)
              & (target[..., 1] >= -0.5) & (target[..., 1] <= h - 0.5))
    back = sample(b, target)
    err = norm2(a + back)
    return inside & (err < CONSISTENCY_ABS + CONSISTENCY_REL * norm2(a))


def empty_flow(pairs: int, h: int, w: int) -> FlowField:
    """An in-memory float32 flow field to fill (tests, short clips)."""
    return FlowField(np.zeros((pairs, h, w, 2), np.float32), np.zeros((pairs, h, w, 2), np.float32),
                     np.zeros((pairs, h, w), bool), np.zeros((pairs, h, w), bool))


def compute_flow(frames: np.ndarray, progress: Progress | None = None, out: FlowField | None = None) -> FlowField:
    """Forward and backward DIS flow for every consecutive pair of uint8 RGB frames [T, h, w, 3].

    Pairs are computed and stored one at a time into ``out`` (default: new float32 arrays),
    which may be memory-mapped float16 files: a long clip's flow then never sits in RAM. The
    consistency flags are computed on the full-precision vectors before they are stored.
    """
    t_count, h, w = frames.shape[:3]
    pairs = max(0, t_count - 1)
    out = out if out is not None else empty_flow(pairs, h, w)
    if out.fwd.shape[:3] != (pairs, h, w):
        raise ValueError(f"flow output of shape {out.fwd.shape} for {t_count} frames of {w}x{h}")
    dis = _dis()
    prev = cv2.cvtColor(np.asarray(frames[0]), cv2.COLOR_RGB2GRAY) if t_count else None
    for t in range(pairs):
        if progress is not None:
            progress.update("flow", t, pairs)
        nxt = cv2.cvtColor(np.asarray(frames[t + 1]), cv2.COLOR_RGB2GRAY)
        f = dis.calc(prev, nxt, None)
        b = dis.calc(nxt, prev, None)
        out.fwd_ok[t] = consistency(f, b)
        out.bwd_ok[t] = consistency(b, f)
        out.fwd[t] = f
        out.bwd[t] = b
        prev = nxt  # two grayscale frames alive, not T
    if progress is not None and pairs:
        progress.update("flow", pairs, pairs)
    return out

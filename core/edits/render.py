"""Compositing: the original frame with premultiplied edit patches laid over it in order.

Only the rectangle the patches touch is converted to float and back, so every pixel no
edit touches stays bit-identical to the source frame.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.edits.context import Patch


def composite(frame: np.ndarray, patches: Sequence[Patch]) -> np.ndarray:
    """``frame`` uint8 [H, W, 3] + patches (back to front, 'over') -> new uint8 frame."""
    out = np.array(frame, dtype=np.uint8, copy=True)
    if not patches:
        return out
    boxes = np.array([p.box for p in patches])
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    region = out[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
    for p in patches:
        px0, py0, px1, py1 = p.box
        dst = region[py0 - y0:py1 - y0, px0 - x0:px1 - x0]
        dst *= (1.0 - p.a)[..., None]
        dst += p.rgb
    out[y0:y1, x0:x1] = (np.clip(region, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out

"""Compositing: the original frame with premultiplied edit patches laid over it in order.

Patches are grouped into clusters of overlapping rectangles; only each cluster's
rectangle is converted to float and back, so every pixel no edit touches stays
bit-identical to the source frame and small edits cost little.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.edits.context import Box, Patch


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def clusters(boxes: Sequence[Box]) -> list[tuple[Box, list[int]]]:
    """Group boxes into independent clusters (union box, member indices in order)."""
    groups: list[tuple[Box, list[int]]] = []
    for i, b in enumerate(boxes):
        box, members = b, [i]
        merged = True
        while merged:
            merged = False
            for g in groups:
                if _overlap(box, g[0]):
                    groups.remove(g)
                    box = (min(box[0], g[0][0]), min(box[1], g[0][1]), max(box[2], g[0][2]), max(box[3], g[0][3]))
                    members = g[1] + members
                    merged = True
                    break
        groups.append((box, sorted(members)))
    return groups


def composite(frame: np.ndarray, patches: Sequence[Patch]) -> np.ndarray:
    """``frame`` uint8 [H, W, 3] + patches (back to front, 'over') -> new uint8 frame."""
    out = np.array(frame, dtype=np.uint8, copy=True)
    for (x0, y0, x1, y1), members in clusters([p.box for p in patches]):
        region = out[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
        for i in members:
            p = patches[i]
            px0, py0, px1, py1 = p.box
            dst = region[py0 - y0:py1 - y0, px0 - x0:px1 - x0]
            dst *= (1.0 - p.a)[..., None]
            dst += p.rgb
        np.clip(region, 0.0, 1.0, out=region)
        out[y0:y1, x0:x1] = (region * 255.0 + 0.5).astype(np.uint8)
    return out


def composite_overlay(shape: tuple[int, int], patches: Sequence[Patch]) -> np.ndarray:
    """Only the edits, as straight-alpha RGBA uint8 [H, W, 4] (``shape`` = (H, W)).

    Why: laid over the original with Alpha Over (in Blender's Sequencer, or any editor) this
    gives the same picture as :func:`composite`, while whatever the user does to the movie
    underneath (grading, modifiers) stays visible. The patches are composited 'over' a
    transparent frame in premultiplied space and un-premultiplied at the end; pixels no edit
    touches stay (0, 0, 0, 0). An adjust layer's patch is its recoloured source pixels with
    its region mask as alpha, so it comes out opaque inside the region.
    """
    H, W = shape
    out = np.zeros((H, W, 4), np.uint8)
    for (x0, y0, x1, y1), members in clusters([p.box for p in patches]):
        rgb = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        a = np.zeros((y1 - y0, x1 - x0), np.float32)
        for i in members:
            p = patches[i]
            px0, py0, px1, py1 = p.box
            sl = (slice(py0 - y0, py1 - y0), slice(px0 - x0, px1 - x0))
            keep = 1.0 - p.a
            rgb[sl] *= keep[..., None]
            rgb[sl] += p.rgb
            a[sl] *= keep
            a[sl] += p.a
        np.clip(a, 0.0, 1.0, out=a)
        # un-premultiply; where alpha rounds to 0 the colour is 0 too, so untouched stays (0, 0, 0, 0)
        scale = np.where(a >= 0.5 / 255.0, 255.0 / np.maximum(a, 1e-6), 0.0).astype(np.float32)
        rgb *= scale[..., None]
        rgb += 0.5
        np.clip(rgb, 0.0, 255.0, out=rgb)
        region = out[y0:y1, x0:x1]
        region[..., :3] = rgb.astype(np.uint8)
        a *= 255.0
        a += 0.5
        region[..., 3] = a.astype(np.uint8)
    return out


def alpha_over(frame: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """Straight RGBA ``overlay`` over an RGB uint8 ``frame`` (what Alpha Over does): uint8 [H, W, 3]."""
    a = overlay[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    out = frame.astype(np.float32) * (1.0 - a) + overlay[..., :3].astype(np.float32) * a
    return (out + 0.5).astype(np.uint8)

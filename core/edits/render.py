"""Compositing: the original frame with premultiplied edit patches laid over it in order.

The frame is cut into square tiles (``raster.TILE``); only tiles some patch reaches are
converted to float and back, so every pixel no edit touches stays bit-identical to the
source frame and the cost follows the area the edits cover. (Sketch strokes arrive as one
patch per tile they touch, so a thin line across a 1080p frame costs its tiles, not its
bounding box.) The earlier cluster compositors stay as the reference the tests compare with.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from core.edits.context import Box, Patch
from core.edits.raster import TILE


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


def tile_members(patches: Sequence[Patch], shape: tuple[int, int], tile: int = TILE) -> dict[tuple[int, int], list[int]]:
    """Frame tile (row, column) -> indices of the patches that reach into it, in order."""
    H, W = shape
    members: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(patches):
        x0, y0, x1, y1 = p.box
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        for ty in range(y0 // tile, (y1 - 1) // tile + 1):
            for tx in range(x0 // tile, (x1 - 1) // tile + 1):
                members.setdefault((ty, tx), []).append(i)
    return members


def _parts(patches: Sequence[Patch], members: list[int], tile_box: Box) -> Iterator[tuple[tuple[slice, slice], Patch, tuple[slice, slice]]]:
    """For each member patch: (slices into the tile, the patch, slices into the patch) of their overlap."""
    X0, Y0, X1, Y1 = tile_box
    for i in members:
        p = patches[i]
        px0, py0, px1, py1 = p.box
        x0, y0, x1, y1 = max(X0, px0), max(Y0, py0), min(X1, px1), min(Y1, py1)
        yield ((slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0)), p,
               (slice(y0 - py0, y1 - py0), slice(x0 - px0, x1 - px0)))


#: tiles composited per batch (bounds the float buffers: 1024 tiles of 32 px are 16 MB)
BATCH_TILES = 1024


def _tile_batches(patches: Sequence[Patch], shape: tuple[int, int], tile: int
                  ) -> Iterator[list[tuple[Box, list[int]]]]:
    """The frame tiles some patch reaches, as (tile box clipped to the frame, members), in batches."""
    H, W = shape
    batch: list[tuple[Box, list[int]]] = []
    for (ty, tx), members in tile_members(patches, shape, tile).items():
        batch.append(((tx * tile, ty * tile, min(W, (tx + 1) * tile), min(H, (ty + 1) * tile)), members))
        if len(batch) == BATCH_TILES:
            yield batch
            batch = []
    if batch:
        yield batch


def _over(rgb: np.ndarray, a: np.ndarray | None, patches: Sequence[Patch], members: list[int], box: Box,
          empty: bool) -> None:
    """Lay the member patches over one tile's premultiplied ``rgb`` (and ``a``), in order.

    ``empty``: the tile starts transparent, so the first patch is copied (0 * keep + x is x).
    """
    for sl, p, src in _parts(patches, members, box):
        dst = rgb[sl]
        if empty:
            dst[...] = p.rgb[src]
            if a is not None:
                a[sl] = p.a[src]
            empty = False
            continue
        keep = 1.0 - p.a[src]
        dst *= keep[..., None]
        dst += p.rgb[src]
        if a is not None:
            da = a[sl]
            da *= keep
            da += p.a[src]


def composite(frame: np.ndarray, patches: Sequence[Patch], tile: int = TILE) -> np.ndarray:
    """``frame`` uint8 [H, W, 3] + patches (back to front, 'over') -> new uint8 frame.

    Only frame tiles some patch reaches are converted to float and back, so every pixel no
    edit touches stays bit-identical to the source frame, and the cost follows the area the
    edits cover (a thin stroke's tiles), not their bounding boxes. Tiles are converted in
    batches (one numpy call for many tiles). Each pixel goes through the same float32
    operations as in :func:`composite_clusters`: the bytes are the same.
    """
    out = np.array(frame, dtype=np.uint8, copy=True)
    H, W = out.shape[:2]
    for batch in _tile_batches(patches, (H, W), tile):
        src8 = np.zeros((len(batch), tile, tile, 3), np.uint8)
        for k, ((x0, y0, x1, y1), _) in enumerate(batch):
            src8[k, :y1 - y0, :x1 - x0] = out[y0:y1, x0:x1]
        region = src8.astype(np.float32) * (1.0 / 255.0)
        for k, (box, members) in enumerate(batch):
            _over(region[k], None, patches, members, box, empty=False)
        np.clip(region, 0.0, 1.0, out=region)
        region *= 255.0
        region += 0.5
        res = region.astype(np.uint8)
        for k, ((x0, y0, x1, y1), _) in enumerate(batch):
            out[y0:y1, x0:x1] = res[k, :y1 - y0, :x1 - x0]
    return out


def composite_overlay(shape: tuple[int, int], patches: Sequence[Patch], tile: int = TILE) -> np.ndarray:
    """Only the edits, as straight-alpha RGBA uint8 [H, W, 4] (``shape`` = (H, W)).

    Why: laid over the original with Alpha Over (in Blender's Sequencer, or any editor) this
    gives the same picture as :func:`composite`, while whatever the user does to the movie
    underneath (grading, modifiers) stays visible. The patches are composited 'over' a
    transparent frame in premultiplied space and un-premultiplied at the end; pixels no edit
    touches stay (0, 0, 0, 0). An adjust layer's patch is its recoloured source pixels with
    its region mask as alpha, so it comes out opaque inside the region. Works on tiles in
    batches like :func:`composite`; the bytes equal :func:`composite_overlay_clusters`'.
    """
    H, W = shape
    out = np.zeros((H, W, 4), np.uint8)
    for batch in _tile_batches(patches, (H, W), tile):
        rgb = np.zeros((len(batch), tile, tile, 3), np.float32)
        a = np.zeros((len(batch), tile, tile), np.float32)
        for k, (box, members) in enumerate(batch):
            _over(rgb[k], a[k], patches, members, box, empty=True)
        res = np.empty((len(batch), tile, tile, 4), np.uint8)
        _unpremultiply_into(res, rgb, a)
        for k, ((x0, y0, x1, y1), _) in enumerate(batch):
            out[y0:y1, x0:x1] = res[k, :y1 - y0, :x1 - x0]
    return out


def _unpremultiply_into(region: np.ndarray, rgb: np.ndarray, a: np.ndarray) -> None:
    """Premultiplied float rgb/alpha -> straight RGBA uint8 ``region`` (rgb and a are consumed)."""
    np.clip(a, 0.0, 1.0, out=a)
    # un-premultiply; where alpha rounds to 0 the colour is 0 too, so untouched stays (0, 0, 0, 0)
    scale = np.where(a >= 0.5 / 255.0, 255.0 / np.maximum(a, 1e-6), 0.0).astype(np.float32)
    rgb *= scale[..., None]
    rgb += 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    region[..., :3] = rgb.astype(np.uint8)
    a *= 255.0
    a += 0.5
    region[..., 3] = a.astype(np.uint8)


def composite_clusters(frame: np.ndarray, patches: Sequence[Patch]) -> np.ndarray:
    """``frame`` uint8 [H, W, 3] + patches (back to front, 'over') -> new uint8 frame.

    Works on the union rectangle of each cluster of overlapping patches: the reference for
    :func:`composite` (which works on frame tiles and gives the same bytes).
    """
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


def composite_overlay_clusters(shape: tuple[int, int], patches: Sequence[Patch]) -> np.ndarray:
    """Only the edits, as straight-alpha RGBA uint8 [H, W, 4] (``shape`` = (H, W)); by clusters,
    the reference for :func:`composite_overlay`.

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
        _unpremultiply_into(out[y0:y1, x0:x1], rgb, a)
    return out


def alpha_over(frame: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """Straight RGBA ``overlay`` over an RGB uint8 ``frame`` (what Alpha Over does): uint8 [H, W, 3].

    Only the bounding box of the overlay's non-zero alpha is computed (elsewhere the frame
    comes through unchanged, as the formula gives there too).
    """
    out = np.array(frame, dtype=np.uint8, copy=True)
    a8 = overlay[..., 3]
    rows = np.flatnonzero(a8.any(1))
    if rows.size == 0:
        return out
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(a8[y0:y1].any(0))
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    a = overlay[y0:y1, x0:x1, 3:4].astype(np.float32) * (1.0 / 255.0)
    sub = frame[y0:y1, x0:x1].astype(np.float32) * (1.0 - a) + overlay[y0:y1, x0:x1, :3].astype(np.float32) * a
    out[y0:y1, x0:x1] = (sub + 0.5).astype(np.uint8)
    return out

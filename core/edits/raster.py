"""Anti-aliased rasterization of polylines and polygons in source pixel coordinates.

Why our own: strokes must stay sharp at their exact (fractional) width in every frame they
are carried to, so each frame rasterizes the vector stroke afresh. A stroke is the union of
capsules around its segments; coverage of a pixel is ``clip(r + 0.5 - d, 0, 1)`` with d
the distance from the pixel centre to the nearest segment (a one-pixel linear ramp, the
usual analytic anti-aliasing). Segments are split into short pieces so each needs only a
small fixed-size patch; all pieces of a frame are evaluated in one vectorized pass and
merged with a max (no darkening where pieces overlap).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from core.edits.context import Box

PIECE_PX = 4.0  # longest piece a segment is split into before patch evaluation


#: side of the square tiles of the frame that sparse rasters and the compositor work in (px)
TILE = 32


def _stroke_samples(a: np.ndarray, b: np.ndarray, radius: float, W: int, H: int
                    ) -> tuple[Box, np.ndarray, np.ndarray, np.ndarray] | None:
    """Coverage samples of the union of capsules: (box, x [n], y [n], coverage [n]) with n > 0.

    Every sample is a pixel inside ``box`` (the stroke's bounds clipped to the frame) with
    coverage > 0; a pixel may appear several times (pieces overlap): its coverage is the max.
    """
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    if len(a) == 0:
        return None
    lo = np.minimum(a, b).min(0) - radius - 1.0
    hi = np.maximum(a, b).max(0) + radius + 1.0
    x0, y0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
    x1, y1 = min(W, int(math.ceil(hi[0])) + 1), min(H, int(math.ceil(hi[1])) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    # split into pieces no longer than PIECE_PX (a straight segment's capsule is the union of its pieces')
    seg_len = np.linalg.norm(b - a, axis=1)
    n = np.maximum(1, np.ceil(seg_len / PIECE_PX).astype(np.int64))
    idx = np.repeat(np.arange(len(a)), n)
    k = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)
    f0 = (k / n[idx])[:, None]
    f1 = ((k + 1) / n[idx])[:, None]
    pa = a[idx] + (b[idx] - a[idx]) * f0
    pb = a[idx] + (b[idx] - a[idx]) * f1
    # drop pieces that cannot touch the box
    mid = (pa + pb) / 2
    reach = PIECE_PX / 2 + radius + 1.0
    keep = ((mid[:, 0] > x0 - reach) & (mid[:, 0] < x1 + reach) & (mid[:, 1] > y0 - reach) & (mid[:, 1] < y1 + reach))
    pa, pb, mid = pa[keep], pb[keep], mid[keep]
    if len(pa) == 0:
        return None
    longest = float(np.linalg.norm(pb - pa, axis=1).max())
    K = int(math.ceil(longest + 2 * radius + 2)) + 1
    origin = np.floor(mid - K / 2).astype(np.int64)  # [P, 2]
    off = np.arange(K)
    px = origin[:, 0, None, None] + off[None, None, :]  # [P, 1, K]
    py = origin[:, 1, None, None] + off[None, :, None]  # [P, K, 1]
    d = (pb - pa).astype(np.float32)
    dd = np.maximum((d * d).sum(-1), 1e-12)
    # pixel centre relative to the piece start
    rx = (px + 0.5 - pa[:, 0, None, None]).astype(np.float32)
    ry = (py + 0.5 - pa[:, 1, None, None]).astype(np.float32)
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    s = np.clip((rx * dx + ry * dy) / dd[:, None, None], 0.0, 1.0)
    ex = rx - s * dx
    ey = ry - s * dy
    cov = np.clip(np.float32(radius + 0.5) - np.sqrt(ex * ex + ey * ey), 0.0, 1.0)  # [P, K, K]
    gx = np.broadcast_to(px, cov.shape)
    gy = np.broadcast_to(py, cov.shape)
    inside = (gx >= x0) & (gx < x1) & (gy >= y0) & (gy < y1) & (cov > 0)
    if not inside.any():
        return None
    return (x0, y0, x1, y1), gx[inside], gy[inside], cov[inside]


def stroke_coverage(a: np.ndarray, b: np.ndarray, radius: float, W: int, H: int) -> tuple[Box, np.ndarray] | None:
    """Coverage of the union of capsules (segments a[i]-b[i], radius) clipped to the frame.

    ``a``, ``b``: [P, 2] source pixel coordinates (a == b gives a round dot). Returns the
    bounding box and float32 coverage [h, w] inside it, or None if nothing is in the frame.
    The reference for :func:`stroke_coverage_tiles` (the same samples, one dense array).
    """
    res = _stroke_samples(a, b, radius, W, H)
    if res is None:
        return None
    (x0, y0, x1, y1), gx, gy, cov = res
    bw, bh = x1 - x0, y1 - y0
    out = np.zeros(bh * bw, np.float32)
    np.maximum.at(out, (gy - y0) * bw + (gx - x0), cov)
    return (x0, y0, x1, y1), out.reshape(bh, bw)


def stroke_coverage_tiles(a: np.ndarray, b: np.ndarray, radius: float, W: int, H: int,
                          tile: int = TILE) -> tuple[list[Box], np.ndarray]:
    """:func:`stroke_coverage`, sparse: only the frame tiles (``tile`` px squares aligned to the
    frame's top-left corner) the stroke touches: (boxes, float32 coverage [n, tile, tile]).

    Box k is tile k clipped to the frame; coverage[k] holds it at the top-left (the rest of a
    tile cut by the frame's edge is 0). Why: a thin stroke across a 1080p frame has a
    bounding box of a million pixels but covers a few thousand; the dense box cost more to
    fill, occlude and composite than to rasterise. Values are exactly those of
    :func:`stroke_coverage` (the same samples, the same max).
    """
    res = _stroke_samples(a, b, radius, W, H)
    if res is None:
        return [], np.zeros((0, tile, tile), np.float32)
    _, gx, gy, cov = res
    ntx = (W + tile - 1) // tile
    tid = (gy // tile) * ntx + gx // tile
    used = np.zeros(((H + tile - 1) // tile) * ntx, bool)
    used[tid] = True
    tiles = np.flatnonzero(used)
    slot = np.cumsum(used) - 1  # tile id -> its index in the output
    buf = np.zeros((len(tiles), tile, tile), np.float32)
    np.maximum.at(buf.reshape(-1), slot[tid] * (tile * tile) + (gy % tile) * tile + gx % tile, cov)
    boxes = []
    for tid_k in tiles.tolist():
        tx0, ty0 = (tid_k % ntx) * tile, (tid_k // ntx) * tile
        boxes.append((tx0, ty0, min(W, tx0 + tile), min(H, ty0 + tile)))
    return boxes, buf


def polygon_mask(polygon: np.ndarray, W: int, H: int, feather: float = 0.0) -> np.ndarray:
    """Anti-aliased filled polygon [H, W] float32 in 0..1, optionally feathered (Gaussian, px).

    Supersampled 4x in each direction (pixel centres at i+0.5), then box-averaged.
    """
    ss = 4
    pts = np.asarray(polygon, np.float64).reshape(-1, 2)
    mask = np.zeros((H, W), np.float32)
    pad = int(math.ceil(2 * feather)) + 2
    x0 = max(0, int(math.floor(pts[:, 0].min())) - pad)
    y0 = max(0, int(math.floor(pts[:, 1].min())) - pad)
    x1 = min(W, int(math.ceil(pts[:, 0].max())) + pad)
    y1 = min(H, int(math.ceil(pts[:, 1].max())) + pad)
    if x1 <= x0 or y1 <= y0:
        return mask
    bw, bh = x1 - x0, y1 - y0
    big = np.zeros((bh * ss, bw * ss), np.uint8)
    shift = 4  # cv2 fixed-point sub-pixel bits
    # source x -> supersampled pixel-centre index: (x - x0) * ss - 0.5
    p = np.round(((pts - (x0, y0)) * ss - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(big, [p], 255, lineType=cv2.LINE_8, shift=shift)
    crop = cv2.resize(big.astype(np.float32) / 255.0, (bw, bh), interpolation=cv2.INTER_AREA)
    mask[y0:y1, x0:x1] = crop
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather / 2.0)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)

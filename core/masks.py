"""Foreground masks: read a user's mask PNGs, or guess rough ones from motion.

The masks only *bootstrap* the alpha network (LNA's alpha loss early in training), so a
rough mask that is right in most places is enough; what matters most is that it never
claims the static background, because that layer is what edits stick to.

The automatic guess needs no model weights: the background's motion in each pair of frames
is fitted by one homography (a static or panning/zooming camera over a mostly distant or
planar scene), and pixels whose flow disagrees with it move on their own. An object that
pauses produces no such evidence, so each frame's evidence is carried along the flow to
neighbouring frames (forward and backward, fading slowly).

Flow is least reliable exactly at an object's outline (it bleeds onto the background next
to it), and carried masks would grow from there frame by frame. Three guards keep them in
place: a vector only counts if it lands on the same colour, only the eroded core of the
evidence is carried, and a frame that sees nearly the whole object move re-anchors the
carried mask to its own evidence.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import InveError
from core.flow import FlowField, pixel_grid, norm2, sample
from core.video import list_images, read_image

# --- automatic masks (working-resolution pixels; sizes relative to the frame) ---
FIT_POINTS = 4000  # flow vectors per homography fit (a subsample: RANSAC needs no more)
RANSAC_PX = 1.0  # inlier threshold of the camera-motion fit
MIN_RESIDUAL_PX = 1.0  # residual motion above this (and above NOISE_FACTOR x typical) = moving
NOISE_FACTOR = 4.0
MIN_TEXTURE = 4.0  # gray-level gradient below which a point is too flat to trust its flow
MIN_BLOB = 0.002  # moving regions smaller than this fraction of the frame are noise
DECAY = 0.97  # per-frame fade of carried evidence: a pause of ~22 frames on each side stays covered
EDGE_PX = 3  # half a DIS patch: how far flow bleeds across an object's outline
PHOTO_TOL = 16.0  # mean RGB difference (0..255) over a patch above which a carried pixel is another surface
PHOTO_WINDOW = 7
ANCHOR = 0.9  # a frame's own evidence covering this much of the carried mask re-anchors it
MIN_MOVING_FRAMES = 0.15  # fewer frames with motion than this fraction: no separate object
MAX_AREA = 0.75  # a "foreground" covering more than this of most frames is a failed camera fit


def _mask_from_image(img: np.ndarray) -> np.ndarray:
    """Any mask image -> float32 0..1 foreground (alpha if present, else brightness)."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    elif a.dtype == np.bool_:
        scale = 1.0
    else:
        scale = 1.0 if np.issubdtype(a.dtype, np.floating) else float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32) / scale
    if a.ndim == 3:
        if a.shape[2] == 4:
            # A transparent cut-out (RGBA) marks foreground by alpha; an opaque one by colour.
            alpha = a[:, :, 3]
            a = alpha if alpha.min() < 1.0 else a[:, :, :3].max(axis=2)
        elif a.shape[2] == 2:
            a = a[:, :, 0]
        else:
            a = a.max(axis=2)
    return a


def _match_files(folder: Path, n_frames: int, start: int) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise InveError(f"mask folder {folder} holds no images")
    if len(files) == n_frames:
        return files
    by_index: dict[int, Path] = {}
    for f in files:
        m = re.search(r"(\d+)$", f.stem)
        if m:
            by_index.setdefault(int(m.group(1)), f)
    wanted = list(range(start, start + n_frames))
    missing = [i for i in wanted if i not in by_index]
    if not missing:
        return [by_index[i] for i in wanted]
    raise InveError(
        f"mask folder {folder} has {len(files)} images for {n_frames} frames: give exactly one "
        f"per frame (sorted by name), or name them by source frame index; "
        f"missing frame(s) {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}")


def load_masks(folder: Path, n_frames: int, start: int, work_size: tuple[int, int]) -> np.ndarray:
    """User masks, one PNG per frame -> uint8 [T, h, w] (1 = foreground) at working size.

    Files match frames either by count (exactly ``n_frames`` images, sorted by name) or by
    the source frame index at the end of their names (``0040.png``, ``mask_40.png``), which
    lets one mask folder serve any ``--frames`` range of the clip.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InveError(f"mask folder not found: {folder}")
    files = _match_files(folder, n_frames, start)
    w, h = work_size
    out = np.empty((n_frames, h, w), np.uint8)
    shape: tuple[int, int] | None = None
    for t, f in enumerate(files):
        m = _mask_from_image(read_image(f))
        if shape is None:
            shape = m.shape
            mh, mw = shape
            # a mask of another aspect belongs to another framing: stretching it would put
            # the foreground in the wrong place, so it is refused (resampling is for scale only)
            if abs(mw * h - mh * w) > max(mw, mh, w, h):
                raise InveError(f"mask {f.name} is {mw}x{mh}, which is not the video's shape ({w}x{h} at working "
                                "size): masks must have the frames' aspect ratio (any scale)")
        elif m.shape != shape:
            raise InveError(f"mask {f.name} is {m.shape[1]}x{m.shape[0]}, others are {shape[1]}x{shape[0]}")
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) if m.shape != (h, w) else m
        out[t] = m > 0.5
    return out


# ---------------------------------------------------------------------------------------
# automatic masks
# ---------------------------------------------------------------------------------------
def _texture(gray: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return cv2.GaussianBlur(np.sqrt(gx * gx + gy * gy), (0, 0), 1.5)


def _camera_residual(flow: np.ndarray, ok: np.ndarray, textured: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, float] | None:
    """Residual |flow - camera homography| per pixel, and the typical residual of textured background.

    The fit samples consistent vectors uniformly over the image, flat areas included, so the
    camera is whatever moves most of the *area*: fitting only textured points would let a
    detailed object in front of a plain wall (cup.mp4) outvote the wall. None when too few
    vectors are consistent.
    """
    h, w = ok.shape
    grid = pixel_grid(h, w)
    ys, xs = np.nonzero(ok)
    if len(xs) < 50:
        return None
    if len(xs) > FIT_POINTS:
        pick = rng.choice(len(xs), FIT_POINTS, replace=False)
        ys, xs = ys[pick], xs[pick]
    src = grid[ys, xs]
    dst = src + flow[ys, xs]
    H, inl = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX, maxIters=2000, confidence=0.995)
    if H is None:
        return None
    pts = grid.reshape(-1, 1, 2)
    cam = cv2.perspectiveTransform(pts, H).reshape(h, w, 2) - grid
    res = norm2(flow - cam)
    inliers = inl.ravel().astype(bool) & textured[ys, xs]
    typical = float(np.median(res[ys[inliers], xs[inliers]])) if inliers.any() else 0.0
    return res, typical


def _clean(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Close gaps (occlusion edges, flat patches), drop specks, fill holes."""
    h, w = mask.shape
    k = max(3, int(round(min(h, w) / 60)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel, iterations=2)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    m = keep[labels].astype(np.uint8)
    # fill holes: background is what the border reaches
    inv = (1 - m).astype(np.uint8)
    n2, lab2, _, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    touches = np.zeros(n2, bool)
    touches[np.concatenate([lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]])] = True
    outside = touches[lab2] & (inv > 0)
    return ~outside


@dataclass
class _Continuity:
    """``nxt[t]``: frame t's pixel continues into frame t+1 along fwd[t] (consistent, same colour);
    ``prv[t-1]``: frame t's pixel continues into frame t-1 along bwd[t-1]. Both bool [T-1, h, w]."""

    nxt: np.ndarray
    prv: np.ndarray

    @classmethod
    def compute(cls, frames: np.ndarray, flow: FlowField) -> "_Continuity":
        h, w = frames.shape[1:3]
        grid = pixel_grid(h, w)
        nxt = np.zeros(flow.fwd_ok.shape, bool)
        prv = np.zeros(flow.bwd_ok.shape, bool)
        for t in range(flow.n_pairs):
            nxt[t] = _carry_weight(frames, t, t + 1, flow.fwd[t], flow.fwd_ok[t], grid) > 0
            prv[t] = _carry_weight(frames, t + 1, t, flow.bwd[t], flow.bwd_ok[t], grid) > 0
        return cls(nxt, prv)


def motion_evidence(frames: np.ndarray, flow: FlowField, cont: "_Continuity | None" = None) -> np.ndarray:
    """bool [T, h, w]: pixels of each frame that move against the camera motion to a neighbour.

    A vector counts only where it is forward-backward consistent, has texture nearby (flow
    in flat areas is a guess) and lands on the same colour (background next to an object
    often inherits the object's flow; it then lands on something else).
    """
    t_count, h, w = frames.shape[:3]
    rng = np.random.default_rng(0)
    cont = cont or _Continuity.compute(frames, flow)
    ev = np.zeros((t_count, h, w), bool)
    min_area = int(MIN_BLOB * h * w)
    for t in range(t_count):
        gray = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY).astype(np.float32)
        textured = _texture(gray) > MIN_TEXTURE
        near_texture = cv2.dilate(textured.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        moving = np.zeros((h, w), bool)
        # frame t's pixels carry two flows: to t+1 (fwd[t]) and to t-1 (bwd[t-1])
        for i, fl, ok, same_all in ((t, flow.fwd, flow.fwd_ok, cont.nxt), (t - 1, flow.bwd, flow.bwd_ok, cont.prv)):
            if not 0 <= i < flow.n_pairs:
                continue
            fit = _camera_residual(fl[i], ok[i], textured, rng)
            if fit is None:
                continue
            res, typical = fit
            same = same_all[i]
            moving |= same & near_texture & (res > max(MIN_RESIDUAL_PX, NOISE_FACTOR * typical))
        ev[t] = _clean(moving, min_area) if moving.any() else moving
    return ev


_MEAN3 = np.full((1, 3), 1.0 / 3.0, np.float32)


def _carry_weight(frames: np.ndarray, t: int, s: int, to_s: np.ndarray, ok: np.ndarray,
                  grid: np.ndarray) -> np.ndarray:
    """Where frame t's pixels truly continue in frame s: consistent flow *and* the same colour.

    The colour test stops a mask from being dragged onto background that the object has
    just uncovered (its flow is the background's, but at the old position frame s shows
    the object), which would otherwise leave a trail behind anything moving slowly.
    """
    warped = sample(frames[s].astype(np.float32), grid + to_s)
    diff = cv2.transform(cv2.absdiff(warped, frames[t].astype(np.float32)), _MEAN3).reshape(warped.shape[:2])
    diff = cv2.blur(diff, (PHOTO_WINDOW, PHOTO_WINDOW))  # a patch: one pixel can match by chance
    return (ok & (diff < PHOTO_TOL)).astype(np.float32)


def _anchor(carried: np.ndarray, ev: np.ndarray, near: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Where a frame has its own evidence for most of the carried object, keep the carried
    mask only close to that evidence or on flat areas (whose motion shows only at their
    outline, like a smooth body): small leaks at the outline then cannot pile up along the
    object's path. Frames with little evidence (a pause, a mostly still object with a
    moving part) keep everything that was carried."""
    own = int(ev.sum())
    if own and own >= ANCHOR * int((carried > 0.5).sum()):
        return carried * ((cv2.dilate(ev.astype(np.uint8), near) > 0) | flat)
    return carried


def _carry(core: np.ndarray, ev: np.ndarray, frames: np.ndarray, flow: FlowField,
           cont: _Continuity) -> np.ndarray:
    """Spread evidence ``core`` along the flow in both directions with a slow fade (covers pauses).

    The two passes are float16 [T, h, w] (values 0..1 whose only use is a 0.5 threshold);
    each frame is converted to float32 only while it is warped.
    """
    t_count, h, w = core.shape
    grid = pixel_grid(h, w)
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * EDGE_PX + 1, 4 * EDGE_PX + 1))
    flat = np.stack([_texture(cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2GRAY).astype(np.float32)) < MIN_TEXTURE
                     for f in frames])
    fwd_pass = core.astype(np.float16)
    for t in range(1, t_count):
        # frame t's pixel p continues p + bwd[t-1](p) of frame t-1
        wgt = cont.prv[t - 1]
        prev = _anchor(DECAY * sample(fwd_pass[t - 1].astype(np.float32), grid + flow.bwd[t - 1]) * wgt,
                       ev[t], near, flat[t])
        fwd_pass[t] = np.maximum(fwd_pass[t], prev)
    bwd_pass = core.astype(np.float16)
    for t in range(t_count - 2, -1, -1):
        wgt = cont.nxt[t]
        nxt = _anchor(DECAY * sample(bwd_pass[t + 1].astype(np.float32), grid + flow.fwd[t]) * wgt,
                      ev[t], near, flat[t])
        bwd_pass[t] = np.maximum(bwd_pass[t], nxt)
    return np.maximum(fwd_pass, bwd_pass, out=fwd_pass)


def auto_masks(frames: np.ndarray, flow: FlowField) -> np.ndarray | None:
    """Rough foreground masks uint8 [T, h, w] (1 = foreground) from motion, or None if nothing moves apart.

    Memory: besides the frames and the (memory-mappable) flow, only bool and float16
    whole-clip arrays are held, and the result is written frame by frame.
    """
    t_count, h, w = frames.shape[:3]
    if t_count < 2:
        return None
    cont = _Continuity.compute(frames, flow)
    ev = motion_evidence(frames, flow, cont)
    area = ev.reshape(t_count, -1).mean(axis=1)
    moving = area > MIN_BLOB
    if moving.mean() < MIN_MOVING_FRAMES:
        return None
    if np.median(area[moving]) > MAX_AREA:
        return None
    # Flow near an object's outline is smeared onto the background next to it (DIS matches
    # 6 px patches), and carrying that edge would grow the mask along the object's path
    # frame after frame. So only the eroded core is carried and grown back afterwards.
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_PX + 1, 2 * EDGE_PX + 1))
    core_ev = np.stack([cv2.erode(e.astype(np.uint8), k) for e in ev]).astype(bool)
    soft = _carry(core_ev, ev, frames, flow, cont)
    del core_ev, cont
    out = np.zeros((t_count, h, w), np.uint8)
    min_area = int(MIN_BLOB * h * w)
    for t in range(t_count):
        m = (cv2.dilate((soft[t] > 0.5).astype(np.uint8), k) > 0) | ev[t]
        out[t] = _clean(m, min_area) if m.any() else m
    return out


def save_mask_preview(frames: np.ndarray, masks: np.ndarray, path: Path, count: int = 6,
                      height: int = 160) -> Path:
    """A strip of ``count`` evenly spaced frames with the foreground tinted red and outlined."""
    from core import fsutil

    frames = np.asarray(frames)
    t_count = frames.shape[0]
    picks = np.unique(np.linspace(0, t_count - 1, min(count, t_count)).round().astype(int))
    tiles = []
    for t in picks:
        img = frames[t].astype(np.float32)
        m = np.asarray(masks[t], np.float32)[..., None]
        tint = np.array([255.0, 40.0, 40.0], np.float32)
        img = img * (1 - 0.45 * m) + tint * 0.45 * m
        img = img.astype(np.uint8)
        edges = cv2.morphologyEx((m[..., 0] > 0.5).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        img[edges > 0] = (255, 255, 0)
        scale = height / img.shape[0]
        img = cv2.resize(img, (max(1, int(round(img.shape[1] * scale))), height), interpolation=cv2.INTER_AREA)
        cv2.putText(img, f"t={t}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    gap = np.full((height, 4, 3), 255, np.uint8)
    strip = np.concatenate([x for tile in tiles for x in (tile, gap)][:-1], axis=1)
    fsutil.write_png(path, strip)
    return Path(path)

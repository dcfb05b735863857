"""Foreground the user can point at (``inve train --fg-hint HINTS.json``).

The automatic masks (motion that disagrees with the camera) miss thin and weakly textured
parts of a moving object, which then live in the background atlas and an edit on the
background is drawn over them. A user knows where the object is: a closed outline on one or
a few frames is enough to grow rough masks for the whole clip::

    {"version": 1, "hints": [{"frame": 12, "polygon": [[x, y], ...], "label": "fg"},
                             {"frame": 12, "polygon": [[x, y], ...], "label": "bg"}]}

(source pixels; ``fg``: a closed outline of the foreground; ``bg``: a region known to be
background). From each hint frame the mask is carried frame by frame with the optical flow
and re-fitted to the image on every frame with a GrabCut colour model seeded by the carried
mask (sure foreground well inside it, sure background well outside, GrabCut decides the
band in between), so it follows the object's real outline instead of accumulating the
flow's errors. Every frame takes its mask from the nearest hint frame. The masks then serve
as user masks (like ``--masks``): they bootstrap the alpha network early in the fit.

GrabCut alone loses thin parts (the bunny's 2-3 px ears on the bundled clip, even on the
outline's own frame): its graph cut prefers the short way round a thin part, and its colour
models are the whole frame's, where a light ear matches sky and branches far away. Three
local tests keep them:

- GrabCut's colour models are learnt on a crop around the object, not the whole frame;
- on the hint frame, the outline's band (everything but its eroded core) is kept where
  GrabCut keeps it and its colour is nearer the object's core than the background just
  outside the outline (drops the background a loose outline takes in: grass between an arm
  and an ear), in the outline's thin parts by that colour test alone (keeps an ear GrabCut
  drops), and beyond a tight outline where GrabCut adds it and it passes the leak test below;
- on the other frames, a carried pixel that GrabCut gave away is kept when its colour is
  nearer the object's pixels where the flow carried it from than the background around it
  (a thin part follows the flow as long as it still looks like itself), and a pixel GrabCut
  *added* outside the carried mask only when it is nearer the object's core than the
  background around it (stops a leak from growing frame by frame).

Each test compares with background sampled within a window around the pixel; where there is
none (deep inside a part that is not thin, inside a wide leak) nothing vouches for the
pixel and GrabCut's decision stands (a gap GrabCut opens stays open; a leak is dropped).
GrabCut is told that the carried core is sure foreground except where its colour is nearer
the background around the object than any of the object's colours on the previous frame,
so a gap opening in the middle of a solid object (an occluder, arm and body parting) opens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core import fsutil
from core.errors import InveError
from core.flow import FlowField
from core.progress import Progress
from core.project import ProjectInfo

#: sure foreground / background lie this far (fraction of the object's size, >= 2 px)
#: inside / outside the carried outline; GrabCut labels the band in between
BAND = 0.12
GRABCUT_ITERS = 3
#: a re-fitted mask whose area differs from the carried one by more than this factor is
#: not trusted (GrabCut leaked into a look-alike background): the carried mask is kept
MAX_AREA_CHANGE = 1.6
#: GrabCut learns its colour models on a crop this far (fraction of the object's size, >= 8 px)
#: around the carried mask: the background that matters is the one next to the object
CROP_MARGIN = 0.5
#: local colour tests, windows as fractions of the object's size (sqrt of its mask's area).
#: The object's own colours are looked up this near where the flow carried a pixel from: half
#: the background window, so it stays on the part itself (an ear's pink, not the body's grey);
#: clamped to 4..12 px (OWN_CLAMP) so a tiny object still has a few pixels of itself and a
#: big one does not reach its other parts (the bunny at 240 px: size 76 px, window 8 px)
OWN_WINDOW = 0.11
OWN_CLAMP = (4, 12)
#: ... and the background's this near the pixel itself: about twice the band GrabCut decides
#: (BAND; the bunny at 240 px: 17 and 9 px), so a band pixel has background samples beyond
#: the carried edge; clamped to 8..24 px (BG_CLAMP: a few samples on a tiny object, bounded
#: cost on a big one). Measured at 0.3 instead: 20-24/24 bunny points held and up to 6/23
#: scene points leaked at 240-320 px (README, fidelity section, hint part)
BG_WINDOW = 0.22
BG_CLAMP = (8, 24)
#: colour distance (Lab, 0..255 scale) of a pixel to a set: mean over its nearest 5, so one
#: stray sample (a blended edge pixel, noise) does not vouch for a colour on its own
NEAREST = 5
#: a carried thin part must be nearer its own colours than the background by this many Lab
#: units (about a just-noticeable colour difference; 3 or 8 instead: the same 20-24/24 held,
#: 1-6/23 leaked range as the window above; 5 held 24/24 at 240, 256 and 320 px)
OWN_MARGIN = 5.0
#: a pixel of the carried core is only probable foreground for GrabCut when its colour is
#: nearer the background around the object than the object's own colours by this many Lab
#: units (and changed by twice as much from where the flow carried it from). On the bunny at
#: 240 px: at 5, GrabCut then took a branch beside his right ear on frames 8 and 0 (2 scene
#: points more); at 10 or 15 the same 23/24 held, 1/23 leaked; a gap of the background's
#: own colour differs by far more (the red square's grass hole: ~115)
UNLIKE_MARGIN = 10.0
#: colours drawn at random (fixed seed) from a large set before nearest-colour look-ups:
#: enough for an object's palette at working sizes (the bunny's core at 240 px is ~3000 px),
#: bounds the cost to 2000 distances per pixel tested
POOL = 2000
#: a disc of radius r is sampled on a grid of step r // OFFSET_STEP px: every pixel up to
#: r = 23 (the bunny's windows at 240-320 px), every other one at the clamp's 24 px
#: (~490 offsets a look-up instead of ~1800: the look-ups' cost grows with the offsets)
OFFSET_STEP = 12
#: on a hint frame the mask grows at most this many px beyond the outline (where GrabCut adds
#: and the outline is tight): an outline traced along the edge misses it by a pixel or two at
#: working size; further out GrabCut took the shadowed grass under the bunny's raised arm
#: (his core's dark greys), which the flow then carried under his ear (2 scene points)
OUTLINE_GROWTH = 2


@dataclass
class Hint:
    t: int  # project frame index
    polygon: np.ndarray  # [K, 2] source pixels
    label: str  # "fg" | "bg"


def parse_hints(doc: Any, info: ProjectInfo | None, source_size: tuple[int, int], frames: list[int],
                fname: str = "HINTS.json") -> list[Hint]:
    """Validate a HINTS document; one clear error naming the hint and field."""
    if not isinstance(doc, dict) or not isinstance(doc.get("hints"), list):
        raise InveError(f"{fname}: must be a JSON object with a 'hints' list")
    W, H = source_size
    out: list[Hint] = []
    for i, h in enumerate(doc["hints"]):
        where = f"{fname} hints[{i}]"
        if not isinstance(h, dict) or "frame" not in h or "polygon" not in h:
            raise InveError(f"{where}: must be an object with frame and polygon")
        frame = h["frame"]
        if isinstance(frame, float) and frame.is_integer():
            frame = int(frame)
        if isinstance(frame, bool) or not isinstance(frame, int) or frame not in frames:
            raise InveError(f"{where}: frame {frame!r} is outside the frames being trained "
                            f"({frames[0]}..{frames[-1]})")
        label = h.get("label", "fg")
        if label not in ("fg", "bg"):
            raise InveError(f"{where}: 'label' must be \"fg\" or \"bg\", got {label!r}")
        poly = h["polygon"]
        if (not isinstance(poly, list) or len(poly) < 3
                or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in poly)):
            raise InveError(f"{where}: 'polygon' must be a list of at least 3 [x, y] points")
        pts = []
        for p in poly:
            if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in p):
                raise InveError(f"{where}: polygon points must be numbers")
            pts.append((float(np.clip(p[0], 0, W)), float(np.clip(p[1], 0, H))))
        out.append(Hint(frames.index(frame), np.array(pts), label))
    if not any(h.label == "fg" for h in out):
        raise InveError(f"{fname}: needs at least one 'fg' outline of the foreground")
    return out


def _raster(poly: np.ndarray, source_size: tuple[int, int], work_size: tuple[int, int]) -> np.ndarray:
    W, H = source_size
    w, h = work_size
    pts = np.round(poly * [w / W, h / H] * 16 - 8).astype(np.int32)  # 4 fractional bits, centres at i+0.5
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 1, cv2.LINE_8, shift=4)
    return m


def _warp(mask: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """m'(x) = m(x + disp(x)): carry a mask along a flow that points back into its frame."""
    h, w = mask.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(mask.astype(np.float32), gx + disp[..., 0], gy + disp[..., 1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (out > 0.5).astype(np.uint8)


def _size(mask: np.ndarray) -> float:
    return math.sqrt(max(1, int(mask.sum())))


def _radius(mask: np.ndarray) -> int:
    """The band GrabCut decides: sure foreground lies this far inside a mask."""
    return max(2, int(round(BAND * _size(mask))))


def _disc(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _window(frac: float, mask: np.ndarray, lo: int, hi: int) -> int:
    return int(np.clip(round(frac * _size(mask)), lo, hi))


def _grabcut(img: np.ndarray, carried: np.ndarray, bg: np.ndarray | None,
             doubt: np.ndarray | None = None) -> np.ndarray:
    """GrabCut on a crop around the carried mask: colour models of the object's surroundings."""
    ys, xs = np.nonzero(carried)
    if len(ys) < 9:
        return carried
    h, w = carried.shape
    m = max(8, int(round(CROP_MARGIN * _size(carried))))
    y0, y1 = max(0, ys.min() - m), min(h, ys.max() + m + 1)
    x0, x1 = max(0, xs.min() - m), min(w, xs.max() + m + 1)
    crop = (slice(y0, y1), slice(x0, x1))
    out = np.zeros_like(carried)
    out[crop] = _grabcut_crop(np.ascontiguousarray(img[crop]), np.ascontiguousarray(carried[crop]),
                              None if bg is None else np.ascontiguousarray(bg[crop]),
                              None if doubt is None else np.ascontiguousarray(doubt[crop]))
    return out


def _grabcut_crop(img: np.ndarray, carried: np.ndarray, bg: np.ndarray | None,
                  doubt: np.ndarray | None = None) -> np.ndarray:
    """Re-fit a carried mask to the frame with a GrabCut colour model seeded by it; ``doubt``:
    pixels of the carried core that are only probable foreground (see ``_unlike_own``)."""
    area = int(carried.sum())
    if area < 9:
        return carried
    k = _disc(_radius(carried))
    sure_fg = cv2.erode(carried, k)
    # thin parts (an arm, an ear: narrower than the band) have no sure core after that
    # erosion and GrabCut's colour model gives them to a look-alike background; their own
    # centre line, carried by the flow, is kept as sure foreground
    thin = carried & (1 - cv2.morphologyEx(carried, cv2.MORPH_OPEN, k))
    if doubt is not None:
        sure_fg &= 1 - doubt
    sure_fg |= cv2.erode(thin, np.ones((3, 3), np.uint8))
    maybe = cv2.dilate(carried, k)
    gc = np.full(carried.shape, cv2.GC_BGD, np.uint8)
    gc[maybe > 0] = cv2.GC_PR_BGD
    gc[carried > 0] = cv2.GC_PR_FGD
    gc[sure_fg > 0] = cv2.GC_FGD
    if bg is not None:
        gc[(bg > 0) & (sure_fg == 0)] = cv2.GC_BGD
    if not (gc == cv2.GC_BGD).any() or not ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).any():
        return carried
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models with k-means on OpenCV's global RNG: without a fixed
    # seed the masks depend on what the process ran before. cv2 cannot save and restore that
    # state, so this resets it for the whole process (nothing else in inve draws from it)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return carried
    out = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    ratio = (out.sum() + 1) / (area + 1)
    if not (1 / MAX_AREA_CHANGE <= ratio <= MAX_AREA_CHANGE):
        return carried
    return out


def _lab(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)


def _offsets(r: int) -> np.ndarray:
    """Offsets (dy, dx) within a disc of radius r, thinned to a grid on big discs (bounded cost)."""
    step = max(1, r // OFFSET_STEP)
    d = np.arange(-r, r + 1, step)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = dy * dy + dx * dx <= r * r
    return np.stack([dy[keep], dx[keep]], 1)


def _nearest_around(lab: np.ndarray, colours: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                    samples: np.ndarray, r: int) -> np.ndarray:
    """Per point: mean distance of ``colours`` [N, 3] to the NEAREST closest colours of ``lab``
    among the ``samples`` pixels within radius r of (ys, xs) (inf where there are none)."""
    h, w = samples.shape
    offs = _offsets(r)
    best = np.full((len(ys), NEAREST), np.inf, np.float32)
    for dy, dx in offs:
        yy, xx = ys + dy, xs + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        yy, xx = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
        d = np.sqrt(((lab[yy, xx] - colours) ** 2).sum(-1))
        d[~(inside & (samples[yy, xx] > 0))] = np.inf
        # keep the NEAREST smallest so far: replace the largest kept where this one is smaller
        worst = best.argmax(1)
        rows = np.arange(len(ys))
        better = d < best[rows, worst]
        best[rows[better], worst[better]] = d[better]
    return best.mean(1)


def _nearest_anywhere(lab: np.ndarray, colours: np.ndarray, samples: np.ndarray, n: int = POOL) -> np.ndarray:
    """Per colour: mean distance to its NEAREST closest among (up to n of) the ``samples`` pixels' colours."""
    pool = lab[samples > 0]
    if len(pool) > n:
        pool = pool[np.random.default_rng(0).choice(len(pool), n, replace=False)]
    out = np.empty(len(colours), np.float32)
    k = min(NEAREST, len(pool))
    for i in range(0, len(colours), 1024):
        d = np.sqrt(((colours[i:i + 1024, None, :] - pool[None]) ** 2).sum(-1))
        out[i:i + 1024] = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
    return out


def _fit_outline(img: np.ndarray, seed: np.ndarray, bg: np.ndarray | None) -> np.ndarray:
    """The mask on a hint frame: the outline's eroded core; of its band, each pixel GrabCut
    keeps that is also nearer the core's colours than the background just outside the
    outline (a loose outline around an object whose colours recur in the background keeps
    neither where GrabCut gives it away), and in the outline's thin parts each pixel by
    colour alone (GrabCut drops a thin ear lying along a strong edge); beyond the outline,
    up to OUTLINE_GROWTH px where it is tight and not beside a thin part, what GrabCut adds
    that is nearer the core's colours than the background around it (a tight outline grows
    to the object's real edge)."""
    if int(seed.sum()) < 9:
        return seed
    k = _disc(_radius(seed))
    core = cv2.erode(seed, k)
    cut = _grabcut(img, seed, bg)
    fg = core & cut
    if not fg.any():
        return seed
    # the outline's own edge pixel is the user's stroke, not a decision: a loose outline's
    # rim there is mostly background blended with the object's edge, so GrabCut must agree
    inner = cv2.erode(seed, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(seed & (1 - core))
    lab = _lab(img)
    colours = lab[ys, xs]
    outside = 1 - cv2.dilate(seed, np.ones((5, 5), np.uint8))
    to_bg = _nearest_around(lab, colours, ys, xs, outside, _window(BG_WINDOW, seed, *BG_CLAMP))
    to_fg = _nearest_anywhere(lab, colours, fg)
    # no background sample nearby (a band wider than the window): GrabCut's decision alone
    like_fg = ~np.isfinite(to_bg) | (to_fg < to_bg)
    thin_parts = seed & (1 - cv2.morphologyEx(seed, cv2.MORPH_OPEN, k))
    thin = (thin_parts & inner)[ys, xs] > 0
    keep = like_fg & ((cut[ys, xs] > 0) | thin) & (inner[ys, xs] > 0)
    out = core.copy()
    out[ys[keep], xs[keep]] = 1
    # beyond the outline's edge pixel, GrabCut's additions only where the outline is tight
    # (the band just inside its edge pixel was kept; a loose outline does not grow), not
    # beside its thin parts (what GrabCut adds there is the look-alike background it prefers
    # to a thin part) and at most OUTLINE_GROWTH px beyond it
    ring = inner & (1 - cv2.erode(inner, np.ones((3, 3), np.uint8)))
    # (slivers a pixel wide, where the opening rounds off a corner of the outline, are no part)
    parts = cv2.morphologyEx(thin_parts, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    thick = 1 - cv2.dilate(parts, _disc(OUTLINE_GROWTH + 2))
    tight = cv2.dilate(out & ring & thick, _disc(OUTLINE_GROWTH + 1))
    out |= cut & (1 - inner) & tight
    out = _drop_leaks(img, seed, cut, out)
    if bg is not None:
        out &= 1 - bg
    return out


def _keep_own(img: np.ndarray, prev_img: np.ndarray, prev: np.ndarray, carried: np.ndarray,
              disp: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Of the carried pixels GrabCut gave away, those still nearer the object's own colours
    where the flow carried them from (frame ``prev_img`` under ``prev``) than the background
    around them now: a thin part follows the flow as long as it still looks like itself."""
    ys, xs = np.nonzero(carried & (1 - cut))
    out = np.zeros_like(carried)
    if len(ys) == 0:
        return out
    lab, prev_lab = _lab(img), _lab(prev_img)
    colours = lab[ys, xs]
    sy = np.round(ys + disp[ys, xs, 1]).astype(np.int64)
    sx = np.round(xs + disp[ys, xs, 0]).astype(np.int64)
    own = _nearest_around(prev_lab, colours, sy, sx, prev, _window(OWN_WINDOW, carried, *OWN_CLAMP))
    outside = 1 - cv2.dilate(carried, _disc(1))
    to_bg = _nearest_around(lab, colours, ys, xs, outside, _window(BG_WINDOW, carried, *BG_CLAMP))
    # no background sample within the window (a pixel deep inside a part that is not thin: a
    # gap opening between arm and body, an occluder passing): nothing says it still looks
    # like itself rather than like the background, so GrabCut's decision stands
    keep = np.isfinite(to_bg) & (own + OWN_MARGIN < to_bg)
    out[ys[keep], xs[keep]] = 1
    return out


def _drop_leaks(img: np.ndarray, carried: np.ndarray, cut: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels the re-fit added outside the carried mask stay only where they are nearer the
    object's core colours than the background around them: a leak into a look-alike
    background (leaves next to an ear touching the frame's edge) would otherwise grow on
    every frame after."""
    new = mask & (1 - cv2.dilate(carried, np.ones((3, 3), np.uint8)))
    core = cv2.erode(carried, _disc(_radius(carried))) & cut
    if not new.any() or not core.any():
        return mask
    ys, xs = np.nonzero(new)
    lab = _lab(img)
    colours = lab[ys, xs]
    outside = 1 - cv2.dilate(carried | mask, np.ones((3, 3), np.uint8))
    to_bg = _nearest_around(lab, colours, ys, xs, outside, _window(BG_WINDOW, carried, *BG_CLAMP))
    # no background sample within the window (the interior of a wide leak): not shown to look
    # like the object, dropped (else it stays as an island that _keep_own carries on). The
    # price on the bundled clip: his right ear curling back into view on frame 0, 47 frames
    # from the outline, is such an addition (23/24 points at 240 px; the background anywhere
    # around the object as the fallback did not keep it either)
    bad = ~np.isfinite(to_bg) | ~(_nearest_anywhere(lab, colours, core) < to_bg)
    out = mask.copy()
    out[ys[bad], xs[bad]] = 0
    return out


def _unlike_own(img: np.ndarray, prev_img: np.ndarray, prev: np.ndarray, carried: np.ndarray,
                disp: np.ndarray, margin: float | None = None) -> np.ndarray:
    """Pixels of the carried mask's core (what GrabCut is told is sure foreground) whose colour
    changed from where the flow carried them from and is now nearer the background (outside
    the carried mask's band, within half the object's size of the changed pixels' box) than
    any of the object's own colours on the frame they were carried from: a gap opening
    inside a solid object (between arm and body, between the legs) or an occluder passing
    over it. Left sure, GrabCut could never open them and the mask would cover the
    background there for the rest of the clip."""
    margin = UNLIKE_MARGIN if margin is None else margin
    out = np.zeros_like(carried)
    core = cv2.erode(carried, _disc(_radius(carried)))
    lab, prev_lab = _lab(img), _lab(prev_img)
    # only pixels whose colour changed from where the flow carried them from are tested: an
    # object carried well keeps its colours, and testing every core pixel against two
    # 2000-colour pools made the growth 4x slower (17.9 s CPU instead of 4.4 s at 240 px)
    h, w = carried.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    was = cv2.remap(prev_lab, gx + disp[..., 0], gy + disp[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    changed = np.sqrt(((lab - was) ** 2).sum(-1)) > 2 * margin
    ys, xs = np.nonzero(core & changed)
    if len(ys) == 0 or not prev.any():
        return out
    m = max(8, int(round(CROP_MARGIN * _size(carried))))
    near = np.zeros_like(carried)
    near[max(0, ys.min() - m):min(h, ys.max() + m + 1), max(0, xs.min() - m):min(w, xs.max() + m + 1)] = 1
    around = near & (1 - cv2.dilate(carried, _disc(_radius(carried))))
    if not around.any():
        return out
    colours = lab[ys, xs]
    own = _nearest_anywhere(prev_lab, colours, prev)
    to_bg = _nearest_anywhere(lab, colours, around)
    bad = to_bg + margin < own
    out[ys[bad], xs[bad]] = 1
    return out


def _refit(img: np.ndarray, prev_img: np.ndarray, prev: np.ndarray, carried: np.ndarray, disp: np.ndarray,
           bg: np.ndarray | None) -> np.ndarray:
    """A carried mask re-fitted to its frame: GrabCut, the thin parts it gave away that still
    look like themselves, without what it added that looks like the background."""
    cut = _grabcut(img, carried, bg, _unlike_own(img, prev_img, prev, carried, disp))
    mask = cut | _keep_own(img, prev_img, prev, carried, disp, cut)
    mask = _drop_leaks(img, carried, cut, mask)
    if bg is not None:
        mask &= 1 - bg
    return mask


def grow_masks(frames: np.ndarray, flow: FlowField | None, hints: list[Hint], source_size: tuple[int, int],
               refit: bool = True) -> np.ndarray:
    """Masks uint8 [T, h, w] (1 = foreground) for working frames [T, h, w, 3] from the hints."""
    T, h, w = frames.shape[:3]
    work = (w, h)
    seeds: dict[int, np.ndarray] = {}
    bgs: dict[int, np.ndarray] = {}
    for hint in hints:
        m = _raster(hint.polygon, source_size, work)
        target = seeds if hint.label == "fg" else bgs
        target[hint.t] = np.maximum(target.get(hint.t, np.zeros((h, w), np.uint8)), m)
    for t, bg in bgs.items():
        if t in seeds:
            seeds[t] = seeds[t] & (1 - bg)
    keys = sorted(seeds)
    # every frame follows its nearest hint frame (ties: the earlier one)
    owner = [min(keys, key=lambda k: (abs(k - t), k)) for t in range(T)]
    out = np.zeros((T, h, w), np.uint8)
    zero = np.zeros((h, w, 2), np.float32)
    for k in keys:
        out[k] = _fit_outline(frames[k], seeds[k], bgs.get(k)) if refit else seeds[k]
        for step in (1, -1):
            prev, t = out[k], k + step
            while 0 <= t < T and owner[t] == k:
                if flow is None:
                    disp = zero
                elif step == 1:  # bwd[t-1]: frame t's pixels back into frame t-1
                    disp = flow.bwd[t - 1]
                else:  # fwd[t]: frame t's pixels into frame t+1
                    disp = flow.fwd[t]
                carried = _warp(prev, disp)
                out[t] = _refit(frames[t], frames[t - step], prev, carried, disp, bgs.get(t)) if refit else carried
                prev, t = out[t], t + step
    return out


def write_hint_masks(folder: Path, masks: np.ndarray, first_frame: int) -> None:
    """Masks as PNGs named by source frame index (the ``--masks`` folder format)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(masks):
        fsutil.write_png(folder / f"{first_frame + t:04d}.png", (m > 0).astype(np.float32))


def check_hints_file(path: Path, masks: str | None, single_layer: bool) -> None:
    """Refuse a hints file that cannot work before anything is written (frames checked later)."""
    if masks:
        raise InveError("--fg-hint and --masks both give the foreground; use one of them")
    if single_layer:
        raise InveError("--fg-hint and --single-layer contradict each other: hints describe a foreground layer")
    doc = fsutil.read_json(path, "hints file")
    frames = [h.get("frame") for h in doc.get("hints", []) if isinstance(h, dict)] if isinstance(doc, dict) else []
    frames = [f for f in frames if isinstance(f, int) and not isinstance(f, bool)]
    parse_hints(doc, None, (10 ** 9, 10 ** 9), sorted(set(frames)) or [0], Path(path).name)


def hint_masks(cache_dir: Path, frames: np.ndarray, hints_path: Path, source_size: tuple[int, int],
               source_frames: list[int], progress: Progress | None = None) -> Path:
    """Grow the hints into masks for ``frames`` (working size) in ``cache_dir/hint_masks``; returns the folder."""
    from core.preprocess import frames_digest, get_flow  # noqa: PLC0415

    doc = fsutil.read_json(hints_path, "hints file")
    hints = parse_hints(doc, None, source_size, source_frames, Path(hints_path).name)
    if progress is not None:
        progress.message(f"growing {len(hints)} foreground hint(s) into masks")
    flow = get_flow(Path(cache_dir), frames, frames_digest(frames), progress) if len(frames) > 1 else None
    masks = grow_masks(np.asarray(frames), flow, hints, source_size)
    folder = Path(cache_dir) / "hint_masks"
    write_hint_masks(folder, masks, source_frames[0])
    return folder


__all__ = ["Hint", "parse_hints", "grow_masks", "write_hint_masks", "check_hints_file", "hint_masks"]

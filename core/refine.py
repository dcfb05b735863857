"""Drift-free propagation: refine mapped positions against the appearance where they were drawn.

Why: the layered mappings carry a point anywhere, through occlusion and over long ranges,
but they drift slowly (a pixel or two, 20-48 frames from where the point was drawn): the
fit trades exactness at each point for a smooth, rigid, cycle-consistent whole. Local
photometric tracking (Lucas-Kanade) is the opposite: precise to a tenth of a pixel where the
patch is textured and still in view, lost as soon as it is not. So the mapping gives the
start and the shape, and the pixels give the last pixel:

* The template is the patch around the point in the frame where it was drawn.
* The mapping's local Jacobian (from the propagated positions of a few neighbours) warps
  that template into each target frame, so zoom, roll and a turning object do not break
  the match; only a translation is left to find. Matching is direct against the drawing
  frame (no chaining, so no accumulated drift).
* Search: an integer search of normalised cross-correlation (NCC) around the prediction,
  then Gauss-Newton (Lucas-Kanade with gain and bias) to sub-pixel precision, first at the
  working resolution (the scale of the mapping's error), then at the source resolution.
* Template pixels count only where the point's own layer shows, in the drawing frame and in
  the target frame (the baked alpha), so a background point next to the foreground is
  matched on background only.
* Rejected (the mapping's position is kept) where the point is hidden, where the patch is
  flat (too little gradient to pin a position), where too little of the patch shows its
  layer, where the best match is poor (NCC) or moved further than the search allows.

All positions are source pixels; frames are grey float arrays.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

#: alpha sampler: (project frame t, source points [..., 2]) -> visibility of the layer in 0..1
LayerMask = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class RefineConfig:
    radius: int = 6  # template half-size, in samples of the level
    search: int = 5  # integer search range (+- samples) at the coarsest level
    #: Gauss-Newton iterations of the shift match at the finest level, at each coarser one,
    #: and of the affine match. Why not 6 everywhere: a coarser level only starts the finest,
    #: which refines its answer anyway (measured on box.mp4's edit pass: median step 0.002
    #: samples after 3 iterations at the working level; at the source level, from there,
    #: 0.001 px after 4, 90 % below 0.02 px); the affine match converges more slowly and
    #: keeps 6. 12 -> 8 shift iterations take ~1 ms off a ~8 ms match; the fidelity
    #: benchmark: edits 41.33 dB (41.43 with 12), IoU 0.970, tracks unchanged but 0.01 px.
    iters: int = 5
    coarse_iters: int = 3
    affine_iters: int = 6
    min_ncc: float = 0.75  # a worse best match is rejected
    min_texture: float = 3e-5  # smallest eigenvalue of the mean gradient structure tensor (grey 0..1 per sample)
    #: a point whose patch where the match starts has less than this share of ``min_texture``
    #: is rejected before the integer search. Why: most points of a stroke on a plain surface
    #: are flat, and were searched and matched only to be rejected by the texture test at the
    #: match (box.mp4's edit pass: 70 % of the points searched were; the search and the first
    #: Gauss-Newton are over half of a match's CPU). Half the threshold at the start dropped
    #: 44 % of the points searched there, and 5 of the 1479 that passed at the match
    #: (a match 1-5 samples away from a flat start is mostly a look-alike); refinement's CPU
    #: fell by ~20 %. 0 turns it off. Rendering only (:func:`refine_independent`): tracks
    #: (:func:`refine_positions`) search every point anyway and were validated without it.
    min_texture_start: float = 0.5
    min_shown: float = 0.4  # share of the template window that must show the point's layer
    max_shift: float = 6.0  # largest accepted correction, in samples of the coarsest level
    #: share of the (Gaussian) window that must lie inside the target frame: a patch cut by
    #: the border leaves a strip whose match slides along it (measured: 2-6 px off at NCC 0.8-0.98)
    min_inside: float = 0.75
    #: also correct the mapping's local warp (affine Lucas-Kanade at the finest level): a
    #: turning object whose fit lags its rotation by 20 degrees otherwise biases the match
    affine: bool = True
    affine_ridge: float = 0.1  # damping of the affine part's steps (relative to the data)
    affine_gain: float = 0.01  # NCC the affine match must gain over the shift alone to be kept
    affine_below: float = 0.985  # ... tried only where the shift alone matches worse than this
    #: largest change of the correction from the one carried from the nearest matched frame
    #: (samples of the coarsest level): ``max_jump`` plus ``jump_rate`` per frame between the
    #: two. The mapping's drift changes smoothly, a few tenths of a pixel per frame; a match
    #: that jumps 3-6 px from its neighbour's is a patch half under an occluder sliding along
    #: its edge (measured on the benchmark: 25 such, each a track called visible where hidden)
    max_jump: float = 1.5
    jump_rate: float = 0.25


@dataclass
class Refined:
    xy: np.ndarray  # [F, N, 2] refined positions (the prediction where rejected)
    accepted: np.ndarray  # [F, N] bool: the correction was accepted
    ncc: np.ndarray  # [F, N] final NCC (nan where not matched)
    shift: np.ndarray  # [F, N] size of the accepted correction, source px (0 where rejected)


def grey(img: np.ndarray) -> torch.Tensor:
    """uint8 or float RGB [H, W, 3] -> float32 grey [1, 1, H, W] in 0..1.

    OpenCV's float conversion (same BT.601 weights): a 1080p frame costs ~5 ms instead of the
    ~25 ms of float64 numpy arithmetic, paid for each new frame an interactive render refines.
    """
    import cv2  # noqa: PLC0415

    a = np.asarray(img)
    if a.dtype == np.uint8:
        # one pass (the float32 product of the converted value, as astype then multiply gives)
        g = cv2.cvtColor(np.multiply(a, np.float32(1.0 / 255.0), dtype=np.float32), cv2.COLOR_RGB2GRAY)
    else:
        g = cv2.cvtColor(np.ascontiguousarray(a, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))[None, None]


def _sample(img: torch.Tensor, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear sample of [1, 1, h, w] at source positions [..., 2] of a frame ``size`` = (W, H).

    ``grid_sample(align_corners=False)`` coordinates do not depend on the raster's size, so
    one source position reads every level of the pyramid consistently.
    """
    W, H = size
    shape = xy.shape[:-1]
    g = _to_grid(xy, torch.tensor([2.0 / W, 2.0 / H])).reshape(1, 1, -1, 2)
    out = F.grid_sample(img, g.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(shape)


def _to_grid(xy: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``xy * scale - 1.0`` for positions [..., 2] and a per-axis ``scale`` [2]: the same numbers
    (element by element the same two operations), computed with the scale repeated along the
    positions so that the innermost dimension is long (a broadcast over an innermost dimension
    of 2 runs a scalar loop, ~3x slower: this conversion was a third of a Gauss-Newton step)."""
    m = xy.shape[-2] if xy.dim() > 1 else 1
    return (xy.reshape(-1, 2 * m) * scale.repeat(m) - 1.0).reshape(xy.shape)


def _add_offsets(x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``x[:, None] + offs[None, :, None, :]``: positions [n, P, 2] each moved by every offset
    [K, 2] -> [n, K, P, 2]. The same numbers as the broadcast add, with the offsets laid out
    along the positions first (a long innermost dimension: see :func:`_to_grid`)."""
    n, P = x.shape[:2]
    K = offs.shape[0]
    rows = offs[:, None, :].expand(K, P, 2).reshape(1, K, 2 * P)
    return (x.reshape(n, 1, 2 * P) + rows).reshape(n, K, P, 2)


def _ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted NCC along the last axis."""
    sw = w.sum(-1, keepdim=True).clamp_min(1e-6)
    am = a - (a * w).sum(-1, keepdim=True) / sw
    bm = b - (b * w).sum(-1, keepdim=True) / sw
    num = (w * am * bm).sum(-1)
    den = torch.sqrt((w * am * am).sum(-1) * (w * bm * bm).sum(-1)).clamp_min(1e-9)
    return num / den


def _ncc_search(vals: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted NCC of every candidate ``vals`` [n, C, P] against its template ``t`` [n, P]: [n, C].

    The same value as ``_ncc(vals, t[:, None], w[:, None])`` from three weighted sums per
    candidate (matrix products) instead of a dozen [n, C, P] temporaries: the integer search
    is most of refinement's cost. The candidates are centred on the template's mean first
    so that the variance as E[b^2] - E[b]^2 keeps float32 precision.
    """
    sw = w.sum(-1, keepdim=True).clamp_min(1e-6)  # [n, 1]
    tm = (w * t).sum(-1, keepdim=True) / sw
    tw = w * (t - tm)  # weighted, centred template: sum(tw) = 0
    var_t = (tw * (t - tm)).sum(-1)  # [n]
    b = vals - tm[:, :, None]
    sums = torch.bmm(b, torch.stack([tw, w], -1))  # [n, C, 2]
    num, s1 = sums[..., 0], sums[..., 1]
    s2 = torch.bmm(b.square_(), w[:, :, None])[..., 0]
    var_b = (s2 - s1 * s1 / sw).clamp_min(0.0)
    return num / torch.sqrt(var_t[:, None] * var_b).clamp_min(1e-9)


def _in_frame(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1 where source positions [..., 2] lie inside the frame, else 0.

    Template pixels beyond the border would read the replicated border row (grid_sample's
    padding): a point near the edge would be matched on smeared pixels, biased by a pixel
    or more. They do not count; a point with too little of its window inside is rejected
    by ``min_shown``.
    """
    W, H = size
    lim = torch.tensor([float(W), float(H)])
    return ((pos >= 0) & (pos <= lim)).all(-1).float()


def _seen_at(levels: list["Level"], mask: LayerMask | None, t: int, xy: np.ndarray) -> np.ndarray:
    """[n] bool: source positions ``xy`` [n, 2] of frame t are inside it and show the layer."""
    here = torch.from_numpy(np.asarray(xy, np.float32).reshape(-1, 2))
    seen = _in_frame(here, levels[-1].size) > 0
    if mask is not None and len(here):
        seen &= mask(int(t), here) > 0.5
    return seen.numpy()


class Level:
    """One resolution of the refinement: grey frames where one sample is ``step`` source px.

    ``frames(t)`` gives frame t as [1, 1, h, w] grey (loaded once, kept: a context renders
    frames again and again).
    """

    KEEP = 12  # frames kept (the drawing frame and a block of frames matched together)
    #: frames kept besides, on request (:meth:`pin`: chain links a later frame may match from),
    #: up to this many bytes (the oldest dropped first: a 1080p frame is 8 MB)
    PINNED_BYTES = 192 * 2**20

    def __init__(self, frames: Callable[[int], torch.Tensor], step: float, size: tuple[int, int]) -> None:
        self.frames, self.step, self.size = frames, step, size
        self._cache: dict[int, torch.Tensor] = {}
        self._pinned: dict[int, torch.Tensor] = {}
        #: the templates of the last few point sets (:func:`_templates`; kept on the first level)
        self.templates: OrderedDict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()

    def pin(self, t: int) -> None:
        """Keep frame t (loaded now, while its pixels are at hand) beyond the recent few."""
        if t not in self._pinned:
            self._pinned[t] = self.image(t)
            while len(self._pinned) > 1 and sum(a.nbytes for a in self._pinned.values()) > self.PINNED_BYTES:
                self._pinned.pop(next(iter(self._pinned)))

    def unpin(self) -> None:
        """Drop the frames kept by :meth:`pin`."""
        self._pinned.clear()

    def image(self, t: int) -> torch.Tensor:
        if t in self._pinned:
            return self._pinned[t]
        if t in self._cache:
            self._cache[t] = self._cache.pop(t)  # most recent last
        else:
            while len(self._cache) >= self.KEEP:
                self._cache.pop(next(iter(self._cache)))
            self._cache[t] = self.frames(t)
        return self._cache[t]

    def sample(self, t: int, xy: torch.Tensor) -> torch.Tensor:
        return _sample(self.image(t), xy, self.size)


def _warp(M: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Template offsets ``o`` [P, 2] through per-row 2x2 maps ``M`` [n, 2, 2]: [n, P, 2].

    Element-wise (two products and a sum per value) rather than einsum's matrix product,
    whose kernel can change with the number of rows: a row's numbers must not depend on
    how many other rows share the call (:func:`refine_independent`).
    """
    return M[:, None, :, 0] * o[None, :, 0, None] + M[:, None, :, 1] * o[None, :, 1, None]


def _gauss_newton(lv: "Level", t: int, p: torch.Tensor, A: torch.Tensor, G: torch.Tensor, o: torch.Tensor,
                  delta: torch.Tensor, w: torch.Tensor, T_: torch.Tensor, iters: int,
                  ridge: float | None, sample: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple, torch.Tensor]:
    """Lucas-Kanade with gain and bias: the shift ``delta`` [n, 2] (and with ``ridge``, the
    warp correction G [n, 2, 2] too, its steps damped by ``ridge`` times the data's mean
    curvature) that best matches the template ``T_`` [n, P] sampled at p + (A + G) o + delta.
    ``sample`` (positions [..., n, P, 2] -> values [..., n, P], or with ``rows_first=True``
    [n, K, P, 2] -> [n, K, P]) replaces ``lv.sample(t, .)`` where the n rows lie in different
    frames (:func:`refine_independent`).

    Returns (delta, G, (Hxx, Hxy, Hyy) of the last iteration, total weight [n]).
    """
    if sample is None:
        sample = lambda X, rows_first=False: lv.sample(t, X)  # noqa: E731 - any layout reads one frame
    Hxx = Hxy = Hyy = torch.zeros(len(p))
    sw = w.sum(-1).clamp_min(1e-6)
    sw1 = sw[:, None]
    h = 0.5 * lv.step
    # the value and its four central-difference neighbours: q + (0, 0), (h, 0), (-h, 0),
    # (0, h), (0, -h) (the same numbers as q, q + ex, q - ex, ...: adding 0 or -h is exact)
    stencil = torch.tensor([[0.0, 0.0], [h, 0.0], [-h, 0.0], [0.0, h], [0.0, -h]])
    fixed = p[:, None, :] + _warp(A + G, o) if ridge is None else None  # G only changes with ridge
    # the template's weighted mean and spread do not change between iterations
    Tm = (w * T_).sum(-1, keepdim=True) / sw1
    Tc = T_ - Tm
    var_t = (w * Tc ** 2).sum(-1, keepdim=True).clamp_min(1e-9)
    wTc = w * Tc
    for _ in range(iters):
        q = (fixed if fixed is not None else p[:, None, :] + _warp(A + G, o)) + delta[:, None, :]
        # the value and the four central-difference neighbours in ONE grid_sample: the same
        # numbers as five calls (each output depends only on its own position), a fifth of the
        # per-call overhead that dominated this loop (~30 small calls per point set and level);
        # built rows first ([n, 5, P, 2], one broadcast add), as a row sampler reads them
        S = sample(_add_offsets(q, stencil), rows_first=True)
        I, xp, xm, yp, ym = S.unbind(1)
        gxv = (xp - xm) / lv.step
        gyv = (yp - ym) / lv.step
        # gain and bias: I ~ g T + b (weighted least squares), residual after that
        Im = (w * I).sum(-1, keepdim=True) / sw1
        Ic = I - Im
        g = (wTc * Ic).sum(-1, keepdim=True) / var_t
        res = Ic - g * Tc
        Hxx, Hxy, Hyy = (w * gxv * gxv).sum(-1), (w * gxv * gyv).sum(-1), (w * gyv * gyv).sum(-1)
        if ridge is None:
            bx, by = (w * gxv * res).sum(-1), (w * gyv * res).sum(-1)
            det = (Hxx * Hyy - Hxy * Hxy).clamp_min(1e-12)
            step = torch.stack([(Hyy * bx - Hxy * by) / det, (Hxx * by - Hxy * bx) / det], -1)
            delta = delta - step.clamp(-lv.step, lv.step)
            continue
        J6 = torch.stack([gxv, gyv, gxv * o[:, 0], gxv * o[:, 1], gyv * o[:, 0], gyv * o[:, 1]], -1)
        Hm = torch.einsum("npi,npj->nij", J6 * w[..., None], J6)
        bv = torch.einsum("npi,np->ni", J6, w * res)
        eps = 1e-6 * (Hxx + Hyy) + 1e-12
        lam = ridge * 0.5 * (Hxx + Hyy)
        Hm = Hm + torch.diag_embed(torch.stack([eps, eps] + [lam + eps] * 4, -1))
        sol, info = torch.linalg.solve_ex(Hm, bv[..., None])
        sol = torch.where((info == 0)[:, None], torch.nan_to_num(sol[..., 0]), 0.0)  # singular (flat): no step
        delta = delta - sol[:, :2].clamp(-lv.step, lv.step)
        G = G - sol[:, 2:].reshape(-1, 2, 2).clamp(-0.05, 0.05)
    return delta, G, (Hxx, Hxy, Hyy), sw


def _texture_of(Hs: tuple, sw: torch.Tensor, step: float) -> torch.Tensor:
    """The smallest eigenvalue of the mean structure tensor (sums ``Hs`` = (Hxx, Hxy, Hyy) of
    weight ``sw``), per sample of a level of ``step`` source px: how well a patch pins a position."""
    a_, b_, d_ = (h / sw * step ** 2 for h in Hs)
    return 0.5 * (a_ + d_) - torch.sqrt((0.5 * (a_ - d_)) ** 2 + b_ * b_)


def _texture(sample: Callable[..., torch.Tensor], base: torch.Tensor, w: torch.Tensor, lv: "Level") -> torch.Tensor:
    """:func:`_texture_of` of the patches at template positions ``base`` [n, P, 2] (weights ``w``),
    from the central differences :func:`_gauss_newton` takes there."""
    h = 0.5 * lv.step
    S = sample(_add_offsets(base.reshape(len(base), -1, 2), torch.tensor([[h, 0.0], [-h, 0.0], [0.0, h], [0.0, -h]])),
               rows_first=True)
    gx, gy = (S[:, 0] - S[:, 1]) / lv.step, (S[:, 2] - S[:, 3]) / lv.step
    return _texture_of(((w * gx * gx).sum(-1), (w * gx * gy).sum(-1), (w * gy * gy).sum(-1)),
                       w.sum(-1).clamp_min(1e-6), lv.step)


def _search(grid: Callable[[torch.Tensor], torch.Tensor], base: torch.Tensor, T_: torch.Tensor,
            w: torch.Tensor, lv: "Level", cfg: RefineConfig) -> torch.Tensor:
    """The integer shift [n, 2] (source px, within +-``cfg.search`` samples of level ``lv``) whose
    patch at template positions ``base`` [n, P, 2] + shift best matches the template ``T_``
    [n, P] (weighted NCC). ``grid`` samples grid_sample coordinates [n, C, P, 2] -> [n, C, P].

    (Searching a small window first and the whole range only where its best lay on the
    window's edge cost the fidelity benchmark 0.4 dB on its edits: a nearer local maximum
    won where the farther one was right. Not done.)
    """
    s = cfg.search
    cand = torch.stack(torch.meshgrid(torch.arange(-s, s + 1.0), torch.arange(-s, s + 1.0),
                                      indexing="xy"), -1).reshape(-1, 2) * lv.step  # [C, 2]
    # candidates built directly in grid_sample coordinates: one pass over [n, C, P, 2]
    scale = torch.tensor([2.0 / lv.size[0], 2.0 / lv.size[1]])
    scores = _ncc_search(grid(_add_offsets(_to_grid(base, scale), cand * scale)), T_, w)
    return cand[scores.argmax(1)]


def _level_iters(cfg: RefineConfig, li: int, levels: list) -> int:
    """Gauss-Newton iterations of the shift match at level ``li`` (the last is the finest)."""
    return cfg.iters if li == len(levels) - 1 else cfg.coarse_iters


@functools.lru_cache(maxsize=8)
def _patch_window(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2r+1)^2 sample offsets of a match patch [P, 2] and their Gaussian weights [P]
    (centre-weighted, so a patch cut by an outline is decided by its middle). Cached: every
    match uses them (callers never modify them)."""
    k = torch.arange(-r, r + 1, dtype=torch.float32)
    gy, gx = torch.meshgrid(k, k, indexing="ij")
    offs = torch.stack([gx, gy], -1).reshape(-1, 2)
    return offs, torch.exp(-(offs ** 2).sum(-1) / (2 * (0.6 * r) ** 2))


def _templates(levels: list[Level], t0: int, x0: np.ndarray, offs: torch.Tensor, window: torch.Tensor,
               mask: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level, the points' patches in the drawing frame [N, P] (the same for every target
    frame) and their weights: the window, zero outside the frame and, with ``mask``, off the layer.

    Kept for the last TEMPLATES point sets (by drawing frame, points, window and ``mask``, which
    must then be the same object for the same layer): rendering matches the same stroke or
    texture anchors again in every frame, and building their templates was ~8 % of a match.
    Callers never modify them."""
    key = (int(t0), np.ascontiguousarray(x0, np.float64).tobytes(), len(offs), mask)
    cache = levels[0].templates
    if key in cache:
        cache.move_to_end(key)
        for lv in levels:  # the drawing frame stays among the recent frames (as when sampled):
            lv.image(int(t0))  # another point set drawn there needs it (a decoder would restart)
        return cache[key]
    x0t = torch.from_numpy(np.asarray(x0, np.float32))
    tmpl, tmask = [], []
    for lv in levels:
        pos = x0t[:, None, :] + offs[None] * lv.step
        tmpl.append(lv.sample(t0, pos))
        tw = window[None] * _in_frame(pos, lv.size)
        tmask.append(tw * mask(t0, pos) if mask is not None else tw)
    cache[key] = (tmpl, tmask)
    while len(cache) > TEMPLATES:
        cache.popitem(last=False)
    return tmpl, tmask


#: point sets whose templates are kept (:func:`_templates`)
TEMPLATES = 16


def refine_positions(levels: list[Level], t0: int, x0: np.ndarray, frames: np.ndarray, pred: np.ndarray,
                     jac: np.ndarray, valid: np.ndarray, mask: LayerMask | None = None,
                     cfg: RefineConfig | None = None) -> Refined:
    """Refine predicted positions ``pred`` [F, N, 2] of points ``x0`` [N, 2] drawn at frame ``t0``.

    ``frames``: the project frame of each row of ``pred``; ``jac`` [F, N, 2, 2]: the mapping's
    local Jacobian d x_t / d x_t0; ``valid`` [F, N]: where the point is visible (others are
    left alone); ``levels``: coarse to fine, the first decides the search range.
    """
    cfg = cfg or RefineConfig()
    F_, N = pred.shape[:2]
    out = np.array(pred, np.float64, copy=True)
    accepted = np.zeros((F_, N), bool)
    ncc_out = np.full((F_, N), np.nan)
    shift_out = np.zeros((F_, N))
    if N == 0 or F_ == 0:
        return Refined(out, accepted, ncc_out, shift_out)
    r = cfg.radius
    offs, window = _patch_window(r)
    tmpl, tmask = _templates(levels, int(t0), x0, offs, window, mask)
    # frames outward from the drawing frame, each point starting from the correction its
    # nearest accepted frame on the same side found (the mapping's drift grows smoothly with
    # the distance, soon beyond one search range: 5-8 px on a turning object 20-47 frames
    # away). Only the start is carried: every match is still against the drawing frame.
    frames = np.asarray(frames)
    prior = {-1: np.zeros((N, 2)), 1: np.zeros((N, 2))}
    prior_g = {-1: np.zeros((N, 2, 2)), 1: np.zeros((N, 2, 2))}
    prior_t = {-1: np.full(N, int(t0)), 1: np.full(N, int(t0))}  # the frame each prior comes from
    for fi in np.argsort(np.abs(frames.astype(np.int64) - t0), kind="stable"):
        t = frames[fi]
        sel = np.flatnonzero(valid[fi] & (int(t) != t0) & np.isfinite(pred[fi]).all(-1))
        side = prior[1 if int(t) > t0 else -1]
        side_g = prior_g[1 if int(t) > t0 else -1]
        side_t = prior_t[1 if int(t) > t0 else -1]
        start = pred[fi, sel] + side[sel]
        if sel.size:
            # inside the frame and on its own layer where the carried correction puts it (not
            # where the mapping alone does: on a turning object 10 px off, the mapping's place
            # is already off the object, and the point would never be matched again)
            seen = _seen_at(levels, mask, int(t), start)
            sel, start = sel[seen], start[seen]
        if sel.size == 0:
            continue
        gap = torch.from_numpy(np.abs(int(t) - side_t[sel]).astype(np.float32))
        p = torch.from_numpy(start.astype(np.float32))  # [n, 2]
        A = torch.from_numpy(jac[fi, sel].astype(np.float32))  # [n, 2, 2]
        G = torch.zeros(len(sel), 2, 2)  # correction of the warp A: the affine pass's
        G_start = torch.from_numpy(side_g[sel].astype(np.float32))  # its start: the nearest frame's
        ok = torch.ones(len(sel), dtype=torch.bool)
        ncc = torch.full((len(sel),), float("nan"))
        delta = torch.zeros(len(sel), 2)  # source px
        tt = int(t)
        for li, lv in enumerate(levels):
            o = offs * lv.step  # [P, 2] template offsets, source px
            base = p[:, None, :] + _warp(A + G, o)
            inside = _in_frame(base + delta[:, None, :], lv.size)
            ok &= (window * inside).sum(-1) / window.sum() >= cfg.min_inside
            w = tmask[li][sel] * inside
            if mask is not None:
                w = w * mask(tt, base + delta[:, None, :])
            T_ = tmpl[li][sel]
            if li == 0:
                shown = w.sum(-1) / window.sum()
                ok &= shown >= cfg.min_shown
                # integer search around the prediction (in samples of this level)
                img = lv.image(tt)
                delta = _search(lambda g: F.grid_sample(img, g.reshape(1, 1, -1, 2), mode="bilinear",
                                                       padding_mode="border", align_corners=False
                                                       ).reshape(g.shape[:-1]), base, T_, w, lv, cfg)
            delta, _, Hs, sw = _gauss_newton(lv, tt, p, A, G, o, delta, w, T_, _level_iters(cfg, li, levels), None)
            # texture: the smallest eigenvalue of the mean structure tensor, per sample
            a_, b_, d_ = (h / sw * lv.step ** 2 for h in Hs)
            lam_min = 0.5 * (a_ + d_) - torch.sqrt((0.5 * (a_ - d_)) ** 2 + b_ * b_)
            ok &= lam_min >= cfg.min_texture
            ncc = _ncc(lv.sample(tt, base + delta[:, None, :]), T_, w)
        # (only where the shift alone leaves room: NCC below affine_below)
        todo = torch.nonzero(torch.nan_to_num(ncc, nan=-1.0) < cfg.affine_below)[:, 0] if cfg.affine else []
        if len(todo):
            # then the warp's 2x2 correction G as well (started from the one the nearest
            # frame kept: the object turns smoothly), kept only where it clearly matches
            # better: a turning object whose fit lags its rotation gains (NCC 0.85 -> 0.99);
            # a surface the mapping warps right would only gain freedom to slide along an edge
            ridge = cfg.affine_ridge * float((0.6 * r * lv.step) ** 2)
            d_a, G_a, _, _ = _gauss_newton(lv, tt, p[todo], A[todo], G_start[todo], o, delta[todo], w[todo],
                                           T_[todo], cfg.affine_iters, ridge)
            ncc_a = _ncc(lv.sample(tt, p[todo, None, :] + _warp(A[todo] + G_a, o)
                                   + d_a[:, None, :]), T_[todo], w[todo])
            better = torch.nan_to_num(ncc_a, nan=-1.0) > ncc[todo] + cfg.affine_gain
            rows_a = todo[better]
            delta[rows_a], G[rows_a], ncc[rows_a] = d_a[better], G_a[better], ncc_a[better]
        ok &= torch.isfinite(delta).all(-1) & (ncc >= cfg.min_ncc)
        ok &= delta.norm(dim=-1) <= cfg.max_shift * levels[0].step
        ok &= delta.norm(dim=-1) <= (cfg.max_jump + cfg.jump_rate * gap) * levels[0].step
        okn = ok.numpy()
        rows = sel[okn]
        total = start[okn] - pred[fi, rows] + delta.numpy()[okn]  # correction of the mapping
        out[fi, rows] = pred[fi, rows] + total
        accepted[fi, rows] = True
        ncc_out[fi, sel] = ncc.numpy()
        shift_out[fi, rows] = np.linalg.norm(total, axis=-1)
        side[rows] = total
        side_t[rows] = int(t)
        kept = np.zeros_like(okn)
        if len(todo):
            kept[rows_a.numpy()] = True
        kept &= okn
        side_g[sel[kept]] = G.numpy()[kept]
    return Refined(out, accepted, ncc_out, shift_out)


class _RowSampler:
    """Bilinear samples of rows (points) that lie in different frames.

    The rows come grouped by frame, in frame order (``group`` is non-decreasing): each
    frame's rows are one contiguous slice, sampled from that frame by one grid_sample call,
    so every value is computed exactly as a call for that frame alone computes it.
    """

    def __init__(self, imgs: Callable[[int], torch.Tensor], group: np.ndarray, size: tuple[int, int]) -> None:
        self.imgs, self.size = imgs, size  # group -> its frame [1, 1, h, w] (loaded when first sampled)
        self.group = np.asarray(group, np.int64)
        counts = np.bincount(self.group) if len(self.group) else np.zeros(0, np.int64)
        ends = np.cumsum(counts)
        self.spans = [(int(e - c), int(e)) for c, e in zip(counts, ends) if c]
        self.which = [g for g, c in enumerate(counts) if c]
        W, H = size
        self.scale = torch.tensor([2.0 / W, 2.0 / H])

    def subset(self, rows: torch.Tensor | np.ndarray) -> "_RowSampler":
        """The sampler of some rows (in increasing order)."""
        rows = np.asarray(rows.numpy() if isinstance(rows, torch.Tensor) else rows, np.int64)
        return _RowSampler(self.imgs, self.group[rows], self.size)

    def grid(self, g: torch.Tensor) -> torch.Tensor:
        """grid_sample coordinates [R, K..., 2] of the rows -> values [R, K...]."""
        inner = g.shape[1:-1]
        if len(self.spans) == 1:
            img = self.imgs(self.which[0])
            return F.grid_sample(img, g.reshape(1, 1, -1, 2).float(), mode="bilinear", padding_mode="border",
                                 align_corners=False).reshape(g.shape[0], *inner)
        parts = [F.grid_sample(self.imgs(k), g[a:b].reshape(1, 1, -1, 2).float(), mode="bilinear",
                               padding_mode="border", align_corners=False).reshape(b - a, *inner)
                 for k, (a, b) in zip(self.which, self.spans)]
        return torch.cat(parts)

    def __call__(self, xy: torch.Tensor, rows_first: bool = False) -> torch.Tensor:
        """Source positions [..., R, P, 2] (rows at dim -3) -> values [..., R, P]; with
        ``rows_first``, [R, K..., 2] -> [R, K...]."""
        if rows_first:
            return self.grid(_to_grid(xy, self.scale))
        x = xy.movedim(-3, 0) if xy.dim() > 3 else xy
        out = self.grid(_to_grid(x, self.scale))
        return out.movedim(0, -2) if xy.dim() > 3 else out


def refine_independent(levels: list[Level], t0: int, x0: np.ndarray, frames: np.ndarray, pred: np.ndarray,
                       jac: np.ndarray, valid: np.ndarray, mask: LayerMask | None = None,
                       cfg: RefineConfig | None = None) -> Refined:
    """:func:`refine_positions` with every frame matched on its own (each started from the
    prediction, no correction carried from a nearer frame), all frames in one batch.

    Why: rendering refines one frame at a time, so a frame's result must not depend on
    which other frames share the call (a preview jumps around, workers split the shot into
    blocks); but one call per frame pays the ~100 small tensor operations of a match per
    frame, most of refinement's cost at 24 points. Here the rows of all frames go through
    each operation together; every operation is row by row (element-wise, sums over the
    template, per-row matrix products, grid samples), so each frame's numbers are those of
    a call for that frame alone (the tests compare them).
    """
    cfg = cfg or RefineConfig()
    F_, N = pred.shape[:2]
    out = np.array(pred, np.float64, copy=True)
    accepted = np.zeros((F_, N), bool)
    ncc_out = np.full((F_, N), np.nan)
    shift_out = np.zeros((F_, N))
    frames = np.asarray(frames).astype(np.int64)
    selm = np.asarray(valid, bool) & (frames[:, None] != int(t0)) & np.isfinite(pred).all(-1)
    for i in np.flatnonzero(selm.any(1)):  # inside and on its layer at the start (refine_positions)
        rows = np.flatnonzero(selm[i])
        selm[i, rows] = _seen_at(levels, mask, int(frames[i]), pred[i, rows])
    fi, pi = np.nonzero(selm)  # rows, frame-major
    if len(fi) == 0:
        return Refined(out, accepted, ncc_out, shift_out)
    r = cfg.radius
    offs, window = _patch_window(r)
    tmpl, tmask = _templates(levels, int(t0), x0, offs, window, mask)
    uf, group = np.unique(frames[fi], return_inverse=True)  # the frames with rows; row -> its frame
    group = group.reshape(-1)
    # a frame's pixels are read only if some point there survives the tests that need none
    samplers = [_RowSampler(lambda g, lv=lv: lv.image(int(uf[g])), group, lv.size) for lv in levels]
    start = pred[fi, pi]
    p = torch.from_numpy(start.astype(np.float32))  # [R, 2]
    A = torch.from_numpy(jac[fi, pi].astype(np.float32))  # [R, 2, 2]
    G = torch.zeros(len(fi), 2, 2)
    ncc = torch.full((len(fi),), float("nan"))
    delta = torch.zeros(len(fi), 2)
    live = np.arange(len(fi))  # rows still in the running: a rejected row is dropped at once
    sel_t = torch.from_numpy(pi)
    smp = samplers[0]

    def keep(ok: torch.Tensor, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Only the rows still ``ok``: every condition of a match is a must (refine_positions
        ANDs them), so a row failing one is rejected whatever the later steps would find."""
        nonlocal live, p, A, G, delta, sel_t
        if bool(ok.all()):
            return ts
        idx = torch.nonzero(ok)[:, 0]
        live = live[idx.numpy()]
        p, A, G, delta, sel_t = p[idx], A[idx], G[idx], delta[idx], sel_t[idx]
        return tuple(t[idx] for t in ts)

    for li, lv in enumerate(levels):
        o = offs * lv.step
        base = p[:, None, :] + _warp(A + G, o)
        inside = _in_frame(base + delta[:, None, :], lv.size)
        ok = (window * inside).sum(-1) / window.sum() >= cfg.min_inside
        w = tmask[li][sel_t] * inside
        if mask is not None:
            at = base + delta[:, None, :]
            m = torch.empty(at.shape[:-1])
            gl = group[live]
            for g in np.unique(gl):  # the layer mask of each row's own frame
                rows = np.flatnonzero(gl == g)
                m[rows] = mask(int(uf[g]), at[rows])
            w = w * m
        if li == 0:
            shown = w.sum(-1) / window.sum()
            ok &= shown >= cfg.min_shown
        base, w = keep(ok, base, w)
        if len(live) == 0:
            return Refined(out, accepted, ncc_out, shift_out)
        smp = samplers[li].subset(live)
        if li == 0 and cfg.min_texture_start > 0:
            base, w = keep(_texture(smp, base, w, lv) >= cfg.min_texture_start * cfg.min_texture, base, w)
            if len(live) == 0:
                return Refined(out, accepted, ncc_out, shift_out)
            smp = samplers[li].subset(live)
        T_ = tmpl[li][sel_t]
        if li == 0:
            delta = _search(smp.grid, base, T_, w, lv, cfg)
        delta, _, Hs, sw = _gauss_newton(lv, -1, p, A, G, o, delta, w, T_, _level_iters(cfg, li, levels), None,
                                         sample=smp)
        a_, b_, d_ = (h / sw * lv.step ** 2 for h in Hs)
        lam_min = 0.5 * (a_ + d_) - torch.sqrt((0.5 * (a_ - d_)) ** 2 + b_ * b_)
        base, w, T_ = keep(lam_min >= cfg.min_texture, base, w, T_)
        if len(live) == 0:
            return Refined(out, accepted, ncc_out, shift_out)
        smp = samplers[li].subset(live)
        ncc = _ncc(smp(base + delta[:, None, :]), T_, w)
    todo = torch.nonzero(torch.nan_to_num(ncc, nan=-1.0) < cfg.affine_below)[:, 0] if cfg.affine else []
    if len(todo):
        ridge = cfg.affine_ridge * float((0.6 * r * lv.step) ** 2)
        sub = smp.subset(todo)
        d_a, G_a, _, _ = _gauss_newton(lv, -1, p[todo], A[todo], torch.zeros(len(todo), 2, 2), o, delta[todo],
                                       w[todo], T_[todo], cfg.affine_iters, ridge, sample=sub)
        ncc_a = _ncc(sub(p[todo, None, :] + _warp(A[todo] + G_a, o) + d_a[:, None, :]),
                     T_[todo], w[todo])
        better = torch.nan_to_num(ncc_a, nan=-1.0) > ncc[todo] + cfg.affine_gain
        rows_a = todo[better]
        delta[rows_a], G[rows_a], ncc[rows_a] = d_a[better], G_a[better], ncc_a[better]
    ok = torch.isfinite(delta).all(-1) & (ncc >= cfg.min_ncc)
    ok &= delta.norm(dim=-1) <= cfg.max_shift * levels[0].step
    gap = torch.from_numpy(np.abs(frames[fi[live]] - int(t0)).astype(np.float32))  # the prior is t0's (none)
    ok &= delta.norm(dim=-1) <= (cfg.max_jump + cfg.jump_rate * gap) * levels[0].step
    okn = ok.numpy()
    fl, pl = fi[live], pi[live]
    total = delta.numpy()[okn].astype(np.float64)
    out[fl[okn], pl[okn]] = pred[fl[okn], pl[okn]] + total
    accepted[fl[okn], pl[okn]] = True
    ncc_out[fl, pl] = ncc.numpy()
    shift_out[fl[okn], pl[okn]] = np.linalg.norm(total, axis=-1)
    return Refined(out, accepted, ncc_out, shift_out)


#: frames between the links of a chain of matches (:func:`chain_parent`)
CHAIN_STRIDE = 8


def chain_parent(t: int, t0: int, stride: int = CHAIN_STRIDE) -> int | None:
    """The frame whose correction starts frame t's match: the nearest multiple of ``stride``
    frames from t0 strictly between t0 and t (None within ``stride`` of t0).

    Why: the mapping's drift grows with the distance from the exact frame (5-10 px on a
    turning object 20-47 frames away), beyond one search range; started from the correction
    ``stride`` frames nearer it stays within it. Fixed steps from t0 keep the result the same
    whatever order frames are rendered in (a preview jumps around; each step is cached).
    """
    d = int(t) - int(t0)
    if abs(d) <= stride:
        return None
    return int(t0) + int(np.sign(d)) * ((abs(d) - 1) // stride) * stride


def chain_ancestors(frames: np.ndarray, t0: int, stride: int = CHAIN_STRIDE) -> list[int]:
    """Every link frame that ``frames`` chain back through towards t0 (not in ``frames``)."""
    have = {int(t) for t in frames}
    out: set[int] = set()
    for t in have:
        p = chain_parent(t, t0, stride)
        while p is not None and p not in out:
            if p not in have:
                out.add(p)
            p = chain_parent(p, t0, stride)
    return sorted(out)


@dataclass
class Correction:
    """A smooth correction of where the mapping puts a surface in one frame: d(y) = A (y - c) + b.

    ``y`` are the positions (source px) the mapping gives; the surface really is at
    y + d(y). Affine because the mapping's drift is smooth over a region a user paints (a
    pixel or two across the frame, slowly varying): a translation plus a little scale,
    rotation and shear captures it with few anchors, and its inverse is exact (a renderer
    that looks up *where the content came from* needs y = (I + A)^-1 (p - b') for pixel p).
    """

    A: np.ndarray  # [2, 2]
    b: np.ndarray  # [2] correction at c
    c: np.ndarray  # [2] centre of the anchors
    n: int  # anchors it rests on
    inliers: np.ndarray | None = None  # [n_in] bool over the points given to fit_correction

    def at(self, y: np.ndarray) -> np.ndarray:
        """Correction d(y) at mapped positions y [..., 2]."""
        return (np.asarray(y, np.float64) - self.c) @ self.A.T + self.b

    def source_of(self, p: np.ndarray) -> np.ndarray:
        """The mapped position y whose content belongs at pixel position p (y + d(y) = p)."""
        M = np.eye(2) + self.A
        return (np.asarray(p, np.float64) - self.c - self.b) @ np.linalg.inv(M).T + self.c

    def max_shift(self, corners: np.ndarray) -> float:
        """Largest |d| over a convex region given by its corners [k, 2] (affine: at a corner)."""
        return float(np.linalg.norm(self.at(corners), axis=-1).max())


#: ridge weight of the linear part: a linear term of ``LINEAR_PRIOR`` (1 % scale or
#: rotation error) costs as much as ``ANCHOR_NOISE_PX`` of residual per anchor, so a
#: cluster of anchors a few pixels across (where noise would decide A) stays a translation
ANCHOR_NOISE_PX = 0.1
LINEAR_PRIOR = 0.01
#: anchors whose residual from the fit exceeds this many px (and 3 robust sigmas) are dropped
OUTLIER_PX = 0.5


def fit_correction(y: np.ndarray, d: np.ndarray, min_points: int = 1) -> Correction | None:
    """Robust affine fit d(y) of corrections ``d`` [n, 2] measured at mapped positions ``y`` [n, 2].

    None with fewer than ``min_points`` anchors (the caller keeps the mapping). One or two
    anchors give a translation (their median); more an affine map shrunk towards a
    translation by a ridge on its linear part (see ``LINEAR_PRIOR``) and refitted once
    without the anchors it explains worst (a match on a look-alike patch).
    """
    y = np.asarray(y, np.float64).reshape(-1, 2)
    d = np.asarray(d, np.float64).reshape(-1, 2)
    keep = np.isfinite(y).all(1) & np.isfinite(d).all(1)
    y, d = y[keep], d[keep]
    n = len(y)
    if n < max(1, min_points):
        return None

    def inl(m: np.ndarray) -> np.ndarray:
        out = np.zeros(len(keep), bool)
        out[np.flatnonzero(keep)[m]] = True
        return out

    if n < 3:
        return Correction(np.zeros((2, 2)), np.median(d, 0), y.mean(0), n, inl(np.ones(n, bool)))
    lam = (ANCHOR_NOISE_PX / LINEAR_PRIOR) ** 2
    # inliers first by the median translation: a few matches on a look-alike patch would
    # otherwise tilt the affine fit enough to hide themselves among its residuals
    res0 = np.linalg.norm(d - np.median(d, 0), axis=1)
    use = res0 <= max(2.0 * OUTLIER_PX, 3.0 * 1.4826 * np.median(res0))
    if use.sum() < 3:
        return Correction(np.zeros((2, 2)), np.median(d, 0), y.mean(0), n, inl(use))
    for it in range(3):
        c = y[use].mean(0)
        X = np.hstack([y[use] - c, np.ones((int(use.sum()), 1))])  # [m, 3]
        R = np.diag([lam, lam, 0.0])
        coef = np.linalg.solve(X.T @ X + R, X.T @ d[use])  # [3, 2]
        A, b = coef[:2].T, coef[2]
        if it == 2:
            break
        res = np.linalg.norm(d - ((y - c) @ A.T + b), axis=1)
        new = res <= max(OUTLIER_PX, 3.0 * 1.4826 * np.median(res[use]))
        if new.sum() < 3 or (new == use).all():
            break
        use = new
    return Correction(A, b, c, int(use.sum()), inl(use))


#: a match is vetted by up to this many nearest matches of the same frame (at least
#: CONSENSUS_MIN of them, within CONSENSUS_RADIUS of the frame's larger side)
CONSENSUS_K = 8
CONSENSUS_MIN = 3
CONSENSUS_RADIUS = 0.25


def drop_outliers(pred: np.ndarray, refined: Refined, size: tuple[int, int]) -> Refined:
    """``refined`` less the accepted matches whose correction disagrees with what the nearest
    other matches of the same frame agree on (their median correction; beyond OUTLIER_PX
    twice over and 3 robust sigmas of theirs); those keep the mapping's position and count
    as not matched. A match with fewer than CONSENSUS_MIN neighbours (within
    CONSENSUS_RADIUS of the frame ``size``'s larger side) is left alone.

    Why: the drift is smooth over a surface, and a point set drawn on one layer (a grid of
    tracks) measures it many times per frame. A patch cut by the frame border or half under
    an occluder can match a look-alike 2-5 px away at NCC 0.99; its neighbours' corrections
    give it away, and :func:`carry_corrections` would spread it to the frames around.
    Neighbours, not the whole frame: two objects on one layer drift apart.
    """
    out = Refined(refined.xy.copy(), refined.accepted.copy(), refined.ncc.copy(), refined.shift.copy())
    radius = CONSENSUS_RADIUS * float(max(size))
    for i in range(pred.shape[0]):
        acc = np.flatnonzero(refined.accepted[i])
        if len(acc) <= CONSENSUS_MIN:
            continue
        y, d = pred[i, acc], refined.xy[i, acc] - pred[i, acc]
        dist = np.linalg.norm(y[:, None] - y[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        bad = []
        for j in range(len(acc)):
            nb = np.argsort(dist[j])[:CONSENSUS_K]
            nb = nb[dist[j, nb] <= radius]
            if len(nb) < CONSENSUS_MIN:
                continue
            med = np.median(d[nb], 0)
            spread = 1.4826 * np.median(np.linalg.norm(d[nb] - med, axis=1))
            if np.linalg.norm(d[j] - med) > max(2.0 * OUTLIER_PX, 3.0 * spread):
                bad.append(acc[j])
        bad = np.asarray(bad, int)
        out.xy[i, bad] = pred[i, bad]
        out.accepted[i, bad] = False
        out.shift[i, bad] = 0.0
    return out


def carry_corrections(frames: np.ndarray, t0: int, pred: np.ndarray, refined: Refined) -> np.ndarray:
    """Positions [F, N, 2] where every frame not matched takes the correction its matched
    frames measured: interpolated in time between the nearest ones, the last one beyond them
    (zero at the drawing frame).

    Why: the mapping's drift changes smoothly in time (a few tenths of a pixel per frame),
    so the correction measured a frame or two away is a better position than the mapping's
    alone. It matters most where a point is not matched because its patch is cut by the
    frame border: the mapping's 0.4-1.6 px there decided which side of the border a track
    was (41 of the benchmark's 89 occlusion misses). Rows of ``pred`` that are not finite
    are left alone.
    """
    frames = np.asarray(frames, float)
    out = np.array(refined.xy, np.float64, copy=True)
    order = np.argsort(frames)
    fs = frames[order]
    for n in range(pred.shape[1]):
        acc = refined.accepted[order, n]
        fin = np.isfinite(pred[order, n]).all(-1)
        if not acc.any():
            continue
        d = refined.xy[order, n] - pred[order, n]
        tk = np.concatenate([fs[acc], [float(t0)]])
        dk = np.concatenate([d[acc], np.zeros((1, 2))])
        k = np.argsort(tk, kind="stable")
        tk, dk = tk[k], dk[k]
        todo = fin & ~acc & (fs != t0)
        if todo.any():
            fill = np.stack([np.interp(fs[todo], tk, dk[:, j]) for j in range(2)], -1)
            out[order[todo], n] = pred[order[todo], n] + fill
    return out


#: error of a refined position: this floor plus NCC shortfall times ``NCC_ERROR_PX``
REFINED_FLOOR_PX = 0.1
NCC_ERROR_PX = 2.0
#: drift assumed per frame of distance where no frame of a track could be matched and no
#: other point of the call either (else it is measured: :func:`drift_rate`)
DRIFT_PER_FRAME_PX = 0.05
#: accepted matches needed to measure the drift rate, and the quantile of it taken
RATE_MIN_SAMPLES = 8
RATE_QUANTILE = 75


def drift_rate(frames: np.ndarray, t0: int, refined: Refined) -> float:
    """How fast this mapping drifts away from the drawing frame, px per frame of distance.

    Measured by the accepted matches of all points of the call (same layer and drawing
    frame): the 75th percentile of correction / distance. Why not a constant: checked
    against the synthetic clip's truth, a fixed 0.05 px/frame put a short fit's background
    at 1.7 px 21-47 frames away where it was 0.4 px, and its turning disc at 1.7 px where it
    was 4.9 px; the matched points of the same surface know better.
    """
    d = np.abs(np.asarray(frames, float) - t0)[:, None] * np.ones_like(refined.shift)
    acc = refined.accepted & (d > 0)
    if acc.sum() < RATE_MIN_SAMPLES:
        return DRIFT_PER_FRAME_PX
    return float(np.percentile(refined.shift[acc] / d[acc], RATE_QUANTILE))


def error_estimate(frames: np.ndarray, t0: int, refined: Refined, cycle_px: np.ndarray) -> np.ndarray:
    """The engine's estimate of its own error at each position, source px [F, N] (confidence).

    Where a position was refined, the match itself measured the mapping's error there and
    what is left is the match's precision (a floor, more where the NCC is lower). Elsewhere
    the mapping's own error is what the accepted matches of the same track measured nearby
    (the drift is smooth in time: interpolated between them), or, for a track that could not
    be matched anywhere, a drift growing with the distance from the drawing frame at the rate
    the other points' matches measured (:func:`drift_rate`); the mapping's cycle error at the
    position is added.
    """
    frames = np.asarray(frames, float)
    F_, N = refined.accepted.shape
    err = np.zeros((F_, N))
    rate = drift_rate(frames, t0, refined)
    order = np.argsort(frames)
    for n in range(N):
        acc = refined.accepted[:, n]
        ncc = np.nan_to_num(refined.ncc[:, n], nan=0.0)
        here = REFINED_FLOOR_PX + NCC_ERROR_PX * np.clip(1.0 - ncc, 0.0, 1.0)
        if acc.any():
            fs = frames[order][acc[order]]
            drift = np.interp(frames, fs, refined.shift[order][acc[order], n])
            # beyond the last match the drift keeps growing
            gap = np.maximum(fs.min() - frames, 0) + np.maximum(frames - fs.max(), 0)
            drift = drift + rate * gap
        else:
            drift = rate * np.abs(frames - t0)
        err[:, n] = np.where(acc, here, drift + np.nan_to_num(cycle_px[:, n], nan=10.0))
        err[frames == t0, n] = np.minimum(err[frames == t0, n], np.nan_to_num(cycle_px[frames == t0, n], nan=0.0))
    return err


__all__ = ["RefineConfig", "Refined", "Level", "refine_positions", "refine_independent", "grey", "error_estimate",
           "carry_corrections", "drop_outliers", "drift_rate", "Correction",
           "fit_correction", "CHAIN_STRIDE", "chain_parent", "chain_ancestors"]

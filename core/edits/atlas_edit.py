"""Raster edits in atlas space: frame image -> atlas texture -> every frame.

A raster edit drawn over one frame (paint, a deformable sticker, an adjustment region) is
pulled into the atlas of a layer once: every atlas texel asks the inverse mapping where it
appears in the drawing frame and samples the image there, but only texels really *seen*
in that frame keep it (inside the frame, cycle-consistent with the baked forward map, and
for the background not under the foreground). Each output frame then looks the texture
up at its baked uv map -- no network per pixel, and only inside the rectangle of the frame
whose uv falls on the texture's non-empty part.

The baked uv maps drift where the mapping drifts (a pixel or two, 20-48 frames from the
drawing frame), so each texture also carries a few *anchors*: textured surface points inside
(and just around) the edit's region in the frame where it is exact. Per frame they are
found in the pixels by the same refinement as strokes and tracks (core/refine.py), an affine
correction is fitted to their shifts, and the texture lookup is warped by it
(:func:`texture_correction`): the paint lands where the surface really is. Where no anchor
can be matched (hidden, flat, poor match) the frame keeps the mapping's placement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.edits.context import Box, RenderContext
from core.layers import shows
from core.refine import Correction, chain_parent, fit_correction


FULL_RECT = (-1.0, -1.0, 1.0, 1.0)


@dataclass
class AtlasTexture:
    """Premultiplied atlas-space channels of one layer (alpha or mask last) over a uv rectangle.

    A texture covers only ``rect`` (u0, v0, u1, v1) of the atlas, at about 1.25 texels per
    source pixel: an edit touching a small part of a large atlas stays small and fast.
    """

    layer: str
    tex: torch.Tensor  # [C, Rh, Rw], texel centres at u0 + (i + 0.5)(u1 - u0)/Rw
    rect: tuple[float, float, float, float]
    bounds: tuple[float, float, float, float] | None  # u0, v0, u1, v1 of the non-empty part
    t0: int | None = None  # the frame it was drawn over (exact there); None: painted on the atlas
    #: anchors for drift correction (:func:`texture_anchors`), built on first use; False: none
    anchors: Any = None
    corrections: dict[int, Correction | None] = field(default_factory=dict)  # per frame, cached

    @classmethod
    def from_tensor(cls, layer: str, tex: torch.Tensor,
                    rect: tuple[float, float, float, float] = FULL_RECT, t0: int | None = None) -> "AtlasTexture":
        Rh, Rw = tex.shape[-2:]
        nz = (tex[-1] > 1e-4).nonzero()
        if len(nz) == 0:
            return cls(layer, tex, rect, None, t0)
        (r0, c0), (r1, c1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        u0, v0, u1, v1 = rect
        du, dv = (u1 - u0) / Rw, (v1 - v0) / Rh
        # texel i spans [u0 + i du, u0 + (i+1) du]; one texel of slack for bilinear lookups
        return cls(layer, tex, rect, (u0 + (c0 - 1) * du, v0 + (r0 - 1) * dv, u0 + (c1 + 2) * du, v0 + (r1 + 2) * dv),
                   t0)

    def grid(self, uv: torch.Tensor) -> torch.Tensor:
        """grid_sample coordinates of atlas uv [..., 2] in this texture."""
        u0, v0, u1, v1 = self.rect
        return (uv - torch.tensor([u0, v0])) * torch.tensor([2.0 / (u1 - u0), 2.0 / (v1 - v0)]) - 1.0


def edit_rect(ctx: RenderContext, layer: str, t: int, coverage: torch.Tensor) -> tuple[float, float, float, float] | None:
    """uv rectangle of ``layer`` that frame t shows under the covered pixels (plus a margin)."""
    ys, xs = torch.nonzero(coverage > 1e-4, as_tuple=True)
    if len(xs) == 0:
        return None
    x0, y0 = max(0, int(xs.min()) - 2), max(0, int(ys.min()) - 2)
    x1, y1 = min(ctx.W, int(xs.max()) + 3), min(ctx.H, int(ys.max()) + 3)
    box = (x0, y0, x1, y1)
    uv = ctx.uv_box(layer, t, box)
    cov = F.max_pool2d(coverage[None, None, y0:y1, x0:x1].float(), 3, 1, padding=1)[0, 0] > 1e-4
    if ctx.has_fg:
        a = torch.from_numpy(ctx.alpha_box(t, box))
        cov &= shows(layer, a, slack=0.05)
    if not bool(cov.any()):
        return None
    sel = uv[cov]
    m = 4.0 / ctx.px_per_uv(layer)
    lo, hi = sel.min(0).values - m, sel.max(0).values + m
    lo, hi = torch.clamp(lo, -1.0, 1.0), torch.clamp(hi, -1.0, 1.0)
    if bool((hi <= lo).any()):
        return None
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def texels_seen(ctx: RenderContext, layer: str, t: int, rect: tuple[float, float, float, float],
                Rw: int, Rh: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[Rh, Rw] bool: the texels of an Rh x Rw grid over uv ``rect`` that frame t shows on
    ``layer`` (inside the frame, cycle-consistent with the baked forward map, on its layer),
    and the grid_sample grid [1, Rh, Rw, 2] of where they lie in the frame. One test for
    pulling a drawing into the atlas and for carrying it over a segment seam, so the two
    meet without a gap or an overlap."""
    xy = ctx.inverse_rect(layer, t, rect, Rw, Rh)  # [2, Rh, Rw]
    x, y = xy[0], xy[1]
    inside = (x >= 0) & (x < ctx.W) & (y >= 0) & (y < ctx.H)
    grid = torch.stack([x * (2.0 / ctx.W) - 1.0, y * (2.0 / ctx.H) - 1.0], -1)[None]  # [1, Rh, Rw, 2]
    # cycle test against the baked forward map (no network): uv(inverse(uv)) ~ uv
    back = F.grid_sample(ctx.uv_map(layer, t), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]
    u0, v0, u1, v1 = rect
    cu = u0 + (torch.arange(Rw, dtype=torch.float32) + 0.5) * (u1 - u0) / Rw
    cv = v0 + (torch.arange(Rh, dtype=torch.float32) + 0.5) * (v1 - v0) / Rh
    err = torch.sqrt((back[0] - cu[None, :]) ** 2 + (back[1] - cv[:, None]) ** 2) * ctx.px_per_uv(layer)
    seen = inside & (err < ctx.CYCLE_TOL_PX)
    if ctx.has_fg:
        a = F.grid_sample(ctx.alpha_map(t), grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        seen &= shows(layer, a)
    return seen, grid


def frame_to_atlas(ctx: RenderContext, layer: str, t: int, image: torch.Tensor) -> AtlasTexture:
    """Pull a premultiplied [C, H, W] source-size image drawn over frame t into ``layer``'s atlas.

    The last channel is the coverage (alpha or mask); texels not seen at frame t get zero.
    """
    rect = edit_rect(ctx, layer, t, image[-1])
    if rect is None:
        return AtlasTexture(layer, torch.zeros(image.shape[0], 1, 1), FULL_RECT, None, t)
    u0, v0, u1, v1 = rect
    density = ctx.px_per_uv(layer) * ctx.TEXELS_PER_PX
    Rw = int(np.clip(np.ceil((u1 - u0) * density), 4, ctx.MAX_TEXTURE))
    Rh = int(np.clip(np.ceil((v1 - v0) * density), 4, ctx.MAX_TEXTURE))
    seen, grid = texels_seen(ctx, layer, t, rect, Rw, Rh)
    tex = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    tex = tex * seen.float()[None]
    return AtlasTexture.from_tensor(layer, tex, rect, t0=t)


def texture_box(ctx: RenderContext, tex: AtlasTexture, t: int) -> Box | None:
    """Rectangle of frame t (source px) whose uv can land on the texture's non-empty part."""
    if tex.bounds is None:
        return None
    S = ctx.SCAN_STRIDE
    sx, sy = ctx.W / ctx.w, ctx.H / ctx.h
    # scan every S-th work pixel; widen the bounds by what uv can change between samples
    # (S + 2 work pixels at twice the typical scale), so nothing is missed where uv is smooth
    m = 2.0 * (S + 2) * max(sx, sy) / ctx.px_per_uv(tex.layer)
    u0, v0, u1, v1 = tex.bounds
    uv = ctx.maps.uv[tex.layer][t, ::S, ::S]
    u, v = uv[..., 0], uv[..., 1]
    hit = (u >= u0 - m) & (u <= u1 + m) & (v >= v0 - m) & (v <= v1 + m)
    rows = np.flatnonzero(hit.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(hit.any(0))
    x0 = max(0, int(np.floor((cols[0] * S - S) * sx)) - 1)
    y0 = max(0, int(np.floor((rows[0] * S - S) * sy)) - 1)
    x1 = min(ctx.W, int(np.ceil((cols[-1] * S + S + 1) * sx)) + 1)
    y1 = min(ctx.H, int(np.ceil((rows[-1] * S + S + 1) * sy)) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def sample_texture(ctx: RenderContext, tex: AtlasTexture, t: int,
                   correct: bool | None = None) -> tuple[Box, np.ndarray] | None:
    """Look the texture up at frame t's uv: (box, [h, w, C] premultiplied), occlusion applied.

    ``correct`` (default: the context's ``refine_enabled``): warp the lookup by the frame's
    drift correction (:func:`texture_correction`).
    """
    box = texture_box(ctx, tex, t)
    if box is None:
        return None
    corr = texture_correction(ctx, tex, t) if (ctx.refine_enabled if correct is None else correct) else None
    if corr is not None:
        x0, y0, x1, y1 = box
        shift = corr.max_shift(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64))
        if shift < MIN_SHIFT_PX:
            corr = None
        else:
            m = int(np.ceil(shift)) + 1
            box = (max(0, x0 - m), max(0, y0 - m), min(ctx.W, x1 + m), min(ctx.H, y1 + m))
    uv = ctx.uv_box(tex.layer, t, box) if corr is None else corrected_uv_box(ctx, tex.layer, t, box, corr)
    out = F.grid_sample(tex.tex[None], tex.grid(uv)[None], mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    w = ctx.occlusion_weight(tex.layer, t, box)
    vals = out.permute(1, 2, 0).numpy() * w[..., None]
    if vals[..., -1].max() <= 1e-4:
        return None
    return box, vals


# -- drift correction ----------------------------------------------------------------------
#: anchors matched per texture and frame: the correction is smooth, a few dozen pin it down
#: and cost one batched refinement call (about as much as one stroke)
ANCHORS = 24
#: anchors may lie this far (source px) around the edit's region: a thin painted line still
#: gets textured anchors beside it, and the drift does not change over a few pixels
ANCHOR_MARGIN_PX = 8.0
#: anchors are many and only the correction's consensus matters: keep only clear matches
ANCHOR_MIN_NCC = 0.9
#: a correction smaller than this everywhere in the box is not applied (the lookup stays a slice)
MIN_SHIFT_PX = 0.02
#: Newton steps that find where the baked uv map puts a texel (the inverse network only starts it)
PREIMAGE_ITERS = 3


@dataclass
class TextureAnchors:
    """Surface points of one texture whose true position per frame refinement can find."""

    t0: int  # the frame where their positions are exact
    x0: np.ndarray  # [K, 2] positions at t0, source px
    uv: np.ndarray  # [K, 2] the texels holding their content
    start: np.ndarray | None  # [T, K, 2] the inverse mapping's positions (start of the baked preimage)
    ok: np.ndarray | None  # [T, K] cycle-consistent there (None: found per frame in the baked map)


def baked_preimage(ctx: RenderContext, layer: str, t: int, uv: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Where frame t's baked uv map takes the values ``uv`` [K, 2]: source px [K, 2].

    Why not the inverse network's answer: the renderer looks textures up at the baked
    forward map, and where that and the inverse network disagree (cycle error, baking) the
    paint sits at the baked map's place; the correction must be measured from there.
    """
    y = np.array(start, np.float64, copy=True)
    fin = np.isfinite(y).all(1)
    if not fin.any():
        return y
    yy = y[fin]
    for _ in range(PREIMAGE_ITERS):
        r = ctx.uv_at(layer, t, yy).astype(np.float64) - uv[fin]
        J = ctx._uv_jacobian(layer, t, yy)
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        good = np.abs(det) > 1e-12
        step = np.zeros_like(yy)
        Jg, rg, dg = J[good], r[good], det[good][:, None]
        step[good] = np.stack([Jg[:, 1, 1] * rg[:, 0] - Jg[:, 0, 1] * rg[:, 1],
                               -Jg[:, 1, 0] * rg[:, 0] + Jg[:, 0, 0] * rg[:, 1]], -1) / dg
        yy = yy - np.clip(step, -4.0, 4.0)
    y[fin] = yy
    return y


def reference_frame(ctx: RenderContext, tex: AtlasTexture) -> int | None:
    """For a texture painted on the atlas: the frame that shows most of its region.

    The correction then keeps every frame consistent with that one (no slide relative to
    the frame where most of the paint is seen), as the drawing frame does for paint.
    """
    if tex.bounds is None:
        return None
    S = ctx.SCAN_STRIDE
    u0, v0, u1, v1 = tex.bounds
    frames = np.unique(np.linspace(0, ctx.T - 1, min(ctx.T, 64)).round().astype(int))
    best, best_n = None, 0
    for t in frames:
        uv = np.asarray(ctx.maps.uv[tex.layer][t, ::S, ::S], np.float32)
        hit = (uv[..., 0] >= u0) & (uv[..., 0] <= u1) & (uv[..., 1] >= v0) & (uv[..., 1] <= v1)
        if ctx.has_fg:
            hit &= shows(tex.layer, np.asarray(ctx.maps.alpha[t, ::S, ::S], np.float32))
        n = int(hit.sum())
        if n > best_n:
            best, best_n = int(t), n
    return best


def pick_anchors(ctx: RenderContext, layer: str, t: int, box: Box, region: np.ndarray, k: int = ANCHORS) -> np.ndarray:
    """Up to ``k`` well-spread, textured points [n, 2] of frame t in ``region`` (a mask over ``box``).

    The region is grown by ANCHOR_MARGIN_PX and limited to where ``layer`` shows; the box is
    cut into about 2k cells, each offers its most textured pixel (smallest eigenvalue of the
    structure tensor), and the k best offers win.
    """
    import cv2  # noqa: PLC0415

    x0, y0, x1, y1 = box
    m = int(np.ceil(ANCHOR_MARGIN_PX))
    X0, Y0, X1, Y1 = max(0, x0 - m), max(0, y0 - m), min(ctx.W, x1 + m), min(ctx.H, y1 + m)
    big = np.zeros((Y1 - Y0, X1 - X0), np.uint8)
    big[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = region
    big = cv2.dilate(big, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * m + 1, 2 * m + 1))) > 0
    if ctx.has_fg:
        big &= np.asarray(shows(layer, ctx.alpha_box(t, (X0, Y0, X1, Y1))))
    edge = 2
    big[:edge], big[-edge:], big[:, :edge], big[:, -edge:] = False, False, False, False
    ys, xs = np.nonzero(big)
    if len(xs) == 0:
        return np.zeros((0, 2))
    g = ctx.levels()[-1].image(t)[0, 0, Y0:Y1, X0:X1].numpy()
    score = cv2.cornerMinEigenVal(np.ascontiguousarray(g), 5, 3)[ys, xs]
    cell = max(2.0, float(np.sqrt(len(xs) / (2.0 * k))))
    cid = (ys // cell).astype(np.int64) * 100003 + (xs // cell).astype(np.int64)
    order = np.lexsort((-score, cid))  # by cell, best first within each
    first = order[np.r_[True, cid[order][1:] != cid[order][:-1]]]
    win = first[np.argsort(-score[first])][:k]
    win = win[score[win] > 0]
    return np.stack([xs[win] + X0 + 0.5, ys[win] + Y0 + 0.5], -1).astype(np.float64)


def texture_anchors(ctx: RenderContext, tex: AtlasTexture) -> TextureAnchors | None:
    """Anchors of ``tex`` (built once): picked where its region shows in its exact frame.

    Each anchor's texel is the one whose content came from it: for paint drawn over frame
    t0 the texture holds image(B(u, t0)) (the inverse network), so u is the root of
    B(u, t0) = x0 (one Newton step from the forward map's answer); for a texture painted on
    the atlas, the reference frame's baked uv.
    """
    t0 = tex.t0 if tex.t0 is not None else reference_frame(ctx, tex)
    if t0 is None:
        return None
    res = sample_texture(ctx, tex, t0, correct=False)
    if res is None:
        return None
    box, vals = res
    region = (vals[..., -1] > 0.1).astype(np.uint8)
    x0 = pick_anchors(ctx, tex.layer, t0, box, region)
    if len(x0) == 0:
        return None
    L = tex.layer
    u = ctx.uv_at(L, t0, x0).astype(np.float64)
    if tex.t0 is None:
        # painted on the atlas: no networks needed (an atlas-only stack never loads them);
        # each frame finds its anchors in its own baked map (:func:`baked_search`)
        return TextureAnchors(t0, x0, u, None, None)
    xa = np.asarray(ctx.mapping.inverse(L, u, np.full(len(u), float(t0))), np.float64)
    J = ctx._uv_jacobian(L, t0, x0)
    u = u - np.einsum("nij,nj->ni", J, xa - x0)
    _, start, ok = ctx.propagate(L, x0, t0, uv=u, refine=False)
    return TextureAnchors(t0, x0, u, start, ok)


#: a texel found in a frame's baked map farther than this (in scan samples) from its uv is not there
SEARCH_TOL = 1.5


def baked_search(ctx: RenderContext, layer: str, t: int, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where frame t's baked uv map comes nearest to each of ``uv`` [K, 2] on pixels showing
    ``layer``: (source positions [K, 2], found [K] bool); a start for :func:`baked_preimage`
    without the inverse network. Scans every SCAN_STRIDE-th work pixel."""
    S = ctx.SCAN_STRIDE
    m = np.asarray(ctx.maps.uv[layer][t, ::S, ::S], np.float32)  # [h', w', 2]
    hs, ws = m.shape[:2]
    flat = m.reshape(-1, 2)
    d2 = ((flat[None, :, :] - uv[:, None, :].astype(np.float32)) ** 2).sum(-1)  # [K, h' w']
    if ctx.has_fg:
        shown = np.asarray(shows(layer, np.asarray(ctx.maps.alpha[t, ::S, ::S], np.float32))).reshape(-1)
        d2[:, ~shown] = np.inf
    i = np.argmin(d2, axis=1)
    sx, sy = ctx.W / ctx.w, ctx.H / ctx.h
    xy = np.stack([((i % ws) * S + 0.5) * sx, ((i // ws) * S + 0.5) * sy], -1)
    tol = SEARCH_TOL * S * max(sx, sy) / ctx.px_per_uv(layer)
    found = np.sqrt(d2[np.arange(len(uv)), i]) <= tol
    return xy, found


def texture_correction(ctx: RenderContext, tex: AtlasTexture, t: int) -> Correction | None:
    """Frame t's drift correction of ``tex`` (cached per frame), or None (keep the mapping).

    The anchors' baked positions in frame t are refined against their appearance in the
    exact frame (visible ones only: core/refine.py applies core.layers' rule); where fewer
    than ``CHAIN_BELOW`` of them match far from it, again from the correction of its chain
    link (:func:`core.refine.chain_parent`, cached like every frame's), and the better kept.
    The accepted shifts give an affine correction (:func:`core.refine.fit_correction`). In
    the exact frame itself the shift is known without matching (the anchor's own position).
    """
    if t not in tex.corrections:
        settle_corrections(ctx, tex, [t])
    return tex.corrections[t]


def settle_corrections(ctx: RenderContext, tex: AtlasTexture, frames: Any) -> None:
    """:func:`texture_correction` of ``tex`` at every frame of ``frames`` not corrected yet,
    with the same numbers, the frames' matches in one refinement call (and their second
    matches from the chain links in one more per chain depth).

    Why: a render worker renders a block of consecutive frames; one call over the block's
    frames costs ~25 % less CPU per match than a call per frame, and every frame's result
    is that of a call for it alone (core.refine.refine_independent). A frame's chain link
    may lie in the block (a multiple of CHAIN_STRIDE from the exact frame): it is finished
    first, the frames that start from it after.
    """
    todo = sorted({int(t) for t in frames if int(t) not in tex.corrections})
    if not todo:
        return
    if tex.anchors is None:
        tex.anchors = texture_anchors(ctx, tex) or False
    a = tex.anchors
    if not a:
        for t in todo:
            tex.corrections[t] = None
        return
    ctx.chain(("texture", id(tex)), a.t0)
    if a.t0 in todo:
        todo.remove(a.t0)
        y = baked_preimage(ctx, tex.layer, a.t0, a.uv, a.x0)
        tex.corrections[a.t0] = fit_correction(y, a.x0 - y) if tex.t0 is not None else None
    if not todo:
        return
    ys, oks = {}, {}
    for t in todo:
        if a.start is None:
            start_t, oks[t] = baked_search(ctx, tex.layer, t, a.uv)
        else:
            start_t, oks[t] = a.start[t], a.ok[t]
        ys[t] = baked_preimage(ctx, tex.layer, t, a.uv, start_t)

    def match(frames_: list[int], starts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        r = ctx.refine(tex.layer, a.x0, a.t0, np.asarray(frames_, int), np.stack(starts),
                       np.stack([oks[t] for t in frames_]), independent=True)
        return [(r.accepted[i] & (np.nan_to_num(r.ncc[i]) >= ANCHOR_MIN_NCC), r.xy[i]) for i in range(len(frames_))]

    parents = {t: chain_parent(t, a.t0) for t in todo}
    direct = {t for t in todo if ctx.CHAIN_BELOW is not None or parents[t] is None}
    found = {t: (np.zeros(len(ys[t]), bool), ys[t]) for t in todo}
    order = sorted(direct)
    if order:
        found.update(zip(order, match(order, [ys[t] for t in order])))
    pending = set(todo)
    while pending:
        wave = sorted(t for t in pending if parents[t] not in pending)  # links first: nearer t0
        again = []
        for t in wave:
            parent, y, acc = parents[t], ys[t], found[t][0]
            n_ok = int((oks[t] & np.isfinite(y).all(-1)).sum())
            if parent is not None and n_ok and (t not in direct or acc.sum() < ctx.CHAIN_BELOW * n_ok):
                prior = texture_correction(ctx, tex, parent)
                # matched again only where the direct match falls clearly short of what the
                # link itself matched: anchors that are flat, hidden or poor at every start
                # fail either way (measured on box.mp4: the second match won 8 of 80 frames,
                # by one anchor; it doubled the refinement of every far frame)
                if prior is not None and (t not in direct or acc.sum() < ctx.CHAIN_BELOW * matched(prior)):
                    again.append((t, y + prior.at(y)))
        if again:
            for (t, _), (acc2, xy2) in zip(again, match([t for t, _ in again], [p for _, p in again])):
                if acc2.sum() > found[t][0].sum():
                    found[t] = (acc2, xy2)
        for t in wave:
            acc, xy = found[t]
            tex.corrections[t] = fit_correction(ys[t][acc], (xy - ys[t])[acc])
        pending.difference_update(wave)


def settle_textures(ctx: RenderContext, textures: Any, frames: Any) -> None:
    """What :func:`sample_texture` at each of ``frames`` would find of ``textures``' drift
    corrections, found now (:func:`settle_corrections`): only at frames whose box shows the
    texture, as sampling would."""
    if not ctx.refine_enabled:
        return
    for tex in textures or ():
        settle_corrections(ctx, tex, [int(t) for t in frames
                                      if int(t) not in tex.corrections and texture_box(ctx, tex, int(t)) is not None])


def matched(corr: Correction) -> int:
    """How many matched anchors a correction was fitted to (its inliers and outliers)."""
    return len(corr.inliers) if corr.inliers is not None else corr.n


def corrected_uv_box(ctx: RenderContext, layer: str, t: int, box: Box, corr: Correction) -> torch.Tensor:
    """Atlas uv for the pixels of ``box`` at frame t, looked up where the correction says their
    content was mapped: uv_t(y) with y + d(y) = pixel. [h, w, 2].

    The correction is affine, so y is an affine function of the pixel: built by broadcasting
    in float32 (a 1080p box costs what the uncorrected lookup's grid does).
    """
    x0, y0, x1, y1 = box
    Mi = np.linalg.inv(np.eye(2) + corr.A)
    k = corr.c - Mi @ (corr.c + corr.b)  # y = Mi p + k
    px = torch.arange(x0, x1, dtype=torch.float32) + 0.5
    py = torch.arange(y0, y1, dtype=torch.float32) + 0.5
    sx = float(Mi[0, 0]) * px[None, :] + (float(Mi[0, 1]) * py[:, None] + float(k[0]))
    sy = float(Mi[1, 0]) * px[None, :] + (float(Mi[1, 1]) * py[:, None] + float(k[1]))
    # the map's outermost samples sit half a work pixel inside the frame; beyond them the
    # uv is extended linearly (a corrected lookup near the border reads content the mapping
    # put just outside the frame: clamping would smear the border row over it)
    lx, ly = 0.5 * ctx.W / ctx.w, 0.5 * ctx.H / ctx.h
    cx, cy = sx.clamp(lx, ctx.W - lx), sy.clamp(ly, ctx.H - ly)
    grid = torch.stack([cx * (2.0 / ctx.W) - 1.0, cy * (2.0 / ctx.H) - 1.0], -1)[None]
    out = F.grid_sample(ctx.uv_map(layer, t), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    out = out.permute(1, 2, 0).contiguous()
    outside = ((sx != cx) | (sy != cy)).reshape(-1).nonzero()[:, 0]
    if len(outside):
        c = torch.stack([cx.reshape(-1)[outside], cy.reshape(-1)[outside]], -1).cpu().numpy().astype(np.float64)
        src = torch.stack([sx.reshape(-1)[outside], sy.reshape(-1)[outside]], -1).cpu().numpy().astype(np.float64)
        inward = c + np.sign(np.array([ctx.W, ctx.H]) / 2.0 - c) * np.array([lx, ly])  # one work pixel further in
        J = ctx._uv_jacobian(layer, t, inward)  # [n, 2, 2]
        ext = np.einsum("nij,nj->ni", J, src - c)
        out.view(-1, 2)[outside] += torch.from_numpy(ext.astype(np.float32))
    return out


def premultiply(rgba: np.ndarray) -> torch.Tensor:
    """Straight RGBA [H, W, 4] -> premultiplied [4, H, W] tensor."""
    t = torch.from_numpy(np.ascontiguousarray(rgba, np.float32)).permute(2, 0, 1).clone()
    t[:3] *= t[3:4]
    return t

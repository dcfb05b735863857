"""Raster edits in atlas space: frame image -> atlas texture -> every frame.

A raster edit drawn over one frame (paint, a deformable sticker, an adjustment region) is
pulled into the atlas of a layer once: every atlas texel asks the inverse mapping where it
appears in the drawing frame and samples the image there, but only texels really *seen*
in that frame keep it (inside the frame, cycle-consistent with the baked forward map, and
for the background not under the foreground). Each output frame then looks the texture
up at its baked uv map -- no network per pixel, and only inside the rectangle of the frame
whose uv falls on the texture's non-empty part.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.edits.context import Box, RenderContext
from core.layers import shows


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

    @classmethod
    def from_tensor(cls, layer: str, tex: torch.Tensor,
                    rect: tuple[float, float, float, float] = FULL_RECT) -> "AtlasTexture":
        Rh, Rw = tex.shape[-2:]
        nz = (tex[-1] > 1e-4).nonzero()
        if len(nz) == 0:
            return cls(layer, tex, rect, None)
        (r0, c0), (r1, c1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        u0, v0, u1, v1 = rect
        du, dv = (u1 - u0) / Rw, (v1 - v0) / Rh
        # texel i spans [u0 + i du, u0 + (i+1) du]; one texel of slack for bilinear lookups
        return cls(layer, tex, rect, (u0 + (c0 - 1) * du, v0 + (r0 - 1) * dv, u0 + (c1 + 2) * du, v0 + (r1 + 2) * dv))

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


def frame_to_atlas(ctx: RenderContext, layer: str, t: int, image: torch.Tensor) -> AtlasTexture:
    """Pull a premultiplied [C, H, W] source-size image drawn over frame t into ``layer``'s atlas.

    The last channel is the coverage (alpha or mask); texels not seen at frame t get zero.
    """
    rect = edit_rect(ctx, layer, t, image[-1])
    if rect is None:
        return AtlasTexture(layer, torch.zeros(image.shape[0], 1, 1), FULL_RECT, None)
    u0, v0, u1, v1 = rect
    density = ctx.px_per_uv(layer) * ctx.TEXELS_PER_PX
    Rw = int(np.clip(np.ceil((u1 - u0) * density), 4, ctx.MAX_TEXTURE))
    Rh = int(np.clip(np.ceil((v1 - v0) * density), 4, ctx.MAX_TEXTURE))
    xy = ctx.inverse_rect(layer, t, rect, Rw, Rh)  # [2, Rh, Rw]
    x, y = xy[0], xy[1]
    inside = (x >= 0) & (x < ctx.W) & (y >= 0) & (y < ctx.H)
    grid = torch.stack([x * (2.0 / ctx.W) - 1.0, y * (2.0 / ctx.H) - 1.0], -1)[None]  # [1, Rh, Rw, 2]
    # cycle test against the baked forward map (no network): uv(inverse(uv)) ~ uv
    back = F.grid_sample(ctx.uv_map(layer, t), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]
    cu = u0 + (torch.arange(Rw, dtype=torch.float32) + 0.5) * (u1 - u0) / Rw
    cv = v0 + (torch.arange(Rh, dtype=torch.float32) + 0.5) * (v1 - v0) / Rh
    err = torch.sqrt((back[0] - cu[None, :]) ** 2 + (back[1] - cv[:, None]) ** 2) * ctx.px_per_uv(layer)
    seen = inside & (err < ctx.CYCLE_TOL_PX)
    if ctx.has_fg:
        a = F.grid_sample(ctx.alpha_map(t), grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        seen &= shows(layer, a)
    tex = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    tex = tex * seen.float()[None]
    return AtlasTexture.from_tensor(layer, tex, rect)


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


def sample_texture(ctx: RenderContext, tex: AtlasTexture, t: int) -> tuple[Box, np.ndarray] | None:
    """Look the texture up at frame t's uv: (box, [h, w, C] premultiplied), occlusion applied."""
    box = texture_box(ctx, tex, t)
    if box is None:
        return None
    uv = ctx.uv_box(tex.layer, t, box)
    out = F.grid_sample(tex.tex[None], tex.grid(uv)[None], mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    w = ctx.occlusion_weight(tex.layer, t, box)
    vals = out.permute(1, 2, 0).numpy() * w[..., None]
    if vals[..., -1].max() <= 1e-4:
        return None
    return box, vals


def premultiply(rgba: np.ndarray) -> torch.Tensor:
    """Straight RGBA [H, W, 4] -> premultiplied [4, H, W] tensor."""
    t = torch.from_numpy(np.ascontiguousarray(rgba, np.float32)).permute(2, 0, 1).clone()
    t[:3] *= t[3:4]
    return t

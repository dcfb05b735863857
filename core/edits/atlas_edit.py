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


@dataclass
class AtlasTexture:
    """Premultiplied atlas-space channels of one layer (alpha or mask last)."""

    layer: str
    tex: torch.Tensor  # [C, R, R]
    bounds: tuple[float, float, float, float] | None  # u0, v0, u1, v1 of the non-empty part

    @classmethod
    def from_tensor(cls, layer: str, tex: torch.Tensor) -> "AtlasTexture":
        R = tex.shape[-1]
        nz = (tex[-1] > 1e-4).nonzero()
        if len(nz) == 0:
            return cls(layer, tex, None)
        (r0, c0), (r1, c1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        # texel i spans uv [2i/R - 1, 2(i+1)/R - 1]; one texel of slack for bilinear lookups
        return cls(layer, tex, (2 * (c0 - 1) / R - 1, 2 * (r0 - 1) / R - 1, 2 * (c1 + 2) / R - 1, 2 * (r1 + 2) / R - 1))


def frame_to_atlas(ctx: RenderContext, layer: str, t: int, image: torch.Tensor, res: int | None = None) -> AtlasTexture:
    """Pull a premultiplied [C, H, W] source-size image drawn over frame t into ``layer``'s atlas.

    The last channel is the coverage (alpha or mask); texels not seen at frame t get zero.
    """
    R = res or ctx.texture_res(layer)
    xy = ctx.inverse_grid(layer, t, R)  # [2, R, R]
    x, y = xy[0], xy[1]
    inside = (x >= 0) & (x < ctx.W) & (y >= 0) & (y < ctx.H)
    grid = torch.stack([x * (2.0 / ctx.W) - 1.0, y * (2.0 / ctx.H) - 1.0], -1)[None]  # [1, R, R, 2]
    # cycle test against the baked forward map (no network): uv(inverse(uv)) ~ uv
    back = F.grid_sample(ctx._uv[layer][t:t + 1], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]
    c = (torch.arange(R, dtype=torch.float32) + 0.5) * 2.0 / R - 1.0
    err = torch.sqrt((back[0] - c[None, :]) ** 2 + (back[1] - c[:, None]) ** 2) * ctx.px_per_uv(layer)
    seen = inside & (err < ctx.CYCLE_TOL_PX)
    if ctx.has_fg:
        a = F.grid_sample(ctx._alpha[t:t + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        seen &= (a > 0.5) if layer == "fg" else (a <= 0.5)
    tex = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    tex = tex * seen.float()[None]
    return AtlasTexture.from_tensor(layer, tex)


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
    out = F.grid_sample(tex.tex[None], uv[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]
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

"""Paint-like layers: a paint image, a painted atlas, an adjustment region.

All three end up as atlas-space textures (see :mod:`core.edits.atlas_edit`) and are looked
up per frame at the baked uv maps. Without an explicit ``layer`` a frame-space edit is
split per pixel: what covers the foreground at the drawing frame goes to the foreground
atlas, the rest to the background atlas.
"""
from __future__ import annotations

import abc

import cv2
import numpy as np
import torch

from core.edits.adjust import adjust_colors
from core.edits.atlas_edit import AtlasTexture, frame_to_atlas, premultiply, sample_texture
from core.edits.context import Patch, RenderContext
from core.edits.raster import polygon_mask
from core.edits.spec import AdjustLayer, AtlasLayer, PaintLayer

ATLAS_DIFF_THRESHOLD = 8.0 / 255.0


def target_layers(ctx: RenderContext, layer: str | None) -> list[str]:
    """Atlases a frame-space edit goes to, back to front."""
    return [layer] if layer else list(ctx.layers)


class TextureRenderer(abc.ABC):
    """Renders a list of atlas textures (back to front) as premultiplied RGBA patches.

    Subclasses say how their layer becomes atlas textures (``build``); sampling them per
    frame is shared here.
    """

    def __init__(self) -> None:
        self.textures: list[AtlasTexture] | None = None

    @abc.abstractmethod
    def build(self, ctx: RenderContext) -> list[AtlasTexture]:
        """The layer's edit as atlas-space textures."""

    def prepare(self, ctx: RenderContext) -> None:
        if self.textures is None:
            self.textures = self.build(ctx)

    def render(self, ctx: RenderContext, t: int) -> list[Patch]:
        return [self.to_patch(ctx, t, box, vals) for box, vals in self.lookups(ctx, t)]

    def lookups(self, ctx: RenderContext, t: int) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """The textures looked up at frame t: (box, [h, w, C] values) of those it shows, in
        order; :meth:`to_patch` makes each a patch (an owner may keep these: an adjust
        layer's lookups do not depend on its colours, core/edits/session.py)."""
        if self.textures is None:
            self.prepare(ctx)
        return [res for tex in self.textures if (res := sample_texture(ctx, tex, t)) is not None]

    def to_patch(self, ctx: RenderContext, t: int, box: tuple[int, int, int, int], vals: np.ndarray) -> Patch:
        return Patch(box[0], box[1], np.ascontiguousarray(vals[..., :3]), np.ascontiguousarray(vals[..., 3]))


class PaintRenderer(TextureRenderer):
    """An RGBA image drawn over one frame, carried by the atlas (LNA-style raster edit)."""

    def __init__(self, spec: PaintLayer, image: np.ndarray | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.image = spec.image if image is None else image  # straight RGBA [H, W, 4]

    def build(self, ctx: RenderContext) -> list[AtlasTexture]:
        img = premultiply(self.image)
        return [frame_to_atlas(ctx, L, self.spec.t, img) for L in target_layers(ctx, self.spec.layer)]


class AtlasPaintRenderer(TextureRenderer):
    """An image painted directly on an exported atlas PNG."""

    def __init__(self, spec: AtlasLayer) -> None:
        super().__init__()
        self.spec = spec

    def edit_mask(self, ctx: RenderContext) -> np.ndarray:
        img = self.spec.image
        if self.spec.has_alpha:
            return img[..., 3]
        baked = np.round(np.clip(ctx.maps.atlas[self.spec.layer], 0, 1) * 255.0) / 255.0
        diff = np.abs(img[..., :3] - baked).max(-1) > ATLAS_DIFF_THRESHOLD
        return cv2.dilate(diff.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)

    def build(self, ctx: RenderContext) -> list[AtlasTexture]:
        rgba = np.dstack([self.spec.image[..., :3], self.edit_mask(ctx)])
        return [AtlasTexture.from_tensor(self.spec.layer, premultiply(rgba))]


class AdjustRenderer(TextureRenderer):
    """A colour adjustment of the original pixels inside a region carried with the surface."""

    def __init__(self, spec: AdjustLayer) -> None:
        super().__init__()
        self.spec = spec

    def build(self, ctx: RenderContext) -> list[AtlasTexture]:
        mask = polygon_mask(self.spec.polygon, ctx.W, ctx.H, self.spec.feather)
        img = torch.from_numpy(mask)[None]
        return [frame_to_atlas(ctx, L, self.spec.t, img) for L in target_layers(ctx, self.spec.layer)]

    def to_patch(self, ctx: RenderContext, t: int, box: tuple[int, int, int, int], vals: np.ndarray) -> Patch:
        x0, y0, x1, y1 = box
        m = np.clip(vals[..., 0], 0.0, 1.0)
        orig = ctx.frames[t, y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
        s = self.spec
        new = adjust_colors(orig, s.hue, s.saturation, s.brightness, s.contrast)
        return Patch(x0, y0, new * m[..., None], m)

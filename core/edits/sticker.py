"""Stickers: ``rigid`` (tracked centre + local similarity, never warped) and ``deform``.

Rigid: the centre and four neighbours at +-d are carried from the drawing frame to every
frame (one batched network call). Their finite differences give the local Jacobian of the
frame_f -> atlas -> frame_t map; its closest similarity (rotation + uniform scale) places
the sticker with a single affine warp, so text and logos keep their shape while following
the surface's rotation and zoom. Deform: the sticker is drawn into the drawing frame and
handled like paint, so it bends with the surface.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.edits.atlas_edit import AtlasTexture, frame_to_atlas, premultiply
from core.edits.context import Patch, RenderContext
from core.edits.paint import TextureRenderer
from core.edits.spec import StickerLayer


def sticker_affine(img_size: tuple[int, int], center: tuple[float, float], scale: float, angle: float) -> np.ndarray:
    """2x3 affine from sticker *pixel coordinates* (centres at j+0.5) to source pixel coordinates.

    ``angle`` in radians, image convention (y down): positive turns clockwise on screen.
    """
    w, h = img_size
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    A = np.array([[c, -s], [s, c]])
    b = np.asarray(center, np.float64) - A @ np.array([w / 2.0, h / 2.0])
    return np.hstack([A, b[:, None]])


def warp_sticker(rgba_premul: np.ndarray, M: np.ndarray, W: int, H: int) -> Patch | None:
    """Warp a premultiplied sticker by the coordinate affine M into the frame (cropped)."""
    h, w = rgba_premul.shape[:2]
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    img = rgba_premul
    if scale < 0.8:  # shrinking: pre-filter to avoid aliasing, keep the coordinate map exact
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = cv2.resize(rgba_premul, (nw, nh), interpolation=cv2.INTER_AREA)
        M = M @ np.diag([w / nw, h / nh, 1.0])
        h, w = nh, nw
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ M.T
    x0, y0 = max(0, int(math.floor(corners[:, 0].min())) - 1), max(0, int(math.floor(corners[:, 1].min())) - 1)
    x1, y1 = min(W, int(math.ceil(corners[:, 0].max())) + 1), min(H, int(math.ceil(corners[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    # coordinates -> indices: (i + 0.5) = A (j + 0.5) + b  =>  i = A j + (A 0.5 + b - 0.5), minus crop origin
    Mi = M.copy()
    Mi[:, 2] = M[:, :2] @ np.array([0.5, 0.5]) + M[:, 2] - 0.5 - np.array([x0, y0])
    out = cv2.warpAffine(img, Mi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    return Patch(x0, y0, np.ascontiguousarray(out[..., :3]), np.ascontiguousarray(out[..., 3]))


def similarity_from_jacobian(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest similarity (Frobenius) to each 2x2 Jacobian [..., 2, 2]: (scale, angle)."""
    a = (J[..., 0, 0] + J[..., 1, 1]) / 2.0
    b = (J[..., 1, 0] - J[..., 0, 1]) / 2.0
    return np.hypot(a, b), np.arctan2(b, a)


@dataclass
class RigidTrack:
    layer: str
    center: np.ndarray  # [T, 2]
    scale: np.ndarray  # [T] surface scale relative to the drawing frame
    angle: np.ndarray  # [T] radians, image convention
    visible: np.ndarray  # [T] bool


def track_rigid(ctx: RenderContext, center: tuple[float, float], t: int, layer: str | None,
                radius_px: float) -> RigidTrack:
    """Carry a centre and its local similarity from frame t to every frame."""
    L = layer or ctx.auto_layer(t, np.array([center]))
    d = float(np.clip(0.25 * radius_px, 2.0, 16.0))
    c = np.asarray(center, np.float64)
    pts = np.array([c, c + (d, 0), c - (d, 0), c + (0, d), c - (0, d)])
    _, xy, ok = ctx.propagate(L, pts, t)  # [T, 5, 2]
    J = np.stack([(xy[:, 1] - xy[:, 2]) / (2 * d), (xy[:, 3] - xy[:, 4]) / (2 * d)], -1)  # columns: d/dx, d/dy
    scale, angle = similarity_from_jacobian(J)
    margin = radius_px * 2.0
    cen = xy[:, 0]
    inside = ((cen[:, 0] >= -margin) & (cen[:, 0] <= ctx.W + margin)
              & (cen[:, 1] >= -margin) & (cen[:, 1] <= ctx.H + margin))
    return RigidTrack(L, cen, scale, angle, ok[:, 0] & inside & np.isfinite(scale) & (scale > 0))


class RigidStickerRenderer:
    def __init__(self, spec: StickerLayer) -> None:
        self.spec = spec
        self._premul = np.ascontiguousarray(premultiply(spec.image).permute(1, 2, 0).numpy())
        self.track: RigidTrack | None = None

    def prepare(self, ctx: RenderContext) -> None:
        if self.track is not None:
            return
        h, w = self.spec.image.shape[:2]
        radius = 0.5 * math.hypot(w, h) * self.spec.scale
        self.track = track_rigid(ctx, self.spec.center, self.spec.t, self.spec.layer, radius)

    def render(self, ctx: RenderContext, t: int) -> list[Patch]:
        if self.track is None:
            self.prepare(ctx)
        tr = self.track
        if not tr.visible[t]:
            return []
        h, w = self.spec.image.shape[:2]
        # user rotation is counter-clockwise on screen (y down: a negative image-space angle)
        angle = tr.angle[t] - self.spec.rotation
        M = sticker_affine((w, h), tuple(tr.center[t]), self.spec.scale * float(tr.scale[t]), angle)
        p = warp_sticker(self._premul, M, ctx.W, ctx.H)
        if p is None:
            return []
        wgt = ctx.occlusion_weight(tr.layer, t, p.box)
        return [Patch(p.x0, p.y0, p.rgb * wgt[..., None], p.a * wgt)]


class DeformStickerRenderer(TextureRenderer):
    """The sticker drawn into its frame, then carried through the atlas like paint."""

    def __init__(self, spec: StickerLayer) -> None:
        super().__init__()
        self.spec = spec

    def frame_image(self, ctx: RenderContext) -> np.ndarray:
        h, w = self.spec.image.shape[:2]
        M = sticker_affine((w, h), self.spec.center, self.spec.scale, -self.spec.rotation)
        premul = np.ascontiguousarray(premultiply(self.spec.image).permute(1, 2, 0).numpy())
        canvas = np.zeros((ctx.H, ctx.W, 4), np.float32)
        p = warp_sticker(premul, M, ctx.W, ctx.H)
        if p is not None:
            x0, y0, x1, y1 = p.box
            canvas[y0:y1, x0:x1, :3] = p.rgb
            canvas[y0:y1, x0:x1, 3] = p.a
        return canvas

    def build(self, ctx: RenderContext) -> list[AtlasTexture]:
        import torch

        img = torch.from_numpy(self.frame_image(ctx)).permute(2, 0, 1).contiguous()  # already premultiplied
        # a deformable sticker belongs to one surface: the one under its centre (unless told)
        L = self.spec.layer or ctx.auto_layer(self.spec.t, np.array([self.spec.center]))
        return [frame_to_atlas(ctx, L, self.spec.t, img)]

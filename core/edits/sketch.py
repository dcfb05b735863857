"""Vector strokes: carried through the mappings vertex by vertex, rasterized per frame.

Each stroke is densified along its straight segments *in the frame it was drawn in*
(so that in other frames it bends with the surface), its vertices go through the forward
mapping at that frame and the inverse mapping into every frame in one batched call, and
each frame rasterizes the resulting polyline at the stroke's width. A stroke is broken
where a vertex is not visible in a frame (cycle-inconsistent or far outside it); occlusion
is applied per pixel by the foreground alpha.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from core.edits.context import Patch, RenderContext
from core.edits.raster import stroke_coverage
from core.edits.spec import SketchLayer, Stroke

DENSIFY_PX = 2.0  # vertex spacing along a segment in the drawing frame


def densify(points: np.ndarray, spacing: float = DENSIFY_PX) -> np.ndarray:
    """Insert points along straight segments so no two consecutive ones are > spacing apart."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return pts
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / spacing)))
        f = (np.arange(1, n + 1) / n)[:, None]
        out.append(a + (b - a) * f)
    return np.concatenate(out)


@dataclass
class CarriedStroke:
    """A stroke's vertices in every project frame."""

    layer: str
    xy: np.ndarray  # [T, M, 2]
    visible: np.ndarray  # [T, M] bool


def stroke_key(stroke: Stroke, t: int, layer: str | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(stroke.points).tobytes())
    h.update(f"{t}|{layer}".encode())
    return h.hexdigest()


def carry_stroke(ctx: RenderContext, stroke: Stroke, t: int, layer: str | None) -> CarriedStroke:
    """Map one stroke to every frame (the only network call a stroke needs)."""
    L = layer or ctx.auto_layer(t, stroke.points)
    dense = densify(stroke.points)
    _, xy, ok = ctx.propagate(L, dense, t)
    margin = stroke.width + 0.05 * max(ctx.W, ctx.H)
    inside = ((xy[..., 0] >= -margin) & (xy[..., 0] <= ctx.W + margin)
              & (xy[..., 1] >= -margin) & (xy[..., 1] <= ctx.H + margin))
    return CarriedStroke(layer=L, xy=xy, visible=ok & inside)


def render_stroke(ctx: RenderContext, stroke: Stroke, carried: CarriedStroke, t: int) -> Patch | None:
    xy, vis = carried.xy[t], carried.visible[t]
    if len(xy) == 1:
        if not vis[0]:
            return None
        a, b = xy, xy
    else:
        seg = vis[:-1] & vis[1:]
        if not seg.any():
            return None
        a, b = xy[:-1][seg], xy[1:][seg]
    res = stroke_coverage(a, b, stroke.width / 2.0, ctx.W, ctx.H)
    if res is None:
        return None
    box, cov = res
    alpha = cov * stroke.color[3] * ctx.occlusion_weight(carried.layer, t, box)
    rgb = alpha[..., None] * np.asarray(stroke.color[:3], np.float32)
    return Patch(box[0], box[1], rgb.astype(np.float32), alpha.astype(np.float32))


class SketchRenderer:
    """A sketch layer: strokes carried once (cached per stroke), rasterized per frame."""

    def __init__(self, spec: SketchLayer, stroke_cache: dict[str, CarriedStroke] | None = None) -> None:
        self.spec = spec
        self._cache = stroke_cache if stroke_cache is not None else {}
        self._carried: list[CarriedStroke] | None = None

    def prepare(self, ctx: RenderContext) -> None:
        carried = []
        for s in self.spec.strokes:
            k = stroke_key(s, self.spec.t, self.spec.layer)
            if k not in self._cache:
                self._cache[k] = carry_stroke(ctx, s, self.spec.t, self.spec.layer)
            carried.append(self._cache[k])
        self._carried = carried

    def render(self, ctx: RenderContext, t: int) -> list[Patch]:
        if self._carried is None:
            self.prepare(ctx)
        out = []
        for s, c in zip(self.spec.strokes, self._carried):
            p = render_stroke(ctx, s, c, t)
            if p is not None:
                out.append(p)
        return out

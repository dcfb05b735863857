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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.edits.context import Patch, RenderContext
from core.edits.raster import TILE, stroke_coverage, stroke_coverage_tiles
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
    """A stroke's (densified) vertices in the project frames, filled in as frames are needed.

    Two stages per frame: *carried* (the mapping's positions: one batched network call for
    the frames asked) and *settled* (refined against the drawing frame's pixels, visibility
    decided). Carrying runs up front for all frames; refinement runs per frame when it is
    rendered, for all strokes of a layer at once (:func:`settle`), so the edit pass matches
    against the frame it decodes for compositing anyway, and an interactive render refines
    only the frame shown.
    """

    layer: str
    dense: np.ndarray  # [M, 2] vertices in the drawing frame
    uv: np.ndarray  # [M, 2] their atlas coordinates
    t: int  # drawing frame
    margin: float  # how far outside the frame a vertex may still be drawn from
    xy: np.ndarray  # [T, M, 2]
    visible: np.ndarray  # [T, M] bool
    done: np.ndarray  # [T] bool: settled (final positions and visibility)
    ok: np.ndarray | None = None  # [T, M] bool: cycle-consistent (carried stage)
    carried: np.ndarray | None = None  # [T] bool: the mapping's positions are in xy

    def __post_init__(self) -> None:
        T, M = self.visible.shape
        if self.ok is None:
            self.ok = np.zeros((T, M), bool)
        if self.carried is None:
            self.carried = np.array(self.done, copy=True)

    def carry(self, ctx: RenderContext, frames: np.ndarray | None = None) -> None:
        """The mapping's positions (no refinement) for ``frames`` (default: all) not carried yet."""
        todo = np.flatnonzero(~self.carried) if frames is None else np.asarray(frames)[~self.carried[frames]]
        if todo.size == 0:
            return
        _, xy, ok = ctx.propagate(self.layer, self.dense, self.t, frames=todo, uv=self.uv, refine=False)
        self.xy[todo] = xy
        self.ok[todo] = ok
        self.carried[todo] = True

    def ensure(self, ctx: RenderContext, frames: np.ndarray | None = None) -> None:
        """Final positions and visibility for ``frames`` (default: all)."""
        settle(ctx, [self], np.arange(ctx.T) if frames is None else np.asarray(frames))


def settle(ctx: RenderContext, strokes: list[CarriedStroke], frames: np.ndarray, independent: bool = False) -> None:
    """Carry and refine ``strokes`` into ``frames``: one refinement call per (layer, drawing frame).

    Why batched: each refinement call pays for its templates, warps and grid samples; a frame
    shown after a playhead move needs every stroke of the stack there, and one call for all
    of them costs little more than one for a single stroke. ``independent``: each frame
    settles as ``settle(ctx, strokes, [t])`` would settle it (:func:`settle_frames`).
    """
    frames = np.asarray(frames, int).reshape(-1)
    groups: dict[tuple[str, int], list[CarriedStroke]] = {}
    for c in strokes:
        if not c.done[frames].all():
            c.carry(ctx, frames)
            groups.setdefault((c.layer, c.t), []).append(c)
    for (layer, t0), cs in groups.items():
        todo = [frames[~c.done[frames]] for c in cs]
        # a frame any stroke of the group still needs; strokes already settled there keep theirs
        need = np.unique(np.concatenate(todo))
        if ctx.refine_enabled:
            sets = [(c.dense, c.xy[need], c.ok[need] & ~c.done[need][:, None]) for c in cs]
            for c, xy in zip(cs, ctx.refine_sets(layer, t0, need, sets, independent)):
                redo = ~c.done[need]
                c.xy[need[redo]] = xy[redo]
        for c in cs:
            f = need[~c.done[need]]
            xy, m = c.xy[f], c.margin
            inside = ((xy[..., 0] >= -m) & (xy[..., 0] <= ctx.W + m) & (xy[..., 1] >= -m) & (xy[..., 1] <= ctx.H + m))
            c.visible[f] = c.ok[f] & inside
            c.done[f] = True


def settle_frames(ctx: RenderContext, todo: dict[int, list[CarriedStroke]]) -> None:
    """``settle(ctx, todo[t], [t])`` for every frame t of ``todo``, with the same numbers, but
    the frames that settle the same strokes refined in ONE call.

    Why: a render worker renders a block of consecutive frames, and a refinement call costs
    ~100 small tensor operations whatever the number of rows it matches: one call for 8
    frames took ~25 % less CPU per match than 8 calls. Only frames with the same strokes
    to settle share a call, because what a frame settles with decides its result (the
    strokes of a (layer, drawing frame) are matched together, and a far frame's chain
    decision counts all their points).
    """
    groups: dict[tuple[int, ...], tuple[list[CarriedStroke], list[int]]] = {}
    for t, cs in todo.items():
        if cs:
            groups.setdefault(tuple(id(c) for c in cs), (cs, []))[1].append(int(t))
    for cs, frames in groups.values():
        settle(ctx, cs, np.asarray(sorted(frames), int), independent=True)


def stroke_key(stroke: Stroke, t: int, layer: str | None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(stroke.points).tobytes())
    h.update(f"{t}|{layer}|{stroke.width}".encode())
    return h.hexdigest()


def carry_stroke(ctx: RenderContext, stroke: Stroke, t: int, layer: str | None) -> CarriedStroke:
    """Attach a stroke to its layer and map its vertices into the atlas (frames follow on demand)."""
    L = layer or ctx.auto_layer(t, stroke.points)
    dense = densify(stroke.points)
    uv = np.asarray(ctx.mapping.forward(L, dense, np.full(len(dense), float(t))), np.float64)
    T = ctx.T
    return CarriedStroke(layer=L, dense=dense, uv=uv, t=t, margin=stroke.width + 0.05 * max(ctx.W, ctx.H),
                         xy=np.zeros((T, len(dense), 2)), visible=np.zeros((T, len(dense)), bool),
                         done=np.zeros(T, bool))


def _stroke_segments(carried: CarriedStroke, t: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The visible pieces of a settled stroke at frame t as segment end points (a, b)."""
    xy, vis = carried.xy[t], carried.visible[t]
    if len(xy) == 1:
        return (xy, xy) if vis[0] else None
    seg = vis[:-1] & vis[1:]
    if not seg.any():
        return None
    return xy[:-1][seg], xy[1:][seg]


def render_stroke_dense(ctx: RenderContext, stroke: Stroke, carried: CarriedStroke, t: int) -> Patch | None:
    """The stroke at frame t as one patch over its bounding box: the reference for :func:`render_stroke`."""
    carried.ensure(ctx, np.array([t]))
    seg = _stroke_segments(carried, t)
    if seg is None:
        return None
    res = stroke_coverage(seg[0], seg[1], stroke.width / 2.0, ctx.W, ctx.H)
    if res is None:
        return None
    box, cov = res
    alpha = cov * stroke.color[3] * ctx.occlusion_weight(carried.layer, t, box)
    rgb = alpha[..., None] * np.asarray(stroke.color[:3], np.float32)
    return Patch(box[0], box[1], rgb.astype(np.float32), alpha.astype(np.float32))


def render_stroke(ctx: RenderContext, stroke: Stroke, carried: CarriedStroke, t: int) -> list[Patch]:
    """The stroke at frame t as one patch per frame tile it touches (``raster.TILE``).

    The pixels are those of :func:`render_stroke_dense` (zero outside the tiles); only the
    tiles are rasterised, occluded and later composited, which at 1080p is a fraction of
    the bounding box of a long thin stroke.
    """
    carried.ensure(ctx, np.array([t]))
    seg = _stroke_segments(carried, t)
    if seg is None:
        return []
    boxes, cov = stroke_coverage_tiles(seg[0], seg[1], stroke.width / 2.0, ctx.W, ctx.H, TILE)
    if not boxes:
        return []
    a = ctx.alpha_tiles(t, boxes, TILE)
    occ = a if carried.layer == "fg" else 1.0 - a
    alpha = (cov * stroke.color[3] * occ).astype(np.float32)
    rgb = (alpha[..., None] * np.asarray(stroke.color[:3], np.float32)).astype(np.float32)
    return [Patch(x0, y0, rgb[k, :y1 - y0, :x1 - x0], alpha[k, :y1 - y0, :x1 - x0])
            for k, (x0, y0, x1, y1) in enumerate(boxes)]


class StrokeCache:
    """Session-wide memo of carried strokes and their per-frame patches.

    Adding a stroke to a layer changes the layer's key, but the other strokes' carried
    vertices and rasterized patches stay valid: only the new stroke costs anything.
    """

    MAX_PATCHES = 20000

    def __init__(self) -> None:
        self.carried: dict[str, CarriedStroke] = {}
        self.patches: OrderedDict[tuple[str, int], list[Patch]] = OrderedDict()

    def patch(self, key: str, t: int, make: Callable[[], list[Patch]]) -> list[Patch]:
        k = (key, t)
        if k in self.patches:
            self.patches.move_to_end(k)
            return self.patches[k]
        p = make()
        self.patches[k] = p
        if len(self.patches) > self.MAX_PATCHES:
            self.patches.popitem(last=False)
        return p


class SketchRenderer:
    """A sketch layer: strokes carried once (cached per stroke), rasterized per frame."""

    def __init__(self, spec: SketchLayer, cache: StrokeCache | None = None) -> None:
        self.spec = spec
        self._cache = cache if cache is not None else StrokeCache()
        self._carried: list[CarriedStroke] | None = None
        self._keys: list[str] = []

    def attach(self, ctx: RenderContext) -> None:
        """Carried strokes from the cache, or new ones (forward mapping only)."""
        carried, keys = [], []
        for s in self.spec.strokes:
            k = stroke_key(s, self.spec.t, self.spec.layer)
            if k not in self._cache.carried:
                self._cache.carried[k] = carry_stroke(ctx, s, self.spec.t, self.spec.layer)
            carried.append(self._cache.carried[k])
            keys.append(f"{k}|{s.color}")
        self._carried, self._keys = carried, keys

    def prepare(self, ctx: RenderContext) -> None:
        """Carry every stroke into every frame (one batched mapping call per stroke).

        Refinement is left to :meth:`render` (per frame, all strokes at once): it reads the
        frame's pixels, which rendering decodes for compositing anyway.
        """
        self.attach(ctx)
        for c in self._carried:
            c.carry(ctx)

    def _todo(self, t: int) -> list[CarriedStroke]:
        """The strokes whose patch frame t still needs and that are not settled there."""
        return [c for c, k in zip(self._carried, self._keys) if (k, t) not in self._cache.patches and not c.done[t]]

    def settle_block(self, ctx: RenderContext, frames: np.ndarray) -> None:
        """Settle what :meth:`render` at each of ``frames`` would settle, frames that settle the
        same strokes in one refinement call (:func:`settle_frames`): the frames' patches are
        then those :meth:`render` makes one frame at a time, bit for bit."""
        if self._carried is None:
            self.attach(ctx)
        settle_frames(ctx, {int(t): self._todo(int(t)) for t in frames})

    def render(self, ctx: RenderContext, t: int) -> list[Patch]:
        if self._carried is None:
            self.attach(ctx)
        # every stroke whose patch this frame still needs is settled here in one batched call
        todo = self._todo(t)
        if todo:
            settle(ctx, todo, np.array([t]))
        out = []
        for s, c, k in zip(self.spec.strokes, self._carried, self._keys):
            out.extend(self._cache.patch(k, t, lambda: render_stroke(ctx, s, c, t)))
        return out

"""An in-memory editing session: maps, frames and per-layer results stay loaded.

Why: interactive editing (the Blender add-on, or a script) changes one layer at a time.
The session keeps each layer's frame-independent work (carried strokes, atlas textures,
sticker tracks) keyed by the layer's content hash and each layer's per-frame patches in a
bounded cache, so adding a stroke costs one batched mapping call for that stroke plus a
re-composite of the frame shown. The patches are kept in the service's
:class:`~core.edits.patch_cache.PatchCache` where the session's geometry scope belongs to
one (they then outlive the session and come back from forked render workers), else in a
cache of the session's own.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch

from core.edits.context import Patch, RenderContext
from core.edits.geometry import GeometryScope, lookup_key
from core.edits.patch_cache import Kept, PatchCache
from core.edits.paint import AdjustRenderer, AtlasPaintRenderer, PaintRenderer
from core.edits.render import composite, composite_overlay
from core.edits.sketch import SketchRenderer, StrokeCache
from core.edits.spec import (AdjustLayer, AtlasLayer, EditLayer, PaintLayer, SketchLayer, StickerLayer,
                             load_edits, parse_edits)
from core.edits.sticker import DeformStickerRenderer, RigidStickerRenderer
from core.progress import Progress
from core.project import BakedMaps, LayeredMapping, Project


#: Edit rendering is many small tensor ops: one thread avoids synchronisation that costs more
#: than it saves (measured 3-10x faster with another process busy on the machine).
RENDER_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (restored afterwards: callers may share the process)."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Renderer(Protocol):
    def prepare(self, ctx: RenderContext) -> None:
        """All-frames work (network calls, textures); idempotent."""

    def render(self, ctx: RenderContext, t: int) -> list[Patch]: ...


def make_renderer(spec: EditLayer, stroke_cache: StrokeCache) -> Renderer:
    custom = getattr(spec, "make_renderer", None)
    if custom is not None:  # a layer type that brings its own renderer (core/segments.py)
        return custom(stroke_cache)
    if isinstance(spec, SketchLayer):
        return SketchRenderer(spec, stroke_cache)
    if isinstance(spec, PaintLayer):
        return PaintRenderer(spec)
    if isinstance(spec, StickerLayer):
        return RigidStickerRenderer(spec) if spec.mode == "rigid" else DeformStickerRenderer(spec)
    if isinstance(spec, AdjustLayer):
        return AdjustRenderer(spec)
    if isinstance(spec, AtlasLayer):
        return AtlasPaintRenderer(spec)
    raise TypeError(f"no renderer for {type(spec).__name__}")


def needs_networks(layers: Iterable[EditLayer]) -> bool:
    """Atlas-painted layers only read baked maps; every other type maps points once."""
    return any(l.visible and not isinstance(l, AtlasLayer) for l in layers)


class EditSession:
    """Render an edit stack on a project's original frames, re-using unchanged work."""

    def __init__(self, project: Project, layers: list[EditLayer] | None = None,
                 mapping: LayeredMapping | None = None, maps: BakedMaps | None = None,
                 cache_bytes: int = 512 * 2**20, geometry: GeometryScope | None = None) -> None:
        self.project = project
        self.ctx = RenderContext(project, mapping=mapping, maps=maps)
        self.layers: list[EditLayer] = []
        self._renderers: dict[str, Renderer] = {}
        # each layer's geometry per frame (refined stroke vertices, texture corrections,
        # sticker tracks): a scope kept by its owner (the service) outlives this session and
        # its stacks, for as long as the checkpoint is the same (core/edits/geometry.py)
        self.geometry = geometry if geometry is not None else GeometryScope()
        self._strokes = StrokeCache()
        self._strokes.carried = self.geometry.carried
        # each layer's patches per frame: the owner's (kept across sessions and passes, fed by
        # render workers too) or this session's own (kept only for what renders here)
        shared = self.geometry.patches
        self.shared_patches = shared is not None
        self.patches: PatchCache = shared if shared is not None else PatchCache(cache_bytes)
        self.cache_bytes = cache_bytes
        if layers:
            self.set_layers(layers)

    # -- the stack ----------------------------------------------------------------------
    def set_layers(self, layers: list[EditLayer]) -> None:
        """Replace the stack; work for layers whose content did not change is kept."""
        self.layers = list(layers)
        live = {l.key for l in self.layers}
        for k in [k for k in self._renderers if k not in live]:
            del self._renderers[k]
        if not self.shared_patches:  # the owner's cache keeps them for a layer shown again
            token = self.geometry.token
            for key in self.patches.layer_keys(token) - live:
                self.patches.drop((token, key))

    def set_edits(self, doc: Any, base: Path, fname: str = "edits") -> None:
        """Validate and set a stack from a decoded EDITS document (images relative to ``base``)."""
        self.set_layers(parse_edits(doc, Path(base), self.project.info, fname, self._atlas_sizes))

    def load_edits(self, path: Path) -> None:
        self.set_layers(load_edits(Path(path), self.project.info, self._atlas_sizes))

    def _atlas_sizes(self) -> dict[str, int]:
        return {L: int(a.shape[0]) for L, a in self.ctx.maps.atlas.items()}

    # -- caches -------------------------------------------------------------------------
    def renderer(self, spec: EditLayer, prepare: bool = True) -> Renderer:
        """The layer's renderer; ``prepare`` does its all-frames work now (else lazily as needed)."""
        r = self._renderers.get(spec.key)
        if r is None:
            r = make_renderer(spec, self._strokes)
            self.geometry.attach(spec, r)
            self._renderers[spec.key] = r
            if prepare:
                r.prepare(self.ctx)
                self.geometry.keep(spec, r)
        return r

    def layer_patches(self, spec: EditLayer, t: int, cache: bool = True) -> list[Patch]:
        """The layer's patches at frame t: kept ones, or rendered (and kept where ``cache``, or
        where the owner keeps them: a render worker of the service's Propagate hands them
        back with the frame; ``inve edit``'s workers keep nothing)."""
        token = self.geometry.token
        kept = self.patches.get(token, spec.key, t)
        if kept is not None:
            return kept
        r = self.renderer(spec, prepare=False)
        if self.shared_patches and isinstance(r, AdjustRenderer):
            patches = self._adjust_patches(spec, r, token, t)
        else:
            patches = r.render(self.ctx, t)
        if cache or self.shared_patches:
            self.patches.put(token, spec.key, t, patches)
        return patches

    def _adjust_patches(self, spec: EditLayer, r: AdjustRenderer, token: str, t: int) -> list[Patch]:
        """An adjust layer's patches at t from its region's lookups there, kept by a key without
        its colours: recolouring a region costs a decode and a colour map per frame, not the
        region's lookup (and drift correction) again."""
        key = lookup_key(spec)
        kept = self.patches.get_kept(token, key, t)
        if kept is None:
            looks = r.lookups(self.ctx, t)
            self.patches.put_kept(token, key, t, tuple(Kept.of_array(b[0], b[1], v) for b, v in looks))
        else:
            looks = [((k.x0, k.y0, k.x0 + k.w, k.y0 + k.h), k.array()) for k in kept]
        return [r.to_patch(self.ctx, t, box, vals) for box, vals in looks]

    def settle_block(self, frames: Iterable[int]) -> None:
        """Find now what rendering ``frames`` (consecutive, about to be rendered one by one)
        will refine of the visible layers' geometry, each layer's frames in one refinement
        call: the strokes a frame settles (core.edits.sketch.settle_frames), the textures'
        drift corrections (core.edits.atlas_edit.settle_textures). Only where a frame's
        patches of the layer are not kept (they would not be rendered).

        Why: one call for a block of 8 frames costs ~25 % less CPU per match than a call per
        frame (most of it is ~100 small tensor operations per call), and refining a new
        stroke is most of a Propagate after adding one. Each frame's result is that of a call
        for it alone (core.refine.refine_independent), so the frames are those of rendering
        them one at a time, bit for bit.
        """
        if not self.ctx.refine_enabled:
            return
        from core.edits.atlas_edit import settle_textures  # noqa: PLC0415

        frames = [int(t) for t in frames]
        token = self.geometry.token
        with torch_threads(RENDER_THREADS):
            for spec in self.layers:
                if not spec.visible:
                    continue
                kept = self.patches.kept_frames(token, spec.key)
                todo = [t for t in frames if t not in kept]
                if not todo:
                    continue
                r = self.renderer(spec, prepare=False)
                if self.shared_patches and isinstance(r, AdjustRenderer):
                    looks = self.patches.kept_frames(token, lookup_key(spec))
                    todo = [t for t in todo if t not in looks]
                block = getattr(r, "settle_block", None)
                if block is not None:
                    block(self.ctx, np.asarray(todo, int))
                elif getattr(r, "textures", None):
                    settle_textures(self.ctx, r.textures, todo)

    def missing(self, frames: range | None = None) -> int:
        """(Visible layer, frame) pairs of ``frames`` (default: all) whose patches are not kept:
        what a pass would render rather than composite."""
        frames = range(self.ctx.T) if frames is None else frames
        token = self.geometry.token
        total = 0
        for l in self.layers:
            if l.visible:
                kept = self.patches.kept_frames(token, l.key)  # (marked used by this pass)
                total += sum(t not in kept for t in frames)
                if isinstance(l, AdjustLayer):  # its region's lookups: used once recoloured
                    self.patches.kept_frames(token, lookup_key(l))
        return total

    # -- rendering ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Do every visible layer's frame-independent work now (network calls, textures)."""
        with torch_threads(RENDER_THREADS):
            for spec in self.layers:
                if spec.visible:
                    r = self.renderer(spec, prepare=False)
                    r.prepare(self.ctx)
                    self.geometry.keep(spec, r)

    def frame_patches(self, t: int, cache: bool = True) -> list[Patch]:
        """Every visible layer's patches at project frame t, back to front."""
        patches: list[Patch] = []
        with torch_threads(RENDER_THREADS):
            for spec in self.layers:
                if spec.visible:
                    patches.extend(self.layer_patches(spec, t, cache))
        return patches

    def render_frame(self, t: int, cache: bool = True, overlay: bool = False) -> np.ndarray:
        """Project frame t with all visible layers at source resolution.

        Full frame: uint8 [H, W, 3], the original with the edits composited. ``overlay``: only
        the edits, straight-alpha uint8 [H, W, 4], transparent where no edit touches (see
        :func:`~core.edits.render.composite_overlay`).
        """
        patches = self.frame_patches(t, cache)
        if overlay:
            return composite_overlay((self.ctx.H, self.ctx.W), patches)
        return composite(self.ctx.frames[t], patches)

    def visit(self, t: int) -> None:
        """A pass in frame order reached frame t (rendered, or read by a render worker for the
        frames other workers render): the drift refinement's chain links there, now
        (:meth:`RenderContext.visit`). Only passes call it: a preview jumps around."""
        with torch_threads(RENDER_THREADS):
            self.ctx.visit(t)

    def start_pass(self) -> None:
        """A pass over every frame begins: only the chains of the stack it renders are matched
        as it goes (an interactive session remembers those of strokes since changed); what
        geometry is known now is noted (render workers report only what they add)."""
        self.ctx.forget_chains()
        self.geometry.mark()
        if not self.shared_patches:
            self.patches.begin_pass()  # (the owner's cache: the owner says when a pass begins)

    def settled(self, frames: range | None = None) -> bool:
        """The geometry of the visible layers is kept for every frame of ``frames`` (default:
        all): a pass refines nothing (render workers then read no frames ahead for chain links)."""
        return self.geometry.settled([l for l in self.layers if l.visible], self._renderers,
                                     range(self.ctx.T) if frames is None else frames)

    def frame_geometry(self, t: int) -> Any:
        """(In a render worker) what rendering frame t found of the layers' geometry, for
        :meth:`merge_geometry` in the process that forked it; None: nothing new."""
        return self.geometry.collect(t, [l for l in self.layers if l.visible], self._renderers)

    def merge_geometry(self, found: Any) -> None:
        self.geometry.merge(found)

    def render_all(self, progress: Progress | None = None, cache: bool = False,
                   overlay: bool = False, workers: int = 1,
                   encode: Callable[[np.ndarray], Any] | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (project frame index, frame) for every frame, in order, reporting stage 'render'.

        ``workers`` > 1 renders in that many forked processes (``core.edits.parallel``; the
        same frames, in order; where fork is unavailable, in this process), each worker
        applying ``encode`` (say, PNG encoding) to its frames, so what is yielded is
        ``encode(frame)``; in this process ``encode`` is not applied (callers encode on their
        own writer threads).
        """
        T = self.ctx.T
        if progress is not None:
            progress.update("render", 0, T, force=True)
        self.start_pass()
        self.prepare()
        if workers > 1 and T > 1:
            from core.edits.parallel import can_fork, render_parallel  # noqa: PLC0415

            if can_fork():
                for t, out in render_parallel(self, workers, overlay=overlay, encode=encode):
                    if progress is not None:
                        progress.update("render", t + 1, T)
                    yield t, out
                return
        from core.edits.parallel import block_frames, settle_cache_frames  # noqa: PLC0415

        B = block_frames(self.ctx.W, self.ctx.H)
        if hasattr(self.ctx.frames, "cache_frames"):  # the block's frames are read twice (parallel._worker)
            self.ctx.frames.cache_frames = max(self.ctx.frames.cache_frames, settle_cache_frames(self.ctx.W, self.ctx.H))
        for t in range(T):
            if t % B == 0:
                self.settle_block(range(t, min(T, t + B)))  # as a render worker does (parallel._worker)
            img = self.render_frame(t, cache=cache, overlay=overlay)
            self.visit(t)
            if progress is not None:
                progress.update("render", t + 1, T)
            yield t, img

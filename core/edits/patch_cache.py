"""What each layer looks like in each frame, kept across passes by the engine service.

Why: after adding, changing or showing one layer, a Propagate renders every frame again,
but the other layers' pixels are what the previous pass rendered: re-rendering them costs a
texture lookup, a rasterisation or (an adjust layer) a decode and a colour map per frame --
~3.5 s of CPU for one adjust region on a 458-frame 640x480 shot. The service keeps each
layer's per-frame patches here, so a Propagate renders only the layers it has not seen and
composites the rest from what it kept (hidden then shown again: everything is kept).

What is kept, per entry: one layer's patches (premultiplied RGBA rectangles,
:class:`~core.edits.context.Patch`) at one frame, compact: only the pixels some patch
covers (alpha or colour not zero), with their flat indices, or the whole rectangle where it
is mostly covered. Values stay float32, so a kept patch composites to the very bytes the
freshly rendered one gives (the tests compare cached and uncached frames byte for byte).

Keys: ``(token, layer key, frame)``. The layer key is its content hash (every field that
changes its pixels: strokes, colours, region, image bytes; not its name or visibility; a
layer's pixels read no other edit layer -- occlusion comes from the project's alpha maps, an
adjust layer recolours the *source* pixels -- so no other layer is part of it). The token
(:meth:`core.edits.geometry.GeometryScope.token`) names the (sub)project, the checkpoint its
maps were baked from (:func:`~core.edits.geometry.geometry_identity`) and, for a segmented
shot, every segment's checkpoint (layers reach a segment through the seams of the others)
and the source file: a retrain, ``inve correct`` or a changed source gives other tokens, and
nothing kept for the old ones is used again.

Memory: bounded by ``max_bytes`` (the service's ``--patch-cache-mb``, 256 MB by default:
``core.serve.PATCH_CACHE_MB``).
Entries are grouped by (token, layer key); when the budget is exceeded, the groups least
recently used go first (a layer changed or removed before the ones in use); a pass never
drops what it uses itself: when what it renders does not fit, later frames are simply not
kept (a least-recently-used order by frame would drop, during a pass, the very frames the
next pass needs first, and keep none of use). The service marks a whole stack used when it
is set and when a Propagate starts (:meth:`kept_frames` of every visible layer, with an
adjust layer's region lookups): a preview renders the layers one at a time, so without that
one frame of a new layer would drop every kept frame of an unchanged layer not reached yet
(and the next Propagate would render that layer again everywhere). What the stacks of the
other open projects use is :meth:`pin`-ned: dropped only after what no open stack uses.

Forked render workers (core/edits/parallel.py) inherit the cache; what a worker renders it
does not keep itself but hands to the parent with the frame's geometry
(:meth:`take_new`, carried by :meth:`GeometryScope.collect` /
:meth:`GeometryScope.merge`).
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from core.edits.context import Patch

#: a patch covered above this fraction is kept as its whole rectangle (16 bytes a pixel)
#: rather than as covered pixels with their indices (18-20 bytes a pixel)
DENSE_FROM = 0.8
#: bookkeeping per entry (Python objects), counted against the budget
ENTRY_OVERHEAD = 256


@dataclass(frozen=True)
class Kept:
    """One patch, compact: its rectangle, and its covered pixels' RGBA (float32, exact)."""

    x0: int
    y0: int
    h: int
    w: int
    index: np.ndarray | None  # flat indices of the covered pixels (None: ``values`` is dense)
    values: np.ndarray  # float32 [n, 4] (premultiplied rgb, alpha) or [h, w, 4] dense

    @classmethod
    def of(cls, p: Patch) -> "Kept":
        h, w = p.a.shape
        rgba = np.empty((h, w, 4), np.float32)
        rgba[..., :3] = p.rgb
        rgba[..., 3] = p.a
        return cls.of_array(p.x0, p.y0, rgba, p.a)

    @classmethod
    def of_array(cls, x0: int, y0: int, values: np.ndarray, alpha: np.ndarray | None = None) -> "Kept":
        """Any float32 [h, w, C] values at (x0, y0) (``alpha``: their coverage, if known)."""
        h, w, C = values.shape
        values = np.ascontiguousarray(values, np.float32)
        if alpha is not None and np.count_nonzero(alpha) >= DENSE_FROM * h * w:
            return cls._dense(x0, y0, values)  # mostly covered: no need to look closer
        bits = values.reshape(-1, C).view(np.uint32)  # any bit set: a value to keep (-0.0 included)
        nz = bits[:, 0] != 0
        for c in range(1, C):
            nz |= bits[:, c] != 0
        covered = np.flatnonzero(nz)
        if covered.size >= DENSE_FROM * h * w:
            return cls._dense(x0, y0, values)
        dtype = np.uint16 if h * w <= 1 << 16 else np.int32
        kept = values.reshape(-1, C)[covered]
        kept.setflags(write=False)
        return cls(int(x0), int(y0), h, w, covered.astype(dtype), kept)

    @classmethod
    def _dense(cls, x0: int, y0: int, values: np.ndarray) -> "Kept":
        # handed out as it is (:meth:`patch`): read-only, so no caller can change what is kept
        if values.flags.writeable:
            values = values.copy() if values.base is not None or not values.flags.owndata else values
            values.setflags(write=False)
        h, w = values.shape[:2]
        return cls(int(x0), int(y0), h, w, None, values)

    def array(self) -> np.ndarray:
        """The values as they were given, [h, w, C] (uncovered pixels +0.0)."""
        if self.index is None:
            return self.values
        C = self.values.shape[-1]
        out = np.zeros((self.h * self.w, C), np.float32)
        out[self.index] = self.values
        return out.reshape(self.h, self.w, C)

    def patch(self) -> Patch:
        rgba = self.array()
        # uncovered pixels come back as +0.0 where they may have been -0.0: over a frame,
        # x * 1 + 0 is x for either, so the composite's bytes are the same. Views, not
        # copies: compositing reads them slice by slice.
        return Patch(self.x0, self.y0, rgba[..., :3], rgba[..., 3])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (self.index.nbytes if self.index is not None else 0))


def _size(kept: Sequence[Kept]) -> int:
    return ENTRY_OVERHEAD + sum(k.nbytes for k in kept)


class PatchCache:
    """Kept per-frame patches of layers, within ``max_bytes`` (module docstring)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        # (token, layer key) -> {frame: [Kept]}, least recently used group first
        self._groups: OrderedDict[tuple[str, str], dict[int, tuple[Kept, ...]]] = OrderedDict()
        self._group_bytes: dict[tuple[str, str], int] = {}
        self._group_epoch: dict[tuple[str, str], int] = {}
        self.bytes = 0
        self.epoch = 0  # passes begun: a pass does not drop the groups it used
        self._pid = os.getpid()  # the process that keeps; a forked worker hands on instead
        self._new: list[tuple[str, str, int, tuple[Kept, ...]]] = []
        self._sent = 0  # (in a render worker) bytes handed to the parent this pass
        # groups the stacks of open projects use, by owner (:meth:`pin`): dropped last
        self._pinned: dict[Any, frozenset[tuple[str, str]]] = {}
        self._recording: set[tuple[str, str]] | None = None

    # -- use -------------------------------------------------------------------------------
    def begin_pass(self) -> None:
        """A pass over the frames starts (before its workers fork)."""
        self.epoch += 1
        self._new.clear()
        self._sent = 0

    def kept_frames(self, token: str, key: str) -> set[int] | dict[int, Any]:
        """The frames kept of a layer; marks it used by the pass now starting (its render
        workers read it without telling this process: it must not be dropped meanwhile)."""
        gk = (token, key)
        if self._recording is not None:
            self._recording.add(gk)
        g = self._groups.get(gk)
        if g is None:
            return set()
        self._touch(gk)
        return g

    @contextlib.contextmanager
    def recording(self) -> Iterator[set[tuple[str, str]]]:
        """The groups :meth:`kept_frames` is asked for meanwhile (a stack's, for :meth:`pin`)."""
        self._recording = used = set()
        try:
            yield used
        finally:
            self._recording = None

    def pin(self, owner: Any, groups: Iterable[tuple[str, str]] | None) -> None:
        """``groups`` are what ``owner``'s stack uses (an open project's; None: it closed):
        they go only once nothing else can (another project's stack stays while the
        budget allows, dropped after the layers no open stack uses)."""
        if groups is None:
            self._pinned.pop(owner, None)
        else:
            self._pinned[owner] = frozenset(groups)

    def get(self, token: str, key: str, t: int) -> list[Patch] | None:
        g = self._groups.get((token, key))
        kept = g.get(t) if g is not None else None
        if kept is None:
            return None
        self._touch((token, key))
        return [k.patch() for k in kept]

    def get_kept(self, token: str, key: str, t: int) -> tuple[Kept, ...] | None:
        """What is kept under ``key`` at frame t, as kept (:meth:`put_kept`)."""
        g = self._groups.get((token, key))
        kept = g.get(t) if g is not None else None
        if kept is not None:
            self._touch((token, key))
        return kept

    def put(self, token: str, key: str, t: int, patches: Sequence[Patch]) -> None:
        """Keep a layer's freshly rendered patches at frame t (in a forked render worker:
        noted for :meth:`take_new`, the parent keeps them)."""
        if self.max_bytes > 0:
            self.put_kept(token, key, t, tuple(Kept.of(p) for p in patches))

    def put_kept(self, token: str, key: str, t: int, kept: tuple[Kept, ...]) -> None:
        if self.max_bytes <= 0:
            return
        if os.getpid() != self._pid:
            # a render worker: the parent keeps at most max_bytes, so no worker sends more
            size = _size(kept)
            if self._sent + size <= self.max_bytes:
                self._sent += size
                self._new.append((token, key, int(t), kept))
            return
        self.add(token, key, int(t), kept)

    def add(self, token: str, key: str, t: int, kept: tuple[Kept, ...]) -> None:
        gk = (token, key)
        g = self._groups.get(gk)
        if g is not None and t in g:
            self._touch(gk)
            return
        size = _size(kept)
        if not self._make_room(size, gk):
            return  # what this pass uses fills the budget: later frames are not kept
        for k in kept:  # (from a render worker: unpickled, writeable) handed out as views
            k.values.setflags(write=False)
            if k.index is not None:
                k.index.setflags(write=False)
        if g is None:
            g = self._groups[gk] = {}
            self._group_bytes[gk] = 0
        g[t] = kept
        self._group_bytes[gk] += size
        self.bytes += size
        self._touch(gk)

    def take_new(self) -> list[tuple[str, str, int, tuple[Kept, ...]]]:
        """(In a render worker) the patches rendered since the last call, for the parent."""
        new, self._new = self._new, []
        return new

    # -- memory ----------------------------------------------------------------------------
    def _touch(self, gk: tuple[str, str]) -> None:
        self._groups.move_to_end(gk)
        self._group_epoch[gk] = self.epoch

    def _make_room(self, size: int, keep: tuple[str, str]) -> bool:
        """Drop the least recently used groups not used by this pass until ``size`` more bytes
        fit; False when they do not fit even so."""
        pinned: set[tuple[str, str]] | None = None
        while self.bytes + size > self.max_bytes:
            if pinned is None:
                pinned = set().union(*self._pinned.values())
            free = [gk for gk in self._groups if gk != keep and self._group_epoch.get(gk, -1) < self.epoch]
            victim = next((gk for gk in free if gk not in pinned), None) or next(iter(free), None)
            if victim is None:
                return False
            self.drop(victim)
        return True

    def drop(self, gk: tuple[str, str]) -> None:
        self._groups.pop(gk, None)
        self.bytes -= self._group_bytes.pop(gk, 0)
        self._group_epoch.pop(gk, None)

    def drop_token(self, token: str) -> None:
        """Forget everything kept under ``token`` (a (sub)project reloaded with another identity)."""
        for gk in [gk for gk in self._groups if gk[0] == token]:
            self.drop(gk)

    def layer_keys(self, token: str) -> set[str]:
        return {gk[1] for gk in self._groups if gk[0] == token}

    def frames(self, token: str, key: str) -> int:
        g = self._groups.get((token, key))
        return len(g) if g is not None else 0

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

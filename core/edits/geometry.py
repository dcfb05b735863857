"""Where each layer lands in each frame, kept across passes for as long as the project's
checkpoint is the same.

Why: a Propagate re-renders every frame, but after hiding, showing, reordering or
recolouring a layer (or adding one) the costly part of the other layers -- their refined
positions per frame (a stroke's vertices after drift refinement, a painted or adjusted
region's drift correction, a rigid sticker's track) -- is what the previous pass found.
Refinement decodes the frame and matches against the drawing frame's pixels: most of an
edit pass's CPU on a long shot. With those kept, a warm pass is a lookup, a rasterisation,
a composite and a PNG per frame (and a decode only for layers that recolour the frame).

What is kept, per (sub)project, in a :class:`GeometryScope`:

* ``carried``: a sketch stroke's :class:`~core.edits.sketch.CarriedStroke` (positions and
  visibility of its vertices per frame, filled in as frames are settled), by stroke key
  (points, drawing frame, layer, width -- not its colour);
* ``textures``: the atlas textures of paint / adjust / deform-sticker layers with their
  per-frame drift corrections, by :func:`geometry_key` (an adjust layer's key leaves out its
  colour fields);
* ``tracks``: a rigid sticker's track, by :func:`geometry_key` (its rotation and image's
  pixels left out).

A scope is valid for one **identity** (:func:`geometry_identity`: the baked maps' ``meta``,
which names the checkpoint they were baked from, its step and SHA-256, and the project's
identity): retraining, resuming or ``inve correct`` re-bake the maps, the identity changes,
and :meth:`GeometryStore.scope` hands out a new, empty scope -- nothing stale is used.

Forked render workers (``core.edits.parallel``) inherit the scopes; what a worker settles
comes back with its frames (:meth:`GeometryScope.collect` there, :meth:`GeometryScope.merge`
here), so the service holds every frame's geometry after one pass.

A store the service keeps also holds the layers' rendered patches
(:class:`~core.edits.patch_cache.PatchCache`, shared by the service's projects): a scope
keys them by its :attr:`GeometryScope.token` (its name and identity, and the store's
``salt``: the source file and, for a segmented shot, every segment's checkpoint), and they
travel from the workers back with the geometry.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import numpy as np

#: entries kept per scope (the oldest set dropped first): strokes, textures, tracks
MAX_STROKES = 512
MAX_TEXTURES = 64
MAX_TRACKS = 64
#: atlas textures kept by one project's scopes together (a segmented shot has a scope per
#: segment, each with its own copy of every carried paint/adjust layer: a full-frame paint
#: layer at 1080p is ~50 MB a segment); the least recently used go first, and are only
#: prepared again (not wrong) when a pass needs them
MAX_TEXTURE_BYTES = 768 * 2**20


def geometry_identity(project: Any, maps: Any, refine: bool) -> str:
    """What a scope's geometry depends on besides the layers: the checkpoint the maps were
    baked from (``maps.meta``), the project's frames and sizes, and whether drift refinement
    is on. Maps without ``meta`` (written before checkpoints had identities, or synthetic)
    are identified by their files' sizes and modification times instead."""
    info = project.info
    body: dict[str, Any] = {"frames": [int(info.frames[0]), int(info.frames[-1]), len(info.frames)] if info.frames
                            else [], "source_size": list(info.source_size), "work_size": list(info.work_size),
                            "layers": list(info.layers), "refine": bool(refine)}
    meta = getattr(maps, "meta", None) or {}
    if meta:
        body["meta"] = meta
    else:
        path = getattr(project, "_maps_path", lambda: None)()
        files = []
        if path is not None:
            entries = sorted(path.iterdir()) if path.is_dir() else [path]
            for p in entries:
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append([p.name, st.st_size, st.st_mtime_ns])
        body["files"] = files
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def source_stamp(project: Any) -> str:
    """The project's source as it is on disk now: a movie's path, size and modification time;
    an image folder's path and every image's name, size and modification time (rewriting the
    frames in place -- a colourist's re-export under the same names -- leaves the folder's own
    time as it was). ``""`` where the project has no source. A few hundred ``stat`` calls for
    a long image sequence: cheap enough for every request."""
    try:
        src = project.source_path()
        st = src.stat()
    except Exception:  # noqa: BLE001 - no source (frames stored), or moved: nothing to follow
        return ""
    body: list[Any] = [str(src), st.st_size, st.st_mtime_ns]
    if src.is_dir():
        from core.video import list_images  # noqa: PLC0415 - the frames the project reads

        try:
            files: list[Any] = [(p.name, st.st_size, st.st_mtime_ns) for p in list_images(src) if (st := p.stat())]
        except OSError:
            files = [("unreadable",)]
        body = [str(src), files]
    return hashlib.sha1(json.dumps(body).encode()).hexdigest()[:20]


def project_salt(project: Any) -> str:
    """What a project's rendered patches depend on beyond one (sub)project's identity: the
    source (:func:`source_stamp`: an adjust layer recolours its pixels) and, for a segmented
    shot, every segment's baked maps (``meta.json``, naming their checkpoint): a layer reaches
    a segment through the seams of the others, so retraining any segment changes every
    segment's patches. Reads a few small files: cheap at every request."""
    body: list[Any] = [source_stamp(project)]
    if getattr(project, "is_segmented", False):
        for sub in project.segments():
            path = sub._maps_path()
            entry: Any = None
            if path is not None:
                meta = path / "meta.json" if path.is_dir() else path
                try:
                    entry = hashlib.sha1(meta.read_bytes()).hexdigest() if path.is_dir() else \
                        [path.stat().st_size, path.stat().st_mtime_ns]
                except OSError:
                    entry = None
            body.append([sub.path.name, entry])
    return hashlib.sha1(json.dumps(body, default=str).encode()).hexdigest()[:20]


def geometry_key(spec: Any) -> str:
    """The part of a layer's content its per-frame geometry depends on.

    An adjust layer's region moves the same whatever its colour fields; a rigid sticker's
    track does not depend on its rotation or its image's pixels (only on its size). What is
    carried by such a key takes those fields from the layer as it is now (segments'
    ``_layer_in``). Everything else: the layer's content key.
    """
    from core.edits.spec import AdjustLayer, StickerLayer  # noqa: PLC0415

    if isinstance(spec, AdjustLayer) and spec.polygon is not None:
        body = ["adjust", spec.t, spec.layer, np.asarray(spec.polygon, np.float64).round(6).tolist(),
                float(spec.feather)]
    elif isinstance(spec, StickerLayer) and spec.mode == "rigid" and spec.image is not None:
        h, w = spec.image.shape[:2]
        body = ["rigid", spec.t, spec.layer, [float(spec.center[0]), float(spec.center[1])], float(spec.scale),
                [int(w), int(h)]]
    else:
        return spec.key
    return hashlib.sha1(json.dumps(body).encode()).hexdigest()[:20]


def lookup_key(spec: Any) -> str:
    """What an adjust layer's region lookups per frame are kept under in the patch cache
    (core/edits/session.py): its region without its colours (a region carried into a
    segment: the key it was carried under), so a recoloured layer reuses them."""
    return "lookup|" + (getattr(spec, "mask_key", "") or geometry_key(spec))


class GeometryScope:
    """One (sub)project's kept geometry, valid for one :func:`geometry_identity`."""

    def __init__(self, identity: str = "", store: "GeometryStore | None" = None, name: str = "") -> None:
        self.identity = identity
        self.name = name
        self.store = store  # shares the texture budget with the project's other scopes
        self._token: tuple[str | None, str] = (None, "")
        self.carried: OrderedDict[str, Any] = _Bounded(MAX_STROKES)  # stroke key -> CarriedStroke
        self.textures: OrderedDict[str, list[Any]] = OrderedDict()  # geometry key -> [AtlasTexture]
        self.tracks: OrderedDict[str, Any] = OrderedDict()  # geometry key -> RigidTrack
        # textured layers: the frames a pass rendered them at (corrections there are final)
        self.rendered: dict[str, set[int]] = {}
        self.used: dict[str, int] = {}  # texture key -> the store's clock when last attached or kept
        # what was known when the current pass started (a forked worker reports only what it adds)
        self._known_strokes: dict[str, np.ndarray] = {}
        self._known_corr: dict[tuple[str, int], frozenset[int]] = {}

    # -- kept patches ---------------------------------------------------------------------
    @property
    def patches(self) -> Any:
        """The service's :class:`~core.edits.patch_cache.PatchCache` (None: nothing kept
        beyond a session, as in ``inve edit``)."""
        return self.store.patches if self.store is not None else None

    @property
    def token(self) -> str:
        """What this scope's patches are kept under: the store's salt, the scope's name and
        its identity (module docstring)."""
        salt = self.store.salt if self.store is not None else ""
        if self._token[0] != salt:
            self._token = (salt, hashlib.sha1(f"{salt}|{self.name}|{self.identity}".encode()).hexdigest()[:24])
        return self._token[1]

    # -- renderers ----------------------------------------------------------------------
    def attach(self, spec: Any, renderer: Any) -> None:
        """Give a new renderer the geometry kept for its content (textures, track), if any."""
        key = geometry_key(spec)
        if hasattr(renderer, "textures") and key in self.textures:
            self.textures.move_to_end(key)
            renderer.textures = self.textures[key]
            self._used(key)
        if hasattr(renderer, "track") and key in self.tracks:
            self.tracks.move_to_end(key)
            renderer.track = self.tracks[key]

    def keep(self, spec: Any, renderer: Any) -> None:
        """Remember a prepared renderer's textures / track (the same objects: corrections found
        later land in them)."""
        key = geometry_key(spec)
        if getattr(renderer, "textures", None) is not None:
            old = self.textures.get(key)
            if old is not None and (len(old) != len(renderer.textures)
                                    or any(a is not b for a, b in zip(old, renderer.textures))):
                self.rendered.pop(key, None)  # other texture objects: their corrections start over
            self.textures[key] = renderer.textures
            self.textures.move_to_end(key)
            _trim(self.textures, MAX_TEXTURES)
            self._used(key)
            if self.store is not None:
                self.store.trim_textures(keep=(self, key))
            self.rendered = {k: v for k, v in self.rendered.items() if k in self.textures}
        if getattr(renderer, "track", None) is not None:
            self.tracks[key] = renderer.track
            self.tracks.move_to_end(key)
            _trim(self.tracks, MAX_TRACKS)

    def _used(self, key: str) -> None:
        if self.store is not None:
            self.store.clock += 1
            self.used[key] = self.store.clock

    def texture_bytes(self, key: str) -> int:
        return sum(int(t.tex.numel()) * t.tex.element_size() for t in self.textures.get(key) or [])

    def drop_texture(self, key: str) -> None:
        self.textures.pop(key, None)
        self.used.pop(key, None)
        self.rendered.pop(key, None)

    # -- completeness ---------------------------------------------------------------------
    def settled(self, specs: list[Any], renderers: dict[str, Any], frames: range) -> bool:
        """True when the geometry of ``specs`` (the visible layers) is kept for every frame of
        ``frames``: rendering them refines nothing (no frames decoded for it, no chain links)."""
        from core.edits.sketch import stroke_key  # noqa: PLC0415
        from core.edits.spec import SketchLayer  # noqa: PLC0415

        sel = slice(frames.start, frames.stop)
        for spec in specs:
            if isinstance(spec, SketchLayer):
                for s in spec.strokes:
                    c = self.carried.get(stroke_key(s, spec.t, spec.layer))
                    if c is None or not c.done[sel].all():
                        return False
                continue
            r = renderers.get(spec.key)
            if r is None or (hasattr(r, "textures") and r.textures is None):
                return False
            if getattr(r, "textures", None):
                seen = self.rendered.get(geometry_key(spec), set())
                if any(t not in seen for t in frames):
                    return False
        return True

    # -- passes in forked workers -----------------------------------------------------------
    def mark(self) -> None:
        """A pass starts (before workers fork): note what is known, so a worker reports only
        the geometry it finds itself."""
        self._known_strokes = {k: c.done.copy() for k, c in self.carried.items()}
        self._known_corr = {(k, n): frozenset(tex.corrections) for k, texs in self.textures.items()
                            for n, tex in enumerate(texs)}

    def collect(self, t: int, specs: list[Any], renderers: dict[str, Any]) -> dict[str, Any] | None:
        """(In a render worker, after rendering frame t with the visible layers ``specs``) the
        geometry of frame t found since :meth:`mark`: settled strokes, texture corrections,
        and which textured layers were rendered at t (a texture not shown there needs no
        correction). None when there is nothing new."""
        strokes = []
        for k, c in self.carried.items():
            if c.done[t]:
                known = self._known_strokes.get(k)
                if known is None or not known[t]:
                    strokes.append((k, np.array(c.xy[t]), np.array(c.visible[t])))
        corr, rendered = [], []
        for spec in specs:
            r = renderers.get(spec.key)
            texs = getattr(r, "textures", None) if r is not None else None
            if not texs:
                continue
            k = geometry_key(spec)
            if t not in self.rendered.get(k, ()):
                rendered.append(k)
            for n, tex in enumerate(texs):
                if t in tex.corrections and t not in self._known_corr.get((k, n), ()):
                    corr.append((k, n, tex.corrections[t]))
        cache = self.patches
        patches = cache.take_new() if cache is not None else []
        if not strokes and not corr and not rendered and not patches:
            return None
        return {"identity": self.identity, "t": int(t), "strokes": strokes, "corrections": corr,
                "rendered": rendered, "patches": patches}

    def merge(self, found: dict[str, Any]) -> None:
        """Take what a worker found (:meth:`collect`) into the kept geometry. Anything for
        another identity, or for a stroke/texture no longer kept, is ignored."""
        if found.get("identity") != self.identity:
            return
        t = int(found["t"])
        for k, xy, vis in found["strokes"]:
            c = self.carried.get(k)
            if c is None or c.done[t] or xy.shape != c.xy[t].shape:
                continue
            c.xy[t], c.visible[t] = xy, vis
            c.carried[t] = c.done[t] = True
        for k, n, corr in found["corrections"]:
            texs = self.textures.get(k)
            if texs is not None and n < len(texs):
                texs[n].corrections.setdefault(t, corr)
        for k in found["rendered"]:
            if k in self.textures:
                self.rendered.setdefault(k, set()).add(t)
        cache = self.patches
        if cache is not None:
            for token, key, tt, kept in found.get("patches", ()):
                cache.add(token, key, tt, kept)


class _Bounded(OrderedDict):
    """A dict that keeps its ``n`` most recently set entries (the sketch renderer adds strokes
    to it as to any dict)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        _trim(self, self.n)


def _trim(d: OrderedDict, n: int) -> None:
    while len(d) > n:
        d.popitem(last=False)


class GeometryStore:
    """The scopes of one project (a segmented project: one per segment), by name."""

    def __init__(self, max_texture_bytes: int | None = None, patches: Any = None) -> None:
        self._scopes: dict[str, GeometryScope] = {}
        self.max_texture_bytes = MAX_TEXTURE_BYTES if max_texture_bytes is None else max_texture_bytes
        self.clock = 0  # ticks at every texture use, in any scope: the order to drop them in
        # the layers' rendered patches (core/edits/patch_cache.py), where the owner keeps them
        self.patches = patches
        self.salt = ""
        self.source: str | None = None  # the source's stamp when last opened (:meth:`set_salt`)

    def set_salt(self, salt: str, source: str | None = None) -> None:
        """What the project's patches depend on beyond each scope (:func:`project_salt`); a
        new salt forgets every patch kept under the old one. ``source``
        (:func:`source_stamp`): when it differs from the last one given, the kept geometry
        goes too -- drift corrections and refined strokes were matched on the old pixels."""
        if source is not None:
            if self.source is not None and source != self.source:
                self.forget_patches()
                self._scopes.clear()
            self.source = source
        if salt == self.salt:
            return
        if self.patches is not None:
            for s in self._scopes.values():
                self.patches.drop_token(s.token)
        self.salt = salt

    def scope(self, name: str, identity: str) -> GeometryScope:
        """The scope ``name`` for ``identity``: the kept one when the identity is the same,
        else a new empty one (the old geometry belongs to another checkpoint and is dropped,
        with its patches)."""
        s = self._scopes.get(name)
        if s is None or s.identity != identity:
            if s is not None and self.patches is not None:
                self.patches.drop_token(s.token)
            s = GeometryScope(identity, self, name)
            self._scopes[name] = s
        return s

    def forget_patches(self) -> None:
        """Drop every patch kept for this project (the service closed it)."""
        if self.patches is not None:
            for s in self._scopes.values():
                self.patches.drop_token(s.token)

    def peek(self, name: str) -> GeometryScope | None:
        """The scope kept as ``name``, if any (its identity as when last opened)."""
        return self._scopes.get(name)

    def texture_bytes(self) -> int:
        return sum(s.texture_bytes(k) for s in self._scopes.values() for k in s.textures)

    def trim_textures(self, keep: tuple[GeometryScope, str] | None = None) -> None:
        """Drop the least recently used textures of all scopes until they fit the budget
        (never ``keep``, the one just kept: a pass is using it)."""
        sizes = {(id(s), k): s.texture_bytes(k) for s in self._scopes.values() for k in s.textures}
        total = sum(sizes.values())
        if total <= self.max_texture_bytes:
            return
        order = sorted(((s.used.get(k, 0), id(s), k, s) for s in self._scopes.values() for k in s.textures),
                       key=lambda e: (e[0], e[1], e[2]))
        for _, sid, k, s in order:
            if total <= self.max_texture_bytes:
                break
            if keep is not None and keep[0] is s and keep[1] == k:
                continue
            total -= sizes[(sid, k)]
            s.drop_texture(k)

    def __len__(self) -> int:
        return len(self._scopes)

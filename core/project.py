"""The project folder: what training leaves behind and what editing reads.

Layout (see ARCHITECTURE.md)::

    PROJECT/
      project.json      ProjectInfo: source, frame range, sizes, fps, layers, settings, versions
      cache/            masks; while training also working-size frames and flow (reused by
                        --resume after a cancel; removed once the maps are baked)
      checkpoint.pt     networks + optimizer + step (written atomically, resumable)
      maps/             baked per-frame UV maps, alpha maps and 8-bit atlases (BakedMaps;
                        memory-mapped .npy files, meta.json written last)

The project keeps no copy of the source: edits decode the original frames from the source
video (found at its absolute path or relative to the project). Format 1 projects (a
``frames.npy`` copy of the source and one ``maps.npz``) still open.
      atlas_bg.png      atlas images for people (and for painting, see `inve atlas`)
      metrics.json      psnr, iterations, train_seconds, ...

A long shot may be split into overlapping **segments** (``core.segments``): then
``project.json`` lists them (format 3) and each is a complete project of its own under
``segments/<name>/`` (project.json, checkpoint, maps, atlases, metrics); the top level
keeps only project.json and an aggregated metrics.json.

Coordinates: everything outside this package speaks *source pixel coordinates* (x right,
y down, pixel centres at i+0.5) and *project frame indices* t = 0..T-1 (source frame =
``info.frames[t]``). Atlas coordinates ``uv`` are in [-1, 1]^2; an atlas image of size A
covers that square with pixel centres at uv = 2*(i+0.5)/A - 1, which is exactly
``torch.nn.functional.grid_sample(..., align_corners=False)``.
"""
from __future__ import annotations

import dataclasses
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from core import PROJECT_FORMAT, __version__
from core.errors import InveError
from core import fsutil

LAYERS: tuple[str, ...] = ("bg", "fg")
#: format of a project without segments (what inve before segments reads)
PLAIN_FORMAT = 2
#: format of a project split into segments (``ProjectInfo.segments``)
SEGMENTED_FORMAT = 3
SEGMENTS_DIR = "segments"
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ProjectInfo:
    """Contents of ``project.json``."""

    source: str
    frames: list[int]
    source_size: tuple[int, int]  # (W, H) of the source video
    work_size: tuple[int, int]  # (w, h) used for training and baked maps
    fps: float
    layers: list[str] = field(default_factory=lambda: list(LAYERS))
    settings: dict[str, Any] = field(default_factory=dict)
    # the source relative to the project folder (found there when project and video moved together)
    source_relative: str | None = None
    format: int = PLAIN_FORMAT
    tool_version: str = __version__
    # content fingerprint of the source (core.identity): finds the project again after a
    # rename, and tells a checkpoint of this project from a copy of another one
    source_fingerprint: str | None = None
    # overlapping segments in frame order, each {"name": ..., "frames": [start, end]} (source
    # frames, half-open), a complete project in segments/<name>/ (core.segments); None: one atlas
    segments: list[dict[str, Any]] | None = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def frame_index(self, source_frame: int, what: str = "frame") -> int:
        """Project index of a source frame; a clear error if it is outside the project."""
        if isinstance(source_frame, bool) or not isinstance(source_frame, (int, np.integer)):
            raise InveError(f"{what} must be an integer source frame index, got {source_frame!r}")
        try:
            return self.frames.index(int(source_frame))
        except ValueError:
            raise InveError(
                f"{what} {source_frame} is outside the project's frames "
                f"{self.frames[0]}..{self.frames[-1]}") from None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["source_size"] = list(self.source_size)
        d["work_size"] = list(self.work_size)
        if self.segments:
            d["format"] = max(int(self.format), SEGMENTED_FORMAT)
        else:
            d.pop("segments")  # a plain project's file stays exactly what older inve wrote
            d["format"] = min(int(self.format), PLAIN_FORMAT)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "project.json") -> "ProjectInfo":
        fix = "restore it from a backup or train the project again into a new folder"
        if not isinstance(d, dict):
            raise InveError(f"{where} is damaged (not a JSON object); {fix}")
        fmt = d.get("format")
        if not isinstance(fmt, int):
            raise InveError(f"{where} has no format version; it was not written by inve")
        if fmt > PROJECT_FORMAT:
            raise InveError(
                f"{where} uses project format {fmt}, written by inve {d.get('tool_version', '?')}; "
                f"this inve ({__version__}) reads format {PROJECT_FORMAT} and older: upgrade inve")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        try:
            kwargs["source_size"] = tuple(int(v) for v in kwargs["source_size"])
            kwargs["work_size"] = tuple(int(v) for v in kwargs["work_size"])
            kwargs["frames"] = [int(v) for v in kwargs["frames"]]
            kwargs["fps"] = float(kwargs["fps"])
            if not isinstance(kwargs.get("layers", []), list) or not isinstance(kwargs.get("settings", {}), dict):
                raise TypeError("layers must be a list and settings an object")
            info = cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise InveError(f"{where} is damaged ({exc}); {fix}") from None
        problems = []
        if not info.frames:
            problems.append("no frames")
        elif info.frames[0] < 0 or info.frames != list(range(info.frames[0], info.frames[0] + len(info.frames))):
            problems.append("frames are not a range of source frames")
        if len(info.source_size) != 2 or min(info.source_size) <= 0 or len(info.work_size) != 2 \
                or min(info.work_size) <= 0:
            problems.append("sizes must be positive")
        if not info.layers or any(L not in LAYERS for L in info.layers):
            problems.append(f"layers must be among {list(LAYERS)}")
        if not 0 < info.fps < 1e4:
            problems.append("bad fps")
        if info.segments is not None and not problems:
            problems += _segment_problems(info)
        if problems:
            raise InveError(f"{where} is damaged ({', '.join(problems)}); {fix}")
        return info


def _segment_problems(info: ProjectInfo) -> list[str]:
    """What is wrong with ``info.segments`` (empty when they tile the frames with overlaps)."""
    segs = info.segments
    if not isinstance(segs, list) or not segs:
        return ["segments must be a non-empty list"]
    out: list[str] = []
    prev: tuple[int, int] | None = None
    names = set()
    for i, s in enumerate(segs):
        try:
            name, (a, b) = s["name"], s["frames"]
            a, b = int(a), int(b)
        except (KeyError, TypeError, ValueError):
            return [f"segments[{i}] must be {{\"name\": ..., \"frames\": [start, end]}}"]
        if not isinstance(name, str) or not _SEGMENT_NAME.match(name) or name in names:
            out.append(f"segments[{i}] has a bad or repeated name {name!r}")
        names.add(name)
        if b <= a:
            out.append(f"segments[{i}] frames {a}:{b} are empty")
        if prev is not None and not (prev[0] < a < prev[1] < b):
            out.append(f"segments[{i}] ({a}:{b}) must start inside and end after the previous one ({prev[0]}:{prev[1]})")
        s["frames"] = [a, b]
        prev = (a, b)
    first, last = int(segs[0]["frames"][0]), int(segs[-1]["frames"][1])
    if not out and (first != info.frames[0] or last != info.frames[-1] + 1):
        out.append(f"segments cover {first}:{last}, the project {info.frames[0]}:{info.frames[-1] + 1}")
    return out


@dataclass
class BakedMaps:
    """Per-frame maps baked after training: edits read these instead of running networks.

    ``uv[layer]``: [T, h, w, 2] atlas coordinates of every working-resolution pixel.
    ``alpha``: [T, h, w] foreground opacity (zeros for a single-layer project).
    ``atlas[layer]``: float32 [A, A, 3] atlas colours in 0..1 (the networks' reconstruction).
    ``atlas_used[layer]``: float32 [A, A] how much of each atlas texel any frame shows (0..1).
    ``meta``: what the maps were baked from (checkpoint step, identity), saved with them.

    On disk (``PROJECT/maps/``, :mod:`core.arraystore`) the per-frame maps are float16
    ``.npy`` files (uv: at most 0.0005 atlas units of rounding, about 0.1 source pixel),
    opened memory-mapped: an edit or a track reads only the frames it touches instead of the
    whole clip, and its memory does not grow with the shot. Readers convert per frame
    (``np.asarray(maps.uv[L][t], np.float32)``). ``meta.json`` is written last and marks
    a complete set. Projects of format 1 (one ``maps.npz``) still load, into memory.

    Compact store (``store: 2`` in meta.json; what a segmented long shot needs to stay small):
    atlases are 8-bit (``atlas8_<layer>.npy``, read back as float32 /255: within 1/510 of the
    networks, the precision of the atlas PNGs people paint on, and what paint edits already
    quantise to); alpha is 8-bit too (``alpha8.npy``, read through :class:`Unit8Frames` as
    float32 0..1, within 1/510: a composite moves by at most half an 8-bit level; rounding
    keeps every pixel on its side of the layer threshold 0.5); ``atlas_used`` is not stored but recomputed from the stored uv/alpha on
    first use (only the atlas export reads it; the bake computed it from the same arrays, so
    it is identical); a single-layer project stores no alpha (it is all zeros: read back as
    a read-only zero array). Maps of the older store (float16 ``atlas_<layer>.npy``,
    ``atlas_used_<layer>.npy``, ``alpha.npy``) still load unchanged; the new names make an
    older inve refuse the compact store with its "bake again" message instead of misreading it.
    """

    uv: dict[str, np.ndarray]
    alpha: np.ndarray
    atlas: dict[str, np.ndarray]
    atlas_used: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    #: storage dtype of the per-frame maps
    MAP_DTYPE = np.float16
    #: version of the maps folder's layout (1: float16 atlases + usage + alpha; 2: compact, see above)
    STORE = 2

    @property
    def layers(self) -> list[str]:
        return list(self.uv)

    @property
    def n_frames(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def work_size(self) -> tuple[int, int]:
        return int(self.alpha.shape[2]), int(self.alpha.shape[1])

    @classmethod
    def writer(cls, path: str | Path) -> Any:
        """A store in the maps folder ``path`` whose ``frame_array(name, shape)`` gives the
        memory-mapped arrays a bake writes into; pass it to :meth:`save` to commit them."""
        from core import arraystore  # noqa: PLC0415

        store = arraystore.StoreWriter(path)
        store.frame_array = lambda name, shape: store.create(name, shape, cls.MAP_DTYPE)  # type: ignore[attr-defined]
        return store

    def save(self, path: str | Path, store: Any = None) -> None:
        """Write the maps to the folder ``path`` (``meta.json`` last, as the commit marker).

        With ``store`` (from :meth:`writer`), maps already written into it are committed as
        they are instead of being copied."""
        from core import arraystore  # noqa: PLC0415

        store = store if store is not None else arraystore.StoreWriter(path)
        try:
            zero_alpha = list(self.uv) == ["bg"] and not any(np.any(self.alpha[t]) for t in range(self.n_frames))
            if not zero_alpha:
                out = store.create("alpha8", np.shape(self.alpha), np.uint8)
                for t in range(out.shape[0]):
                    out[t] = _alpha_to_u8(self.alpha[t])
            if store.has("alpha"):  # the bake's float16 frames: stored 8-bit (above) instead
                store.discard("alpha")
            for layer in self.uv:
                if not store.has(f"uv_{layer}"):
                    _put_frames(store, f"uv_{layer}", self.uv[layer], self.MAP_DTYPE)
                store.put(f"atlas8_{layer}", _to_u8(self.atlas[layer]), np.uint8)
            keep = {f"uv_{L}" for L in self.uv} | {f"atlas8_{L}" for L in self.uv} | (set() if zero_alpha else {"alpha8"})
            # arrays of an earlier bake this one does not use: other layers, the older store's
            # float16 atlases / usage maps, a zero alpha (removed with the old marker, before the renames)
            stale = [p.stem for p in Path(path).glob("*.npy") if not p.name.startswith(".") and p.stem not in keep]
            store.commit({"kind": "baked_maps", "store": self.STORE, "layers": list(self.uv), "frames": self.n_frames,
                          "work_size": list(self.work_size), "alpha": "zeros" if zero_alpha else "stored",
                          "meta": self.meta}, remove=stale)
        except BaseException:
            store.abort()
            raise

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """Only the maps' ``meta`` (cheap: ``info`` reads it without opening the arrays)."""
        from core import arraystore  # noqa: PLC0415

        path = Path(path)
        if path.is_dir():
            stored = arraystore.read_meta(path)
            if stored is None or stored.get("kind") != "baked_maps":
                raise InveError(f"the baked maps in {path} are incomplete or damaged; " + _REBAKE)
            return dict(stored.get("meta") or {})
        return {}

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "BakedMaps":
        """Maps from a ``maps/`` folder (memory-mapped unless ``mmap`` is False) or a format-1 ``maps.npz``."""
        from core import arraystore  # noqa: PLC0415

        path = Path(path)
        if path.is_dir():
            stored = arraystore.read_meta(path)
            if stored is None or stored.get("kind") != "baked_maps":
                raise InveError(f"the baked maps in {path} are incomplete (an interrupted bake); "
                                "train the project again (inve train --resume)")
            layers = [str(L) for L in stored.get("layers", [])]
            try:
                def get(name: str, mapped: bool) -> np.ndarray:
                    return arraystore.open_array(path, name, mmap=mapped)

                def has(name: str) -> bool:
                    return (path / f"{name}.npy").is_file()

                uv = {k: get(f"uv_{k}", mmap) for k in layers}
                if has("alpha8"):
                    alpha = Unit8Frames(get("alpha8", mmap))
                elif has("alpha") or stored.get("alpha") != "zeros" or not layers:
                    alpha = get("alpha", mmap)
                else:  # single-layer compact store: no file, a read-only zero view costs no memory
                    alpha = np.broadcast_to(np.zeros((), cls.MAP_DTYPE), tuple(np.shape(uv[layers[0]])[:3]))
                atlas = _LazyAtlas({k: (get(f"atlas8_{k}", True), 255.0) if has(f"atlas8_{k}")
                                    else (get(f"atlas_{k}", True), 1.0) for k in layers}, path)
                used = _LazyUsage(uv, alpha, {k: int(a.shape[0]) for k, (a, _) in atlas.stored.items()})
                for k in layers:
                    if has(f"atlas_used_{k}"):
                        used[k] = np.asarray(get(f"atlas_used_{k}", False), np.float32)
                maps = cls(uv=uv, alpha=alpha, atlas=atlas, atlas_used=used, meta=dict(stored.get("meta") or {}))
            except (OSError, ValueError, EOFError) as exc:
                raise InveError(f"the baked maps in {path} are damaged ({_first_line(exc)}); {_REBAKE}") from None
            _check_shapes(maps, path)
            return maps
        legacy = path.with_name(Project.MAPS_LEGACY) if path.name != Project.MAPS_LEGACY else path
        if not legacy.is_file():
            raise InveError(f"{path.parent} has no baked maps ({path.name}); train it first (inve train)")
        try:
            with np.load(legacy) as z:
                layers = [k[3:] for k in z.files if k.startswith("uv_")]
                maps = cls(uv={k: z[f"uv_{k}"] for k in layers}, alpha=z["alpha"],
                           atlas={k: z[f"atlas_{k}"] for k in layers},
                           atlas_used={k: z[f"atlas_used_{k}"] for k in layers})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InveError(f"the baked maps {legacy} are damaged ({_first_line(exc)}); {_REBAKE}") from None
        _check_shapes(maps, legacy)
        return maps


_REBAKE = "run 'inve train VIDEO -o PROJECT --resume' to bake them again"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _check_shapes(maps: BakedMaps, path: Path) -> None:
    ok = bool(maps.uv) and np.ndim(maps.alpha) == 3 and maps.n_frames > 0 and all(
        tuple(np.shape(maps.uv[k])) == (*np.shape(maps.alpha), 2)
        and np.ndim(maps.atlas.stored[k][0] if isinstance(maps.atlas, _LazyAtlas) else maps.atlas[k]) == 3
        for k in maps.uv)
    if not ok:
        raise InveError(f"the baked maps in {path} are damaged (arrays of inconsistent shapes); {_REBAKE}")


class Unit8Frames:
    """A stored uint8 [T, ...] array read as float32 0..1 (``x / 255``), frame by frame.

    Behaves like the float16 memory-mapped arrays readers already index (``a[t]``,
    ``a[t, ::s, ::s]``, ``a.shape``, ``np.asarray(a[t], np.float32)``); only what is indexed
    is converted, so a long shot's alpha still costs no memory until read."""

    dtype = np.dtype(np.float32)

    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    @property
    def ndim(self) -> int:
        return int(self.base.ndim)

    def __len__(self) -> int:
        return int(self.base.shape[0])

    def __getitem__(self, idx: Any) -> Any:
        return np.float32(1.0 / 255.0) * np.asarray(self.base[idx], np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype)


def _alpha_to_u8(alpha: np.ndarray) -> np.ndarray:
    """Opacity 0..1 as 8-bit, rounding halves down: x <= 0.5 stays <= 127/255 and x > 0.5
    becomes >= 128/255, so no pixel changes layer (:data:`core.layers.VISIBLE_ALPHA`)."""
    return np.ceil(np.clip(np.asarray(alpha, np.float32), 0.0, 1.0) * 255.0 - 0.5).astype(np.uint8)


def _to_u8(atlas: np.ndarray) -> np.ndarray:
    """Atlas colours 0..1 as 8-bit (round to nearest: within 1/510 of the input)."""
    return (np.clip(np.asarray(atlas, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class _LazyAtlas(Mapping):
    """``BakedMaps.atlas`` of a stored project: each layer's atlas is read as float32 when
    first asked for, from the array memory-mapped at load (the same file as the uv maps'
    even if a re-bake replaces it meanwhile).

    Why: reopening a segment converted its atlases every time (~30 ms and ~10 MB a layer
    for box.mp4's 896-texel atlases), and rendering a Propagate reads none of them: a warm
    Propagate of a 13-segment shot reopened every segment for 0.4 s of atlas conversions.
    """

    def __init__(self, stored: dict[str, tuple[np.ndarray, float]], path: Path) -> None:
        self.stored, self._path = stored, path
        self._float: dict[str, np.ndarray] = {}

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self._float:
            arr, scale = self.stored[layer]
            try:
                a = np.asarray(arr, np.float32)
            except (OSError, ValueError) as exc:
                raise InveError(f"the baked maps in {self._path} are damaged ({_first_line(exc)}); {_REBAKE}") \
                    from None
            self._float[layer] = a / scale if scale != 1.0 else np.array(a, copy=True)
        return self._float[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.stored

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)


class _LazyUsage(dict):
    """``BakedMaps.atlas_used`` of a compact store: each layer's usage map is computed from
    the stored uv/alpha when first asked for (what the bake computed, from the same arrays)."""

    def __init__(self, uv: dict[str, np.ndarray], alpha: np.ndarray, sizes: dict[str, int]) -> None:
        super().__init__()
        self._uv, self._alpha, self._sizes = uv, alpha, sizes

    def __missing__(self, layer: str) -> np.ndarray:
        if layer not in self._uv:
            raise KeyError(layer)
        from core.bake import atlas_usage  # noqa: PLC0415 - torch/cv2 only when a usage map is wanted

        self[layer] = atlas_usage(self._uv[layer], self._alpha, self._sizes[layer], layer)
        return self[layer]


def _put_frames(store: Any, name: str, array: np.ndarray, dtype: Any) -> None:
    """Store a [T, ...] array frame by frame (no whole-clip converted copy)."""
    out = store.create(name, np.shape(array), dtype)
    for t in range(out.shape[0]):
        out[t] = array[t]


class LayeredMapping(Protocol):
    """The trained mappings, in source pixel coordinates and project frame indices.

    Implemented by the neural model (``core.model.ModelMapping``) and, in tests, by
    analytic ground-truth motions. All arrays are numpy float arrays; ``t`` may be
    fractional.
    """

    layers: Sequence[str]

    def forward(self, layer: str, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(x, y, t) -> atlas uv, shape [N, 2]."""

    def inverse(self, layer: str, uv: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(u, v, t) -> source pixel (x, y), shape [N, 2]."""

    def alpha(self, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(x, y, t) -> foreground opacity in 0..1, shape [N]."""


class Project:
    """A project folder on disk. Cheap to open; heavy parts load lazily."""

    INFO = "project.json"
    FRAMES = "frames.npy"  # format 1 only: source frames at full resolution
    MAPS = "maps"  # folder of memory-mapped arrays (BakedMaps)
    MAPS_LEGACY = "maps.npz"  # format 1
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.json"
    CONFIRMED = "confirmed_keys.json"  # keys the user confirmed (core/correct.py)

    def __init__(self, path: str | Path, info: ProjectInfo) -> None:
        self.path = Path(path)
        self.info = info
        self._maps: BakedMaps | None = None
        self._mapping: LayeredMapping | None = None
        self._frames: Any = None
        self._segments: list["Project"] | None = None

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "Project":
        path = Path(path)
        if not path.exists():
            raise InveError(f"project folder not found: {path}")
        if not (path / cls.INFO).is_file():
            raise InveError(f"{path} is not an inve project (no {cls.INFO}); create one with 'inve train'")
        info = ProjectInfo.from_json(fsutil.read_json(path / cls.INFO, "project file"), str(path / cls.INFO))
        return cls(path, info)

    def save_info(self) -> None:
        fsutil.write_json(self.path / self.INFO, self.info.to_json())

    # -- segments (core.segments dispatches edits and tracks over them) --------------------
    @property
    def is_segmented(self) -> bool:
        return bool(self.info.segments)

    def segment_path(self, name: str) -> Path:
        return self.path / SEGMENTS_DIR / name

    def segments(self) -> list["Project"]:
        """The segments' own projects, in frame order; a clear error when one is missing or
        does not match what ``project.json`` says about it."""
        if self._segments is None:
            subs = []
            for s in self.info.segments or []:
                p = self.segment_path(s["name"])
                if not (p / self.INFO).is_file():
                    raise InveError(f"{self.path}: segment {s['name']} ({s['frames'][0]}:{s['frames'][1]}) is missing "
                                    f"({p} holds no {self.INFO}); run 'inve train VIDEO -o {self.path} --resume'")
                sub = Project.open(p)
                a, b = s["frames"]
                if sub.info.frames[0] != a or sub.info.frames[-1] + 1 != b:
                    raise InveError(f"{p} holds frames {sub.info.frames[0]}:{sub.info.frames[-1] + 1}, "
                                    f"{self.INFO} says {a}:{b}; the project is damaged: train it again")
                subs.append(sub)
            self._segments = subs
        return self._segments

    def _no_single(self, what: str) -> InveError:
        return InveError(f"{self.path} is split into {len(self.info.segments or [])} segments: it has no single "
                         f"{what} (each segment has its own, in {SEGMENTS_DIR}/<name>/)")

    # -- contents ----------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.state()[0] == "trained"

    def _maps_path(self) -> Path | None:
        for p in (self.path / self.MAPS, self.path / self.MAPS_LEGACY):
            if p.exists():
                return p
        return None

    def state(self) -> tuple[str, str]:
        """``(state, why)``: "trained", "needs bake" (networks newer than the maps, or maps
        missing or interrupted), "untrained" (nothing trained yet) or "damaged" (see ``why``)."""
        from core import checkpoint  # noqa: PLC0415

        if self.is_segmented:
            return self._segments_state()
        ckpt, maps = self.path / self.CHECKPOINT, self._maps_path()
        if maps is None:
            return ("needs bake", "no baked maps yet") if ckpt.is_file() else ("untrained", "")
        if not ckpt.is_file():
            return "needs bake", f"no {self.CHECKPOINT}"
        try:
            meta = BakedMaps.read_meta(maps)
        except InveError as exc:
            return "needs bake", str(exc)
        kind, why = checkpoint.maps_state(meta, self.info, ckpt)
        if kind == "ok":
            return "trained", ""
        return ("needs bake" if kind == "stale" else "damaged"), why

    def _segments_state(self) -> tuple[str, str]:
        """A segmented project is trained when every segment is; else the first problem."""
        states = []
        for s in self.info.segments or []:
            p = self.segment_path(s["name"])
            if not (p / self.INFO).is_file():  # not started yet (a run stopped before it)
                states.append((s["name"], "untrained", "not trained yet"))
                continue
            try:
                sub = Project.open(p)
            except InveError as exc:
                states.append((s["name"], "damaged", str(exc)))
                continue
            if [sub.info.frames[0], sub.info.frames[-1] + 1] != list(s["frames"]):
                states.append((s["name"], "damaged", f"it holds frames {sub.info.frames[0]}:{sub.info.frames[-1] + 1}"))
                continue
            states.append((s["name"], *sub.state()))
        for want in ("damaged", "needs bake", "untrained"):
            bad = [(n, why) for n, st, why in states if st == want]
            if bad:
                if want == "untrained" and len(bad) == len(states):
                    return "untrained", ""
                n, why = bad[0]
                return ("damaged" if want == "damaged" else "needs bake"), \
                    f"segment {n}: {why or want}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        return "trained", ""

    def maps(self) -> BakedMaps:
        """The baked maps; refused when they belong to another project or checkpoint."""
        if self.is_segmented:
            raise self._no_single("set of baked maps")
        if self._maps is None:
            from core import checkpoint  # noqa: PLC0415

            maps = BakedMaps.load(self.path / self.MAPS)
            hint = checkpoint.RESUME_HINT.format(project=self.path)
            kind, why = checkpoint.maps_state(maps.meta, self.info, self.path / self.CHECKPOINT)
            if kind != "ok":
                raise InveError(f"{self.path}: {why}; {hint}")
            if maps.n_frames != self.info.n_frames or set(maps.layers) != set(self.info.layers):
                raise InveError(f"{self.path} is inconsistent: {self.info.n_frames} frame(s) and layers "
                                f"{self.info.layers} in {self.INFO}, {maps.n_frames} and {maps.layers} in the "
                                f"baked maps; {hint}")
            self._maps = maps
        return self._maps

    def source_path(self) -> Path:
        """The source video: relative to the project, else at its absolute path; a clear error if moved.

        The relative place comes first: a project copied together with its footage (another
        disk, another machine) then reads its own copy, not a stale original.
        """
        places = [Path(self.info.source)]
        if self.info.source_relative:
            places.insert(0, self.path / self.info.source_relative)
        for p in places:
            if p.exists():
                return p
        where = " nor at ".join(str(p) for p in places)
        raise InveError(f"the source video of project {self.path} is not at {where}: it was moved "
                        "or deleted; put it back (the project keeps no copy of its frames)")

    def frames(self) -> Any:
        """Source frames by project index, uint8 [H, W, 3] at original resolution.

        Decoded on demand from the source (:class:`core.video.FrameSource`: sequential
        decode, a small LRU cache); format-1 projects read their stored ``frames.npy``.
        """
        if self._frames is None:
            p = self.path / self.FRAMES
            if p.is_file():
                W, H = self.info.source_size
                again = f"delete {p.name} and run 'inve train VIDEO -o {self.path} --resume' to decode them again"
                try:
                    frames = np.load(p, mmap_mode="r")
                except (OSError, ValueError, EOFError) as exc:
                    raise InveError(f"the project's frames {p} are damaged ({_first_line(exc)}); {again}") from None
                if frames.dtype != np.uint8 or frames.shape != (self.info.n_frames, H, W, 3):
                    raise InveError(f"the project's frames {p} do not match {self.INFO} "
                                    f"({tuple(frames.shape)} vs {(self.info.n_frames, H, W, 3)}); {again}")
                self._frames = frames
            else:
                from core.video import FrameSource  # noqa: PLC0415 - video I/O only when rendering

                self._frames = FrameSource(self.source_path(), self.info.frames, self.info.source_size)
        return self._frames

    def size_on_disk(self) -> int:
        """Bytes of every file in the project folder."""
        from core.arraystore import folder_size  # noqa: PLC0415

        return folder_size(self.path)

    def mapping(self, device: str = "cpu") -> LayeredMapping:
        """The trained networks as a :class:`LayeredMapping` (imports torch).

        Refuses a damaged checkpoint, one of another project, and one that the baked maps
        were not baked from (maps and networks would disagree), each with one line."""
        if self.is_segmented:
            raise self._no_single("set of networks")
        if self._mapping is None:
            from core import checkpoint  # noqa: PLC0415
            from core.model import ModelMapping, load_model  # noqa: PLC0415

            ckpt = self.path / self.CHECKPOINT
            if not ckpt.is_file():
                raise InveError(f"{self.path} has no trained networks ({self.CHECKPOINT}); train it first")
            if ckpt.stat().st_size == 0:
                checkpoint.read_checkpoint(ckpt, device)  # raises: one line saying what to do
            try:
                model, state = load_model(ckpt, device)
            except InveError as exc:
                raise InveError(f"{str(exc).splitlines()[0]}; delete {ckpt.name} and train again with "
                                f"'inve train VIDEO -o {self.path} --resume'") from None
            checkpoint.check_belongs(state, self.info, ckpt)
            del state
            if self._maps_path() is not None:
                self.maps()  # raises when the maps were baked from another checkpoint
            self._mapping = ModelMapping(model, tuple(self.info.source_size))
        return self._mapping

    def metrics(self) -> dict[str, Any]:
        p = self.path / self.METRICS
        if not p.is_file():
            return {}
        m = fsutil.read_json(p, "metrics file")
        if not isinstance(m, dict):
            raise InveError(f"metrics file {p} is damaged (not a JSON object); 'inve train --resume' rewrites it")
        return m

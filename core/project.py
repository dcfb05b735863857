"""The project folder: what training leaves behind and what editing reads.

Layout (see ARCHITECTURE.md)::

    PROJECT/
      project.json      ProjectInfo: source, frame range, sizes, fps, layers, settings, versions
      frames.npy        uint8 [T,H,W,3] source frames at original resolution (edits render on them)
      cache/            preprocessing: flow, masks (reused by --resume)
      checkpoint.pt     networks + optimizer + step (written atomically, resumable)
      maps.npz          baked per-frame UV maps, alpha maps and float atlases (BakedMaps)
      atlas_bg.png      atlas images for people (and for painting, see `inve atlas`)
      metrics.json      psnr, iterations, train_seconds, ...

Coordinates: everything outside this package speaks *source pixel coordinates* (x right,
y down, pixel centres at i+0.5) and *project frame indices* t = 0..T-1 (source frame =
``info.frames[t]``). Atlas coordinates ``uv`` are in [-1, 1]^2; an atlas image of size A
covers that square with pixel centres at uv = 2*(i+0.5)/A - 1, which is exactly
``torch.nn.functional.grid_sample(..., align_corners=False)``.
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from core import PROJECT_FORMAT, __version__
from core.errors import InveError
from core import fsutil

LAYERS: tuple[str, ...] = ("bg", "fg")


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
    format: int = PROJECT_FORMAT
    tool_version: str = __version__
    # content fingerprint of the source (core.identity): finds the project again after a
    # rename, and tells a checkpoint of this project from a copy of another one
    source_fingerprint: str | None = None

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
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "project.json") -> "ProjectInfo":
        fix = f"restore it from a backup or train the project again into a new folder"
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
        elif info.frames != list(range(info.frames[0], info.frames[0] + len(info.frames))) or info.frames[0] < 0:
            problems.append("frames are not a range of source frames")
        if len(info.source_size) != 2 or min(info.source_size) <= 0 or len(info.work_size) != 2 \
                or min(info.work_size) <= 0:
            problems.append("sizes must be positive")
        if not info.layers or any(L not in LAYERS for L in info.layers):
            problems.append(f"layers must be among {list(LAYERS)}")
        if not (info.fps > 0 and info.fps < 1e4):
            problems.append("bad fps")
        if problems:
            raise InveError(f"{where} is damaged ({', '.join(problems)}); {fix}")
        return info


@dataclass
class BakedMaps:
    """Per-frame maps baked after training: edits read these instead of running networks.

    ``uv[layer]``: float32 [T, h, w, 2] atlas coordinates of every working-resolution pixel.
    ``alpha``: float32 [T, h, w] foreground opacity (zeros for a single-layer project).
    ``atlas[layer]``: float32 [A, A, 3] atlas colours in 0..1 (the networks' reconstruction).
    ``atlas_used[layer]``: float32 [A, A] how much of each atlas texel any frame shows (0..1).
    """

    uv: dict[str, np.ndarray]
    alpha: np.ndarray
    atlas: dict[str, np.ndarray]
    atlas_used: dict[str, np.ndarray]
    # where the maps came from (core.checkpoint.maps_meta): the project's identity and the
    # checkpoint (step, size, sha256) they were baked from; {} for maps of older versions
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.uv)

    @property
    def n_frames(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def work_size(self) -> tuple[int, int]:
        return int(self.alpha.shape[2]), int(self.alpha.shape[1])

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"alpha": self.alpha.astype(np.float32, copy=False)}
        for layer in self.uv:
            arrays[f"uv_{layer}"] = self.uv[layer].astype(np.float32, copy=False)
            arrays[f"atlas_{layer}"] = self.atlas[layer].astype(np.float32, copy=False)
            arrays[f"atlas_used_{layer}"] = self.atlas_used[layer].astype(np.float32, copy=False)
        arrays["meta"] = np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8)
        fsutil.save_npz(path, **arrays)

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """Only the maps' ``meta`` (cheap: ``info`` reads it without loading the arrays)."""
        path = Path(path)
        try:
            with np.load(path) as z:
                if "alpha" not in z.files:
                    raise KeyError("alpha")
                return json.loads(bytes(z["meta"]).decode()) if "meta" in z.files else {}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InveError(f"the baked maps {path} are damaged ({first}); train the project again with "
                            "'inve train VIDEO -o PROJECT --resume' (it re-bakes the maps)") from None

    @classmethod
    def load(cls, path: str | Path) -> "BakedMaps":
        path = Path(path)
        if not path.is_file():
            raise InveError(f"{path.parent} has no baked maps ({path.name}); train it first (inve train)")
        fix = "train the project again with 'inve train VIDEO -o PROJECT --resume' (it re-bakes the maps)"
        try:
            with np.load(path) as z:
                layers = [k[3:] for k in z.files if k.startswith("uv_")]
                meta = json.loads(bytes(z["meta"]).decode()) if "meta" in z.files else {}
                maps = cls(uv={k: z[f"uv_{k}"] for k in layers}, alpha=z["alpha"],
                           atlas={k: z[f"atlas_{k}"] for k in layers},
                           atlas_used={k: z[f"atlas_used_{k}"] for k in layers}, meta=meta)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InveError(f"the baked maps {path} are damaged ({first}); {fix}") from None
        T = maps.n_frames
        ok = bool(layers) and maps.alpha.ndim == 3 and all(
            maps.uv[k].shape == (*maps.alpha.shape, 2) and maps.atlas[k].ndim == 3 for k in layers)
        if not ok or T == 0:
            raise InveError(f"the baked maps {path} are damaged (inconsistent arrays); {fix}")
        return maps


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
    FRAMES = "frames.npy"
    MAPS = "maps.npz"
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.json"

    def __init__(self, path: str | Path, info: ProjectInfo) -> None:
        self.path = Path(path)
        self.info = info
        self._maps: BakedMaps | None = None
        self._mapping: LayeredMapping | None = None
        self._frames: np.ndarray | None = None

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

    # -- contents ----------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.state()[0] == "trained"

    def state(self) -> tuple[str, str]:
        """``(state, why)``: "trained", "needs bake" (networks newer than the maps, or maps
        missing), "untrained" (nothing trained yet) or "damaged" (see ``why``)."""
        from core import checkpoint

        ckpt, maps = self.path / self.CHECKPOINT, self.path / self.MAPS
        if not maps.is_file():
            return ("needs bake", "no baked maps yet") if ckpt.is_file() else ("untrained", "")
        if not ckpt.is_file():
            return "needs bake", f"no {self.CHECKPOINT}"
        try:
            meta = BakedMaps.read_meta(maps)
        except InveError as exc:
            return "damaged", str(exc)
        kind, why = checkpoint.maps_state(meta, self.info, ckpt)
        if kind == "ok":
            return "trained", ""
        return ("needs bake" if kind == "stale" else "damaged"), why

    def maps(self) -> BakedMaps:
        """The baked maps, refused when they do not belong to this project and checkpoint."""
        if self._maps is None:
            from core import checkpoint

            maps = BakedMaps.load(self.path / self.MAPS)
            kind, why = checkpoint.maps_state(maps.meta, self.info, self.path / self.CHECKPOINT)
            if kind != "ok":
                raise InveError(f"{self.path}: {why}; " + checkpoint.RESUME_HINT.format(project=self.path))
            if maps.n_frames != self.info.n_frames:
                raise InveError(f"{self.path} is inconsistent: {self.info.n_frames} frames in {self.INFO}, "
                                f"{maps.n_frames} in {self.MAPS}; "
                                + checkpoint.RESUME_HINT.format(project=self.path))
            self._maps = maps
        return self._maps

    def frames(self) -> np.ndarray:
        """Source frames, uint8 [T, H, W, 3] at original resolution (memory-mapped)."""
        if self._frames is None:
            p = self.path / self.FRAMES
            if not p.is_file():
                raise InveError(f"{self.path} has no {self.FRAMES}; the project is incomplete, train it again")
            W, H = self.info.source_size
            try:
                frames = np.load(p, mmap_mode="r")
            except (OSError, ValueError, EOFError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
                raise InveError(f"the project's frames {p} are damaged ({first}); delete {p.name} and run "
                                f"'inve train VIDEO -o {self.path} --resume' with the source video "
                                "to decode them again") from None
            if frames.dtype != np.uint8 or frames.shape != (self.info.n_frames, H, W, 3):
                raise InveError(f"the project's frames {p} do not match {self.INFO} "
                                f"({tuple(frames.shape)} vs {(self.info.n_frames, H, W, 3)}); delete {p.name} and "
                                f"run 'inve train VIDEO -o {self.path} --resume' to decode them again")
            self._frames = frames
        return self._frames

    def mapping(self, device: str = "cpu") -> LayeredMapping:
        """The trained networks as a :class:`LayeredMapping` (imports torch).

        Refuses a checkpoint of another project and one that the baked maps were not baked
        from (then the maps and networks would disagree)."""
        if self._mapping is None:
            from core import checkpoint
            from core.model import ModelMapping, load_model

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
            if (self.path / self.MAPS).is_file():
                self.maps()  # raises when the maps were baked from another checkpoint
            self._mapping = ModelMapping(model, tuple(self.info.source_size))
        return self._mapping

    def metrics(self) -> dict[str, Any]:
        p = self.path / self.METRICS
        if not p.is_file():
            return {}
        m = fsutil.read_json(p, "metrics file")
        if not isinstance(m, dict):
            raise InveError(f"metrics file {p} is damaged (not a JSON object); --resume rewrites it")
        return m

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
    def from_json(cls, d: dict[str, Any], where: str = "project.json") -> "ProjectInfo":
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
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise InveError(f"{where} is damaged: {exc}") from None


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
        fsutil.save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "BakedMaps":
        path = Path(path)
        if not path.is_file():
            raise InveError(f"{path.parent} has no baked maps ({path.name}); train it first (inve train)")
        with np.load(path) as z:
            layers = [k[3:] for k in z.files if k.startswith("uv_")]
            return cls(uv={k: z[f"uv_{k}"] for k in layers}, alpha=z["alpha"],
                       atlas={k: z[f"atlas_{k}"] for k in layers},
                       atlas_used={k: z[f"atlas_used_{k}"] for k in layers})


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
        return (self.path / self.MAPS).is_file() and (self.path / self.CHECKPOINT).is_file()

    def maps(self) -> BakedMaps:
        if self._maps is None:
            self._maps = BakedMaps.load(self.path / self.MAPS)
        return self._maps

    def frames(self) -> np.ndarray:
        """Source frames, uint8 [T, H, W, 3] at original resolution (memory-mapped)."""
        if self._frames is None:
            p = self.path / self.FRAMES
            if not p.is_file():
                raise InveError(f"{self.path} has no {self.FRAMES}; the project is incomplete, train it again")
            self._frames = np.load(p, mmap_mode="r")
        return self._frames

    def mapping(self, device: str = "cpu") -> LayeredMapping:
        """The trained networks as a :class:`LayeredMapping` (imports torch)."""
        if self._mapping is None:
            from core.model import load_mapping

            ckpt = self.path / self.CHECKPOINT
            if not ckpt.is_file():
                raise InveError(f"{self.path} has no trained networks ({self.CHECKPOINT}); train it first")
            self._mapping = load_mapping(ckpt, self.info, device=device)
        return self._mapping

    def metrics(self) -> dict[str, Any]:
        p = self.path / self.METRICS
        return fsutil.read_json(p, "metrics file") if p.is_file() else {}

"""Pixel <-> normalised frame coordinates: the one definition the engine uses.

The networks see a frame position ``p`` normalised so the longest side of the *working*
raster spans [-1, 1] (aspect kept: a 4:3 frame spans [-1, 1] x [-0.75, 0.75]), pixel centres
at i + 0.5 (ARCHITECTURE.md). Everything outside the networks speaks source pixels.

Why one module: training sampled pixels of the working raster and normalised by the working
size, while the source-pixel adapter normalised by the source size. The two agree only when
the working size is an exact scale of the source size; ``working_size`` rounds each side, so a
1000x563 clip trained at 256x144 is stretched by 0.256 horizontally and 0.2558 vertically,
and the old adapter put points up to a fraction of a pixel off. Here a source position first
goes to the working raster by the same per-axis scale the frames were resized with (edge
aligned, as ``cv2.resize`` and ``grid_sample(align_corners=False)`` do), then is normalised
by the working size: exactly the space the networks were trained in. At exact scales the
result is identical to before, so every existing checkpoint reads the same or better.

Functions accept numpy arrays or torch tensors (elementwise arithmetic only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameCoords:
    """Normalised coordinates of a ``width`` x ``height`` raster (the networks' frame space)."""

    width: int
    height: int

    @property
    def half(self) -> float:
        """Pixels of this raster per normalised unit (half the long side)."""
        return max(self.width, self.height) / 2.0

    @property
    def extent(self) -> tuple[float, float]:
        """Half-extent of the frame in normalised units: (1, h/w) for a landscape frame."""
        return self.width / (2.0 * self.half), self.height / (2.0 * self.half)

    def to_norm(self, xy: Any) -> Any:
        """Raster pixels [..., 2] -> normalised positions."""
        xy = _as_array(xy)
        cx, cy = self.width / 2.0, self.height / 2.0
        return _stack_like(xy, (xy[..., 0] - cx) / self.half, (xy[..., 1] - cy) / self.half)

    def from_norm(self, p: Any) -> Any:
        """Normalised positions [..., 2] -> raster pixels."""
        p = _as_array(p)
        cx, cy = self.width / 2.0, self.height / 2.0
        return _stack_like(p, p[..., 0] * self.half + cx, p[..., 1] * self.half + cy)

    def pixel_centres(self, device: Any = "cpu") -> Any:
        """Normalised positions of every pixel centre, row-major: torch float32 [h*w, 2]."""
        import torch  # noqa: PLC0415 - numpy users of this module need no torch

        ys, xs = torch.meshgrid(torch.arange(self.height, dtype=torch.float32, device=device),
                                torch.arange(self.width, dtype=torch.float32, device=device), indexing="ij")
        return self.to_norm(torch.stack([xs + 0.5, ys + 0.5], dim=-1)).reshape(-1, 2)


@dataclass(frozen=True)
class SourceCoords:
    """Source pixels <-> the normalised space of networks trained at ``work_size``."""

    source_size: tuple[int, int]  # (W, H)
    work_size: tuple[int, int]  # (w, h)

    @property
    def work(self) -> FrameCoords:
        return FrameCoords(*self.work_size)

    @property
    def scale(self) -> tuple[float, float]:
        """Working pixels per source pixel, per axis."""
        return self.work_size[0] / self.source_size[0], self.work_size[1] / self.source_size[1]

    def to_norm(self, xy: Any) -> Any:
        xy = _as_array(xy)
        sx, sy = self.scale
        return self.work.to_norm(_stack_like(xy, xy[..., 0] * sx, xy[..., 1] * sy))

    def from_norm(self, p: Any) -> Any:
        sx, sy = self.scale
        w = self.work.from_norm(p)
        return _stack_like(w, w[..., 0] / sx, w[..., 1] / sy)

    def delta_to_source_px(self, d: Any) -> Any:
        """A normalised displacement [..., 2] as a source-pixel displacement."""
        d = _as_array(d)
        sx, sy = self.scale
        half = self.work.half
        return _stack_like(d, d[..., 0] * half / sx, d[..., 1] * half / sy)


def _as_array(a: Any) -> Any:
    """Torch tensors stay tensors; anything else becomes a float64 numpy array."""
    return a if _is_tensor(a) else np.asarray(a, dtype=np.float64)


def _is_tensor(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _stack_like(like: Any, x: Any, y: Any) -> Any:
    if not _is_tensor(like):
        return np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], axis=-1)
    import torch  # noqa: PLC0415

    return torch.stack([x, y], dim=-1)


__all__ = ["FrameCoords", "SourceCoords"]

"""Colour adjustment: hue, saturation, brightness, contrast as one affine colour map.

Why affine: hue rotation and saturation are done in YIQ (luma + two chroma axes), where a
hue shift is a rotation of the chroma plane and saturation its scale; together with
contrast (about mid-grey) and brightness (an offset) the whole adjustment is one 3x3
matrix plus an offset per pixel, cheap enough to re-run on every frame.
"""
from __future__ import annotations

import math

import numpy as np

_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.595716, -0.274453, -0.321263],
                     [0.211456, -0.522591, 0.311135]], np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def color_matrix(hue: float, saturation: float) -> np.ndarray:
    """3x3 RGB matrix: hue shift by ``hue`` turns (red -> yellow -> green for positive), saturation factor."""
    h = 2.0 * math.pi * hue
    c, s = math.cos(h), math.sin(h)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    scale = np.diag([1.0, saturation, saturation])
    return (_YIQ2RGB @ scale @ rot @ _RGB2YIQ).astype(np.float32)


def adjust_colors(rgb: np.ndarray, hue: float = 0.0, saturation: float = 1.0, brightness: float = 0.0,
                  contrast: float = 1.0) -> np.ndarray:
    """Adjust float RGB in 0..1 [..., 3]; result clipped to 0..1."""
    m = color_matrix(hue, saturation)
    out = rgb @ m.T
    out = (out - 0.5) * contrast + (0.5 + brightness)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

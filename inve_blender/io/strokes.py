"""Strokes drawn in Blender -> ``sketch`` / ``adjust`` layers in source pixels.

Two sources: annotation strokes drawn with the Annotate tool in the Sequencer preview
(``SpaceSequenceEditor.annotation`` in 5.0, ``.grease_pencil`` in 4.x; points in preview
View2D coordinates: render pixels, centred, y up) and strokes of Grease Pencil (v3)
objects, seen through the scene camera the way the render sees them. Both go through
:class:`~inve_blender.io.strip_map.StripPlacement` into the movie strip's source pixels.

The annotation reader only touches attributes of the objects it is given; the conversion
functions are plain Python and tested without Blender. The Grease Pencil reader needs
Blender's camera projection and lives in ``blender/gp_strokes.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .strip_map import StripPlacement

Point = tuple[float, float]


@dataclass
class Stroke:
    """One stroke in source pixels (x right, y down), sRGB colour, width in source pixels."""

    points: list[Point]
    color: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)
    width: float = 4.0
    cyclic: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"points": [[round(x, 3), round(y, 3)] for x, y in self.points],
                "color": [round(float(c), 4) for c in self.color], "width": round(float(self.width), 3)}


@dataclass
class StrokeSet:
    """The strokes found on one frame, and where they came from (for messages)."""

    strokes: list[Stroke] = field(default_factory=list)
    source: str = ""


# ---------------------------------------------------------------------------------------
# pure conversions
def linear_to_srgb(c: float) -> float:
    """Scene-linear channel -> sRGB (what EDITS.json and PNGs hold)."""
    c = min(max(float(c), 0.0), 1.0)
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1.0 / 2.4) - 0.055


def view_points_to_source(points: Iterable[Sequence[float]], placement: StripPlacement) -> list[Point]:
    """Preview View2D points (annotation ``co``) -> source pixels."""
    return [placement.view_to_source(float(p[0]), float(p[1])) for p in points]


def camera_ndc_to_view(nx: float, ny: float, render_size: tuple[float, float]) -> Point:
    """Normalised camera-frame coordinates (0..1, origin bottom-left) -> View2D render pixels."""
    W, H = render_size
    return nx * W - W / 2.0, ny * H - H / 2.0


def polyline_length(points: Sequence[Point]) -> float:
    return sum(math.dist(points[i], points[i + 1]) for i in range(len(points) - 1))


def is_closed(stroke: Stroke, tolerance: float | None = None) -> bool:
    """A stroke encloses a region if Blender marks it cyclic or its ends (nearly) meet.

    Default tolerance: the larger of three stroke widths and 15 % of the bounding box
    diagonal, so a hand-drawn loop whose ends miss by a few pixels still counts.
    """
    pts = stroke.points
    if len(pts) < 3:
        return False
    if stroke.cyclic:
        return True
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    diag = math.hypot(max(xs) - min(xs), max(ys) - min(ys))
    if diag <= 0 or polyline_length(pts) < 2.0 * diag:
        return False  # a straight-ish line never encloses anything
    tol = tolerance if tolerance is not None else max(3.0 * stroke.width, 0.15 * diag)
    return math.dist(pts[0], pts[-1]) <= tol


def sketch_layer(strokes: Sequence[Stroke], frame: int) -> dict[str, Any]:
    """EDITS.json ``sketch`` layer drawn on source frame ``frame``."""
    if not strokes:
        raise ValueError("no strokes to turn into a sketch layer")
    return {"type": "sketch", "frame": int(frame), "strokes": [s.to_json() for s in strokes if len(s.points) >= 1]}


def adjust_layer(stroke: Stroke, frame: int, hue: float = 0.0, saturation: float = 1.0,
                 brightness: float = 0.0, contrast: float = 1.0) -> dict[str, Any]:
    """EDITS.json ``adjust`` layer whose region is the polygon of a closed stroke."""
    if len(stroke.points) < 3:
        raise ValueError("a region needs a closed stroke of at least three points")
    return {"type": "adjust", "frame": int(frame),
            "region": {"polygon": [[round(x, 3), round(y, 3)] for x, y in stroke.points]},
            "hue": float(hue), "saturation": float(saturation), "brightness": float(brightness),
            "contrast": float(contrast)}


def mix_gp_color(material_rgba: Sequence[float], vertex_rgba: Sequence[float], opacity: float) -> tuple[float, ...]:
    """Grease Pencil display colour: the vertex colour mixes over the material colour by its
    alpha; point opacity scales alpha. Inputs scene-linear, result sRGB."""
    a = float(vertex_rgba[3]) if len(vertex_rgba) > 3 else 0.0
    rgb = [float(m) * (1.0 - a) + float(v) * a for m, v in zip(material_rgba[:3], vertex_rgba[:3])]
    alpha = float(material_rgba[3] if len(material_rgba) > 3 else 1.0) * float(opacity)
    return (*(linear_to_srgb(c) for c in rgb), min(max(alpha, 0.0), 1.0))


# ---------------------------------------------------------------------------------------
# Blender readers (duck-typed; no bpy import needed)
def _frame_at(frames: Any, scene_frame: int) -> Any:
    """The key frame in effect at ``scene_frame`` (drawings hold until the next key)."""
    best = None
    for fr in frames:
        if fr.frame_number <= scene_frame and (best is None or fr.frame_number > best.frame_number):
            best = fr
    return best


def annotation_data(space: Any) -> Any:
    """The Sequencer editor's annotation datablock (5.0 ``annotation``, 4.x ``grease_pencil``)."""
    if hasattr(space, "annotation"):
        return space.annotation
    return getattr(space, "grease_pencil", None)


def read_annotation_strokes(annotation: Any, scene_frame: int, placement: StripPlacement) -> list[Stroke]:
    """Annotation strokes shown at ``scene_frame`` (visible layers), in source pixels.

    Colour is the layer colour (annotations have no per-stroke colour), width the layer
    thickness (screen pixels, taken as render pixels) converted to source pixels.
    """
    if annotation is None:
        return []
    out: list[Stroke] = []
    scale = placement.pixels_per_source_pixel()
    for layer in annotation.layers:
        if getattr(layer, "annotation_hide", False) or getattr(layer, "hide", False):
            continue
        frame = _frame_at(layer.frames, scene_frame)
        if frame is None:
            continue
        r, g, b = (float(c) for c in tuple(layer.color)[:3])
        alpha = float(getattr(layer, "annotation_opacity", 1.0))
        width = float(getattr(layer, "thickness", 3)) / scale
        for st in frame.strokes:
            pts = view_points_to_source([(p.co[0], p.co[1]) for p in st.points], placement)
            if pts:
                out.append(Stroke(points=pts, color=(r, g, b, alpha), width=max(width, 0.5)))
    return out

"""Mark Foreground: outlines drawn in Blender -> HINTS.json for ``inve train --fg-hint`` (no bpy).

The engine grows a closed outline of the moving object, on one or a few frames, into masks
for the whole clip (README, *Foreground hints*). In Blender the outline comes from the closed
strokes drawn on the frame under the playhead (Annotate tool, or Grease Pencil: already
converted to source pixels by :mod:`.strokes`) or from a Mask datablock drawn over the
strip's Movie Clip (Mask mode of the Movie Clip editor), whose splines are Bézier curves in
mask space. This module turns either into HINTS.json polygons in source pixels of the source
frame shown; the Blender glue only reads the RNA.

HINTS.json lives in the strip's workspace folder (where its project is or will be made), so
the hint belongs to that source and frame range like the project does. Marking a frame again
replaces that frame's hints; other frames keep theirs.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

from .edit_stack import write_json_atomic

HINTS_FILE = "HINTS.json"
Point = tuple[float, float]

#: samples per Bézier segment of a Mask spline (its handles bend the outline between points)
BEZIER_SAMPLES = 8


def hints_path(workspace_base: str) -> str:
    return os.path.join(workspace_base, HINTS_FILE)


def load(path: str) -> dict[str, Any]:
    """The hints document at ``path`` ({"version": 1, "hints": []} when there is none; a
    damaged file raises ValueError naming it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return {"version": 1, "hints": []}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}): Clear Foreground Hint and mark it again") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("hints"), list):
        raise ValueError(f"{path} is not a hints file: Clear Foreground Hint and mark it again")
    return doc


def polygon_area(poly: Sequence[Point]) -> float:
    return 0.5 * abs(sum(poly[i][0] * poly[i - 1][1] - poly[i - 1][0] * poly[i][1] for i in range(len(poly))))


def clean_polygon(points: Iterable[Sequence[float]], size: tuple[int, int]) -> list[list[float]]:
    """A usable outline: finite points clamped to the frame, consecutive duplicates dropped,
    the closing point (equal to the first) dropped. ValueError if nothing is enclosed."""
    W, H = size
    out: list[list[float]] = []
    for p in points:
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        q = [round(min(max(x, 0.0), float(W)), 3), round(min(max(y, 0.0), float(H)), 3)]
        if not out or q != out[-1]:
            out.append(q)
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()
    if len(out) < 3 or polygon_area([(p[0], p[1]) for p in out]) < 1.0:
        raise ValueError("the outline encloses nothing inside the frame (fewer than 3 points or no area)")
    return out


def set_frame_hints(doc: dict[str, Any], frame: int, polygons: Sequence[tuple[Sequence[Sequence[float]], str]],
                    size: tuple[int, int]) -> dict[str, Any]:
    """``doc`` with the hints of source frame ``frame`` replaced by ``polygons`` ((points,
    label 'fg'|'bg') pairs, source pixels); hints of other frames kept, sorted by frame."""
    if not polygons:
        raise ValueError("no closed outline to mark")
    new = []
    for pts, label in polygons:
        if label not in ("fg", "bg"):
            raise ValueError(f"a hint is 'fg' or 'bg', not {label!r}")
        new.append({"frame": int(frame), "polygon": clean_polygon(pts, size), "label": label})
    kept = [h for h in doc.get("hints", []) if isinstance(h, dict) and h.get("frame") != int(frame)]
    return {"version": 1, "hints": sorted(kept + new, key=lambda h: int(h.get("frame", 0)))}


def save(path: str, doc: dict[str, Any]) -> None:
    write_json_atomic(path, doc)


def clear(path: str) -> bool:
    """Remove the hints file (the add-on's own); True if there was one."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def summary(doc: dict[str, Any]) -> str:
    """One panel line: how many outlines on which source frames."""
    hints = [h for h in doc.get("hints", []) if isinstance(h, dict)]
    if not hints:
        return ""
    frames = sorted({int(h.get("frame", 0)) for h in hints})
    n_fg = sum(1 for h in hints if h.get("label", "fg") == "fg")
    n_bg = len(hints) - n_fg
    what = f"{n_fg} outline{'s' if n_fg != 1 else ''}" + (f", {n_bg} background region{'s' if n_bg != 1 else ''}"
                                                          if n_bg else "")
    return f"Foreground hint: {what} on frame{'s' if len(frames) > 1 else ''} {', '.join(map(str, frames))}"


# -- Blender Mask splines -------------------------------------------------------------------
def bezier_polygon(points: Sequence[tuple[Point, Point, Point]], samples: int = BEZIER_SAMPLES) -> list[Point]:
    """A closed Bézier spline ((co, handle_left, handle_right) per point) sampled into a polygon."""
    out: list[Point] = []
    n = len(points)
    for i in range(n):
        p0, _, h0 = points[i]
        p1, h1, _ = points[(i + 1) % n]
        for k in range(samples):
            t = k / samples
            a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
            out.append((a * p0[0] + b * h0[0] + c * h1[0] + d * p1[0], a * p0[1] + b * h0[1] + c * h1[1] + d * p1[1]))
    return out


def mask_to_source(co: Sequence[float], size: tuple[int, int]) -> Point:
    """Mask space -> source pixels of a ``size`` frame (x right, y down).

    Mask space is Blender's: the frame's longer side spans 0..1, the shorter one is centred
    in it (a 2:1 frame has y from 0.25 to 0.75), y up (BKE_mask_coord_from_frame)."""
    W, H = size
    x, y = float(co[0]), float(co[1])
    if W > H:
        y = (y - 0.5) * (W / H) + 0.5
    elif H > W:
        x = (x - 0.5) * (H / W) + 0.5
    return x * W, (1.0 - y) * H


def mask_polygons(splines: Iterable[tuple[Sequence[tuple[Point, Point, Point]], str]],
                  size: tuple[int, int]) -> list[tuple[list[Point], str]]:
    """Mask splines ((points as (co, handle_left, handle_right) in mask space), label) ->
    (source-pixel polygon, label); splines of fewer than 3 points are skipped."""
    out = []
    for pts, label in splines:
        if len(pts) < 3:
            continue
        out.append(([mask_to_source(p, size) for p in bezier_polygon(pts)], label))
    return out


__all__ = ["HINTS_FILE", "bezier_polygon", "clean_polygon", "clear", "hints_path", "load", "mask_polygons",
           "mask_to_source", "save", "set_frame_hints", "summary"]

"""Mark Foreground without Blender: outlines and Mask splines -> HINTS.json (pure, no bpy)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inve_blender.io import fg_hints  # noqa: E402
from inve_blender.io.corrections import read_markers  # noqa: E402

SIZE = (200, 100)


def test_marking_a_frame_replaces_its_hints_and_keeps_the_others(tmp_path: Path) -> None:
    path = fg_hints.hints_path(str(tmp_path / "ws"))
    doc = fg_hints.load(path)
    assert doc == {"version": 1, "hints": []} and fg_hints.summary(doc) == ""
    square = [(10, 10), (50, 10), (50, 40), (10, 40), (10, 10)]  # closed by repeating the first point
    doc = fg_hints.set_frame_hints(doc, 12, [(square, "fg")], SIZE)
    doc = fg_hints.set_frame_hints(doc, 3, [([(60, 5), (90, 5), (90, 30)], "fg"), ([(0, 60), (30, 60), (30, 90)], "bg")],
                                   SIZE)
    fg_hints.save(path, doc)
    again = fg_hints.load(path)
    assert [h["frame"] for h in again["hints"]] == [3, 3, 12]
    assert again["hints"][2]["polygon"] == [[10, 10], [50, 10], [50, 40], [10, 40]], "closing point dropped"
    assert fg_hints.summary(again) == "Foreground hint: 2 outlines, 1 background region on frames 3, 12"
    # marking frame 3 again replaces its two hints
    doc = fg_hints.set_frame_hints(again, 3, [([(-20, -5), (250, -5), (250, 50)], "fg")], SIZE)
    assert [h["frame"] for h in doc["hints"]] == [3, 12]
    assert doc["hints"][0]["polygon"] == [[0, 0], [200, 0], [200, 50]], "clamped to the frame"
    # what the engine reads: core/hints.py accepts exactly this document
    from core.hints import parse_hints

    hints = parse_hints(json.loads(json.dumps(doc)), None, SIZE, list(range(20)), "HINTS.json")
    assert len(hints) == 2
    assert fg_hints.clear(path) and not fg_hints.clear(path)


def test_outlines_that_enclose_nothing_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encloses nothing"):
        fg_hints.set_frame_hints({"hints": []}, 0, [([(1, 1), (5, 5), (9, 9)], "fg")], SIZE)
    with pytest.raises(ValueError, match="encloses nothing"):
        fg_hints.set_frame_hints({"hints": []}, 0, [([(300, 300), (400, 300), (400, 400)], "fg")], SIZE)
    with pytest.raises(ValueError, match="no closed outline"):
        fg_hints.set_frame_hints({"hints": []}, 0, [], SIZE)
    bad = tmp_path / "HINTS.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*Clear Foreground Hint"):
        fg_hints.load(str(bad))


def test_mask_space_to_source_pixels() -> None:
    # Blender's mask space: the longer side spans 0..1, the shorter is centred, y up
    assert fg_hints.mask_to_source((0.0, 0.75), SIZE) == (0.0, 0.0)  # top-left of a 2:1 frame
    assert fg_hints.mask_to_source((1.0, 0.25), SIZE) == (200.0, 100.0)
    assert fg_hints.mask_to_source((0.5, 0.5), SIZE) == (100.0, 50.0)
    assert fg_hints.mask_to_source((0.25, 1.0), (100, 200)) == (0.0, 0.0)  # portrait: x is the short side
    assert fg_hints.mask_to_source((0.3, 0.6), (64, 64)) == pytest.approx((19.2, 25.6))


def test_bezier_splines_become_smooth_polygons() -> None:
    # a circle of radius r as 4 Bezier points with the usual handle length k*r
    r, k = 0.2, 4 * (math.sqrt(2) - 1) / 3
    c = (0.5, 0.5)
    pts = []
    for a in range(4):
        ang = a * math.pi / 2
        co = (c[0] + r * math.cos(ang), c[1] + r * math.sin(ang))
        t = (-math.sin(ang), math.cos(ang))
        pts.append((co, (co[0] - k * r * t[0], co[1] - k * r * t[1]), (co[0] + k * r * t[0], co[1] + k * r * t[1])))
    poly = fg_hints.bezier_polygon(pts, samples=8)
    assert len(poly) == 32
    radii = [math.dist(p, c) for p in poly]
    assert max(abs(x - r) for x in radii) < 0.001 * r * 10, "the handles bend the outline into the circle"
    (polygon, label), = fg_hints.mask_polygons([(pts, "fg"), (pts[:2], "fg")], (100, 100))
    assert label == "fg" and len(polygon) == 32
    xs = [p[0] for p in polygon]
    assert min(xs) == pytest.approx(30.0, abs=0.05) and max(xs) == pytest.approx(70.0, abs=0.05)


class _M:
    def __init__(self, frame: int, co: tuple[float, float]) -> None:
        self.frame, self.co = frame, co


class _T:
    def __init__(self, name: str, markers: list[_M]) -> None:
        self.name, self.markers = name, markers


def test_read_markers_takes_the_addons_tracks_only() -> None:
    tracks = [_T("INVE p0", [_M(1, (0.25, 0.5)), _M(2, (0.3, 0.5))]), _T("Track.001", [_M(1, (0.1, 0.1))])]
    assert read_markers(tracks, "INVE ") == {"p0": [(1, (0.25, 0.5)), (2, (0.3, 0.5))]}

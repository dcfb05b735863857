"""Markers moved in Blender -> CORRECTIONS.json (pure, no bpy)."""
from __future__ import annotations

import pytest

from inve_blender.io.corrections import corrections_from_markers

SIZE = (200, 100)


def _co(x, y):
    return x / SIZE[0], 1.0 - y / SIZE[1]


def test_moved_markers_become_keys_with_an_anchor():
    doc = {"frames": [10, 11, 12, 13],
           "tracks": [{"id": "p0", "layer": "bg", "xy": [[50, 40], [52, 41], [54, 42], [56, 43]],
                       "visible": [True, True, True, True], "error_px": [0.5, 0.1, 0.8, 1.2]},
                      {"id": "p1", "xy": [[10, 10]] * 4, "visible": [True] * 4}]}
    markers = {"p0": [(11, _co(50, 40)), (12, _co(52, 41)), (13, _co(55.0, 42.0)), (14, _co(60.0, 45.0))],
               "p1": [(f + 1, _co(10, 10)) for f in doc["frames"]]}  # p1 untouched
    out = corrections_from_markers(doc, markers, SIZE)
    assert [t["id"] for t in out["tracks"]] == ["p0"]
    keys = out["tracks"][0]["keys"]
    # moved: source frames 12 and 13 (clip frames 13, 14); anchor: frame 11 (smallest error_px)
    assert [k["frame"] for k in keys] == [11, 12, 13]
    assert keys[1]["x"] == pytest.approx(55.0) and keys[1]["y"] == pytest.approx(42.0)
    assert keys[2]["x"] == pytest.approx(60.0) and keys[2]["y"] == pytest.approx(45.0)
    assert keys[0] == {"frame": 11, "x": 52.0, "y": 41.0}
    assert out["tracks"][0]["layer"] == "bg"


def test_marker_outside_the_project_is_named():
    doc = {"frames": [0, 1], "tracks": [{"id": "a", "xy": [[1, 1], [2, 2]], "visible": [True, True]}]}
    with pytest.raises(ValueError, match="'a'.*clip frame 9"):
        corrections_from_markers(doc, {"a": [(9, _co(5, 5))]}, SIZE)

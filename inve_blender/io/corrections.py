"""Movie Clip markers moved by hand -> CORRECTIONS.json for ``inve correct`` (no bpy).

The add-on writes the engine's tracks as Movie Clip tracks (``inve_blender/tracking.py``:
one marker per frame, clip frame = source frame + 1, marker co normalised with y up). A
user who sees a track slide drags its marker on a few frames. This module compares the
markers with the positions the engine wrote and turns the moved ones into confirmed keys,
plus one anchor key where the engine is surest of the point (its smallest ``error_px``, or
the first visible frame), so the correction ties the moved positions to the point the user
tracked. The Blender glue only reads ``(frame, co)`` pairs off the clip's RNA.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

#: a marker farther than this from the engine's position (source px) was moved by the user
MOVED_PX = 0.25


def _source_px(co: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    W, H = size
    return float(co[0]) * W, (1.0 - float(co[1])) * H


def corrections_from_markers(tracks_doc: Mapping[str, Any], markers: Mapping[str, Iterable[tuple[int, tuple[float, float]]]],
                             size: tuple[int, int], moved_px: float = MOVED_PX) -> dict[str, Any]:
    """CORRECTIONS.json document from the engine's TRACKS.json and the clip's markers.

    ``markers[track_id]``: ``(clip_frame, (u, v))`` for every marker of that track now in the
    clip. Tracks whose markers were not moved are left out; a ValueError names a track whose
    markers name frames outside the project.
    """
    frames = [int(f) for f in tracks_doc.get("frames", [])]
    index = {f: i for i, f in enumerate(frames)}
    out = []
    for tr in tracks_doc.get("tracks", []):
        tid = str(tr.get("id"))
        if tid not in markers:
            continue
        xy = tr.get("xy", [])
        keys = []
        for clip_frame, co in markers[tid]:
            f = int(clip_frame) - 1
            if f not in index:
                raise ValueError(f"track {tid!r}: marker on clip frame {clip_frame} is outside the project's "
                                 f"frames {frames[0] + 1}..{frames[-1] + 1}")
            x, y = _source_px(co, size)
            ex, ey = xy[index[f]]
            if math.hypot(x - ex, y - ey) > moved_px:
                keys.append({"frame": f, "x": round(x, 3), "y": round(y, 3)})
        if not keys:
            continue
        moved = {k["frame"] for k in keys}
        vis = tr.get("visible") or [True] * len(frames)
        err = tr.get("error_px")
        candidates = [i for i, f in enumerate(frames) if vis[i] and f not in moved]
        if candidates:
            a = min(candidates, key=lambda i: err[i]) if err else candidates[0]
            ax, ay = xy[a]
            keys.append({"frame": frames[a], "x": round(float(ax), 3), "y": round(float(ay), 3)})
        if len(keys) >= 2:
            entry: dict[str, Any] = {"id": tid, "keys": sorted(keys, key=lambda k: k["frame"])}
            if tr.get("layer") in ("bg", "fg"):
                entry["layer"] = tr["layer"]
            out.append(entry)
    return {"tracks": out}


def read_markers(tracks: Iterable[Any], prefix: str) -> dict[str, list[tuple[int, tuple[float, float]]]]:
    """``(clip_frame, (u, v))`` of every marker of the clip's tracks named ``prefix + id``
    (the tracks the add-on wrote), by track id; other tracks (the user's own) are left out.
    ``tracks``: the clip's ``tracking.tracks`` (anything with ``name`` and ``markers`` whose
    items have ``frame`` and ``co``)."""
    out: dict[str, list[tuple[int, tuple[float, float]]]] = {}
    for tr in tracks:
        name = str(tr.name)
        if name.startswith(prefix):
            out[name[len(prefix):]] = [(int(m.frame), (float(m.co[0]), float(m.co[1]))) for m in tr.markers]
    return out


__all__ = ["corrections_from_markers", "read_markers", "MOVED_PX"]

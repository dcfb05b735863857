"""TRACKS.json -> Movie Clip tracking markers (one track per point, one marker per frame).

Blender's own tools (2D stabilisation, Plane Track Deform, Track To constraints) work on
Movie Clip tracks; putting the engine's tracks there lets users use them unchanged. Movie
clips number frames from 1 (clip frame = source frame + 1) and markers use normalised
coordinates with the origin at the bottom-left, so positions are converted here. Pure
functions are tested without Blender; :func:`apply_tracks` only uses the clip's RNA.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TRACK_PREFIX = "INVE "


@dataclass
class Track:
    id: str
    frames: list[int]
    xy: list[tuple[float, float]]
    visible: list[bool]


def parse_tracks(obj: Any) -> list[Track]:
    """Validate TRACKS.json (ARCHITECTURE.md) into tracks; a clear ValueError if malformed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("frames"), list) or not isinstance(obj.get("tracks"), list):
        raise ValueError("TRACKS.json must hold 'frames' and 'tracks' lists")
    frames = [int(f) for f in obj["frames"]]
    out = []
    for t in obj["tracks"]:
        xy, vis = t.get("xy"), t.get("visible")
        if not isinstance(xy, list) or len(xy) != len(frames):
            raise ValueError(f"track {t.get('id')!r}: 'xy' needs one entry per frame ({len(frames)})")
        if vis is None:
            vis = [True] * len(frames)
        if len(vis) != len(frames):
            raise ValueError(f"track {t.get('id')!r}: 'visible' needs one entry per frame")
        out.append(Track(id=str(t.get("id", f"p{len(out)}")), frames=frames,
                         xy=[(float(p[0]), float(p[1])) for p in xy], visible=[bool(v) for v in vis]))
    return out


def load_tracks(path: str) -> list[Track]:
    with open(path, encoding="utf-8") as fh:
        return parse_tracks(json.load(fh))


def clip_frame(source_frame: int) -> int:
    return int(source_frame) + 1


def to_marker_co(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """Source pixel (x right, y down) -> marker co (0..1, y up)."""
    W, H = size
    return x / W, 1.0 - y / H


def from_marker_co(u: float, v: float, size: tuple[int, int]) -> tuple[float, float]:
    W, H = size
    return u * W, (1.0 - v) * H


def points_json(points: list[tuple[float, float]], frame: int) -> dict[str, Any]:
    """POINTS.json for points picked on one source frame."""
    return {"points": [{"id": f"p{i}", "frame": int(frame), "x": round(float(x), 3), "y": round(float(y), 3)}
                       for i, (x, y) in enumerate(points)]}


def apply_tracks(clip: Any, tracks: list[Track], size: tuple[int, int]) -> list[str]:
    """Write ``tracks`` into ``clip`` (replacing the markers of tracks of the same name)."""
    coll = clip.tracking.tracks
    names = []
    for t in tracks:
        name = f"{TRACK_PREFIX}{t.id}"
        track = coll.get(name)
        first = clip_frame(t.frames[0])
        if track is None:
            track = coll.new(name=name, frame=first)
        else:
            for f in [m.frame for m in track.markers]:
                if f != first:
                    track.markers.delete_frame(f)
        for f, (x, y), vis in zip(t.frames, t.xy, t.visible):
            marker = track.markers.insert_frame(clip_frame(f), co=to_marker_co(x, y, size))
            marker.mute = not vis
        names.append(name)
    return names

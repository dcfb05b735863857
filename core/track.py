"""Point tracking (``inve track``): POINTS.json -> TRACKS.json through the layered mappings.

Each point attaches to the layer seen where it was placed (``core.layers.shows``,
unless it names a ``layer``), goes through that layer's forward mapping at its frame and
the inverse mapping into every frame (one batched call for all points and frames). A
position is ``visible`` when it is inside the frame, cycle-consistent (the forward map
brings it back to the same atlas point) and not hidden by the other layer (a background
point under the foreground, or a foreground point where the object is not): by the fitted
alpha there, and where that is unsure (its soft edge lags the object's by about a pixel), by
the pixels (``RenderContext.layer_evidence``: the point's own appearance or the other layer's).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from core import fsutil
from core.edits.context import RenderContext
from core.errors import InveError
from core.layers import shows
from core.refine import carry_corrections, drop_outliers, error_estimate
from core.project import Project, ProjectInfo


@dataclass
class PointSpec:
    id: str
    frame: int  # source frame index
    t: int  # project frame index
    xy: tuple[float, float]
    layer: str | None = None


@dataclass
class Track:
    id: str
    layer: str
    xy: np.ndarray  # [T, 2] source pixels
    visible: np.ndarray  # [T] bool
    error_px: np.ndarray | None = None  # [T] the engine's estimate of its own error (confidence)

    def to_json(self) -> dict[str, Any]:
        d = {"id": self.id, "layer": self.layer,
             "xy": [[round(float(x), 3), round(float(y), 3)] for x, y in self.xy],
             "visible": [bool(v) for v in self.visible]}
        if self.error_px is not None:
            d["error_px"] = [round(float(e), 3) for e in self.error_px]
        return d


def _finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def parse_points(doc: Any, info: ProjectInfo, fname: str = "POINTS.json") -> list[PointSpec]:
    """Validate a POINTS document: one clear error naming the point and field."""
    if not isinstance(doc, dict) or "points" not in doc:
        raise InveError(f"{fname}: must be a JSON object with a 'points' list")
    pts = doc["points"]
    if not isinstance(pts, list):
        raise InveError(f"{fname}: 'points' must be a list")
    out: list[PointSpec] = []
    seen: set[str] = set()
    for i, p in enumerate(pts):
        where = f"{fname} points[{i}]"
        if not isinstance(p, dict):
            raise InveError(f"{where}: must be an object with id, frame, x, y")
        for k in ("id", "frame", "x", "y"):
            if k not in p:
                raise InveError(f"{where}: missing field '{k}'")
        pid = p["id"]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise InveError(f"{where}: 'id' must be a string, got {json.dumps(pid)[:40]}")
        pid = str(pid)
        if pid in seen:
            raise InveError(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        for k in ("x", "y"):
            if not _finite_number(p[k]):
                raise InveError(f"{where}: '{k}' must be a number, got {json.dumps(p[k])[:40]}")
        frame = p["frame"]
        if isinstance(frame, float) and frame.is_integer():
            frame = int(frame)
        try:
            t = info.frame_index(frame)
        except InveError as exc:
            raise InveError(f"{where}: {exc}") from None
        W, H = info.source_size
        if not (0.0 <= p["x"] <= W and 0.0 <= p["y"] <= H):
            raise InveError(f"{where}: ({p['x']}, {p['y']}) is outside the {W}x{H} frame")
        layer = p.get("layer")
        if layer is not None and layer not in info.layers:
            raise InveError(f"{where}: 'layer' must be one of {', '.join(info.layers)}, got {json.dumps(layer)[:40]}")
        out.append(PointSpec(pid, int(frame), t, (float(p["x"]), float(p["y"])), layer))
    return out


def track_points(ctx: RenderContext, points: Sequence[PointSpec]) -> list[Track]:
    """Carry every point to every frame (batched per layer and drawing frame)."""
    tracks: list[Track | None] = [None] * len(points)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(points):
        L = p.layer or ctx.auto_layer(p.t, np.array([p.xy]))
        groups.setdefault((L, p.t), []).append(i)
    for (L, t), idx in groups.items():
        xy0 = np.array([points[i].xy for i in idx])
        uv, xy, ok = ctx.propagate(L, xy0, t, refine=False)  # [T, N, 2], [T, N]
        frames = np.arange(ctx.T)
        if ctx.refine_enabled:
            # matches the other points of the frame disagree with are dropped, and frames
            # without a match take the correction measured in the frames around (core.refine)
            # (before the fading near confirmed keys, which then holds on those frames alone)
            refined = drop_outliers(xy, ctx.refine(L, xy0, t, frames, xy, ok, confirmed=False), (ctx.W, ctx.H))
            refined.xy = carry_corrections(frames, t, xy, refined)
            refined = ctx.trust_confirmed(L, frames, xy, refined)
            err = error_estimate(frames, t, refined, ctx.cycle_error_px(L, uv, xy))
            xy = refined.xy
        else:
            err = None
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= ctx.W) & (xy[..., 1] >= 0) & (xy[..., 1] <= ctx.H)
        vis = ok & inside
        if ctx.has_fg:
            for tt in range(ctx.T):
                a = ctx.alpha_at(tt, np.clip(xy[tt], 0, [ctx.W, ctx.H]))
                vis[tt] &= shows(L, a, evidence=ctx.layer_evidence(L, tt, xy[tt], t, xy0, alpha=a))
        for j, i in enumerate(idx):
            tracks[i] = Track(points[i].id, L, xy[:, j].astype(np.float64), vis[:, j],
                              None if err is None else err[:, j])
    return [tr for tr in tracks if tr is not None]


def track_command(project_dir: Path, points_json: Path, out_json: Path, overwrite: bool = False,
                  project: Project | None = None) -> dict[str, Any]:
    """``inve track``: validate everything, then write TRACKS.json atomically."""
    project = project or Project.open(project_dir)
    info = project.info
    points = parse_points(fsutil.read_json(points_json, "points file"), info, Path(points_json).name)
    out_json = Path(out_json)
    if out_json.is_dir():
        raise InveError(f"{out_json} is a folder; -o must name the TRACKS.json file to write")
    fsutil.check_output_file(out_json, overwrite, "tracks file")
    if project.is_segmented:  # tracked per segment, handed over at the seams
        from core.segments import SegmentedSession  # noqa: PLC0415

        tracks = SegmentedSession(project).track(points)
    else:
        ctx = RenderContext(project, mapping=project.mapping())
        tracks = track_points(ctx, points)
    doc = {"frames": list(info.frames), "tracks": [tr.to_json() for tr in tracks]}
    fsutil.write_output_file(out_json, lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"), "tracks file")
    n_vis = sum(int(tr.visible.sum()) for tr in tracks)
    return {"output": str(out_json.resolve()), "points": len(tracks), "frames": info.n_frames,
            "summary": f"tracked {len(tracks)} point(s) through {info.n_frames} frames "
                       f"({n_vis} visible positions) -> {out_json}"}


TRACK_COLORS = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120), (255, 120, 255), (255, 160, 60)]


def draw_tracks(img: np.ndarray, tracks: Sequence[Track], t: int, trail: int = 8, radius: float = 3.0) -> np.ndarray:
    """Draw each track's position at frame t (filled if visible, a ring if hidden) and its recent trail."""
    out = np.ascontiguousarray(img.copy())
    shift = 4
    s = float(1 << shift)
    for k, tr in enumerate(tracks):
        color = TRACK_COLORS[k % len(TRACK_COLORS)]
        lo = max(0, t - trail)
        for a in range(lo, t):
            if tr.visible[a] and tr.visible[a + 1]:
                p0 = tuple(int(round((v - 0.5) * s)) for v in tr.xy[a])
                p1 = tuple(int(round((v - 0.5) * s)) for v in tr.xy[a + 1])
                cv2.line(out, p0, p1, color, 1, cv2.LINE_AA, shift)
        c = tuple(int(round((v - 0.5) * s)) for v in tr.xy[t])
        r = int(round(radius * s))
        if tr.visible[t]:
            cv2.circle(out, c, r, color, -1, cv2.LINE_AA, shift)
            cv2.circle(out, c, r, (0, 0, 0), 1, cv2.LINE_AA, shift)
        else:
            cv2.circle(out, c, r, color, 1, cv2.LINE_AA, shift)
    return out

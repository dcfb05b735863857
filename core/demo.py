"""``inve demo``: the bundled clip end to end -- fit, one edit layer of each type, render.

Writes into the output folder: ``project/`` (the trained project with its atlases),
``edits/EDITS.json`` and its images, ``edited.mp4``, ``TRACKS.json``, ``contact_sheet.png``
(before / after on several frames, tracks drawn) and ``atlases.png``. The training budget
keeps the whole run within about ten minutes on two CPU cores. The edits are placed from
what the fit found (where the background is clear, where the foreground is), so the same
code works whatever the clip.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core import fsutil
from core.layers import shows
from core.progress import Progress
from core.project import Project

#: training minutes: with loading, flow, bake and rendering the demo stays under 10 minutes
DEMO_MINUTES = 5.0
DEMO_MAX_SIDE = 256
STICKER = Path(__file__).parent / "data" / "sticker.png"


def make_sticker(width: int = 128, height: int = 64) -> np.ndarray:
    """The demo sticker (also committed as core/data/sticker.png): a badge with a border and text."""
    img = np.zeros((height, width, 4), np.float32)
    r = height // 4
    cv2.rectangle(img, (r, 2), (width - 1 - r, height - 3), (1.0, 0.78, 0.1, 1.0), -1, cv2.LINE_AA)
    cv2.rectangle(img, (2, r), (width - 3, height - 1 - r), (1.0, 0.78, 0.1, 1.0), -1, cv2.LINE_AA)
    for cx, cy in ((r, r), (width - 1 - r, r), (r, height - 1 - r), (width - 1 - r, height - 1 - r)):
        cv2.circle(img, (cx, cy), r - 2, (1.0, 0.78, 0.1, 1.0), -1, cv2.LINE_AA)
    cv2.rectangle(img, (6, 6), (width - 7, height - 7), (0.55, 0.1, 0.05, 1.0), 2, cv2.LINE_AA)
    scale = height / 64 * 1.1
    (tw, th), _ = cv2.getTextSize("INVE", cv2.FONT_HERSHEY_DUPLEX, scale, 2)
    cv2.putText(img, "INVE", ((width - tw) // 2, (height + th) // 2), cv2.FONT_HERSHEY_DUPLEX, scale,
                (0.55, 0.1, 0.05, 1.0), 2, cv2.LINE_AA)
    return img


def _clear_spot(alpha: np.ndarray, prefer: tuple[float, float], W: int, H: int) -> tuple[float, float]:
    """A source-pixel position on clear background near ``prefer`` (fractions of the frame)."""
    h, w = alpha.shape
    clear = (alpha < 0.1).astype(np.uint8)
    dist = cv2.distanceTransform(clear, cv2.DIST_L2, 5)
    yy, xx = np.mgrid[0:h, 0:w]
    px, py = prefer[0] * w, prefer[1] * h
    score = np.minimum(dist, 0.15 * max(w, h)) - 0.15 * np.hypot(xx - px, yy - py)
    y, x = np.unravel_index(np.argmax(score), score.shape)
    return (x + 0.5) * W / w, (y + 0.5) * H / h


def _fg_blob(alpha: np.ndarray, W: int, H: int) -> tuple[tuple[float, float], float] | None:
    """Centroid (source px) and radius of the foreground at this frame, if there is one."""
    m = shows("fg", alpha)
    if m.sum() < 0.002 * m.size:
        return None
    ys, xs = np.nonzero(m)
    sx, sy = W / alpha.shape[1], H / alpha.shape[0]
    cx, cy = (xs.mean() + 0.5) * sx, (ys.mean() + 0.5) * sy
    return (cx, cy), math.sqrt(m.sum() * sx * sy / math.pi)


def build_sample_edits(project: Project, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One layer of each type (and a few track points), placed from the fitted project."""
    folder.mkdir(parents=True, exist_ok=True)
    info, maps = project.info, project.maps()
    W, H = info.source_size
    f0 = info.frames[0]
    alpha0 = maps.alpha[0]
    s = min(W, H) / 270.0  # sizes scale with the frame
    layers: list[dict[str, Any]] = []

    # adjust: recolour a patch of background (carried with it)
    ax, ay = _clear_spot(alpha0, (0.2, 0.3), W, H)
    r = 38 * s
    poly = [[ax + r * math.cos(a), ay + 0.8 * r * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 9)[:-1]]
    layers.append({"type": "adjust", "frame": f0, "region": {"polygon": poly}, "hue": 0.45, "saturation": 1.6,
                   "brightness": 0.03, "contrast": 1.15, "feather": 3.0, "name": "recolour"})

    # atlas: rings painted on the background atlas, where frame 0 shows a clear patch of background
    from core.edits.context import RenderContext

    atlas = (np.clip(maps.atlas["bg"], 0, 1) * 255 + 0.5).astype(np.uint8)
    A = atlas.shape[0]
    rx, ry = _clear_spot(alpha0, (0.88, 0.62), W, H)
    h, w = alpha0.shape
    u, v = maps.uv["bg"][0, min(h - 1, int(ry * h / H)), min(w - 1, int(rx * w / W))]
    cx, cy = int((u + 1) / 2 * A), int((v + 1) / 2 * A)
    ppu = RenderContext(project, maps=maps).px_per_uv("bg")
    rad = max(4, int(22 * s * A / (2 * ppu)))  # about 22 px on screen
    painted = atlas.copy()
    for k in range(3):
        cv2.circle(painted, (cx, cy), rad - k * rad // 3, (40, 220, 255) if k % 2 == 0 else (255, 255, 255),
                   max(1, rad // 6), cv2.LINE_AA)
    fsutil.write_png(folder / "atlas_bg_painted.png", painted)
    layers.append({"type": "atlas", "layer": "bg", "image": "atlas_bg_painted.png", "name": "atlas rings"})

    # paint: a translucent brush blob with a word, drawn over the first frame
    px, py = _clear_spot(alpha0, (0.75, 0.2), W, H)
    paint = np.zeros((H, W, 4), np.float32)
    cv2.ellipse(paint, (int(px), int(py)), (int(34 * s), int(18 * s)), -15, 0, 360, (0.2, 0.9, 0.3, 0.55), -1,
                cv2.LINE_AA)
    cv2.putText(paint, "hi!", (int(px - 18 * s), int(py + 8 * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * s,
                (1, 1, 1, 1), max(1, int(2 * s)), cv2.LINE_AA)
    fsutil.write_png(folder / "paint.png", paint)
    layers.append({"type": "paint", "frame": f0, "image": "paint.png", "name": "paint"})

    # sketch: a wave along the background and, if there is a foreground, a loop around it
    sx0, sy0 = _clear_spot(alpha0, (0.5, 0.85), W, H)
    wave = [[sx0 + (k - 10) * 9 * s, sy0 + 10 * s * math.sin(k * 0.7)] for k in range(21)]
    wave = [[min(max(x, 2.0), W - 2.0), y] for x, y in wave]
    strokes = [{"points": wave, "color": [1.0, 0.15, 0.1, 1.0], "width": 4.0 * s}]
    blob = _fg_blob(alpha0, W, H) if "fg" in info.layers else None
    if blob is not None:
        (cx, cy), rad = blob
        loop = [[cx + 0.55 * rad * math.cos(a), cy + 0.55 * rad * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 25)]
        strokes.append({"points": loop, "color": [0.1, 0.6, 1.0, 1.0], "width": 3.0 * s})
    layers.append({"type": "sketch", "frame": f0, "strokes": strokes, "name": "strokes"})

    # sticker: rigid, on the foreground if there is one, else on the background
    sticker = folder / "sticker.png"
    if STICKER.is_file():
        fsutil.write_bytes(sticker, STICKER.read_bytes())
    else:  # a source checkout without package data
        fsutil.write_png(sticker, make_sticker())
    if blob is not None:
        (cx, cy), rad = blob
        centre = [cx, cy - 0.2 * rad]
    else:
        centre = list(_clear_spot(alpha0, (0.3, 0.7), W, H))
    layers.append({"type": "sticker", "frame": f0, "image": "sticker.png", "center": centre,
                   "scale": 0.45 * s, "rotation": 0.15, "mode": "rigid", "name": "sticker"})

    points = [{"id": f"bg{k}", "frame": f0, "x": float(x), "y": float(y)}
              for k, (x, y) in enumerate([_clear_spot(alpha0, p, W, H) for p in ((0.1, 0.1), (0.9, 0.5), (0.4, 0.6))])]
    if blob is not None:
        (cx, cy), rad = blob
        points.append({"id": "fg0", "frame": f0, "x": cx, "y": cy})
    return {"version": 1, "layers": layers}, {"points": points}


def contact_sheet(before: list[np.ndarray], after: list[np.ndarray], labels: list[str], max_width: int = 1600) -> np.ndarray:
    """Two rows (before / after) of frames side by side, labelled."""
    h, w = before[0].shape[:2]
    n = len(before)
    scale = min(1.0, max_width / (n * w))
    tw, th = max(1, int(w * scale)), max(1, int(h * scale))
    pad = 4
    top = 22
    sheet = np.full((2 * (th + top) + pad, n * (tw + pad) + pad, 3), 24, np.uint8)
    for row, (imgs, name) in enumerate(((before, "before"), (after, "after"))):
        y0 = row * (th + top) + top
        for i, img in enumerate(imgs):
            x0 = pad + i * (tw + pad)
            sheet[y0:y0 + th, x0:x0 + tw] = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
            cv2.putText(sheet, f"{name}  {labels[i]}", (x0 + 2, y0 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (230, 230, 230), 1, cv2.LINE_AA)
    return sheet


def demo_command(out_dir: Path, progress: Progress, minutes: float | None = None) -> dict[str, Any]:
    """Fit the bundled clip, apply the sample stack, write the movie and contact sheet."""
    from core.edits import edit_command
    from core.track import Track, draw_tracks, track_command
    from core.video import default_clip

    start = time.monotonic()
    folder = fsutil.OutputFolder(out_dir, "demo folder").begin()  # the output rule: see core.fsutil
    out = folder.path
    clip = default_clip()
    project_dir = out / "project"
    if (project_dir / Project.INFO).is_file() and Project.open(project_dir).is_trained:
        progress.message(f"re-using the project already trained in {project_dir} (delete it to train again)")
        project = Project.open(project_dir)
    else:
        from core.train import TrainConfig, train_project

        if project_dir.exists():
            import shutil

            shutil.rmtree(project_dir)  # an unfinished demo project inside our own output folder
        cfg = TrainConfig(minutes=minutes or DEMO_MINUTES, max_side=DEMO_MAX_SIDE, seed=0)
        progress.message(f"training on {clip.name} for {cfg.minutes:g} minute(s) (inve demo --minutes M to change)")
        project = train_project(clip, project_dir, cfg, progress)

    edits_doc, points_doc = build_sample_edits(project, out / "edits")
    edits_json = out / "edits" / "EDITS.json"
    fsutil.write_json(edits_json, edits_doc)
    points_json = out / "edits" / "POINTS.json"
    fsutil.write_json(points_json, points_doc)
    movie = out / "edited.mp4"
    edit_command(project_dir, edits_json, movie, progress, overwrite=True, project=project)
    tracks_json = out / "TRACKS.json"
    track_command(project_dir, points_json, tracks_json, overwrite=True, project=project)

    # contact sheet: originals vs. edited frames (re-rendered in memory) with the tracks drawn
    from core.edits import EditSession

    session = EditSession(project)
    session.load_edits(edits_json)
    tdoc = json.loads(tracks_json.read_text())
    tracks = [Track(d["id"], d.get("layer", "bg"), np.array(d["xy"], np.float64), np.array(d["visible"], bool))
              for d in tdoc["tracks"]]
    T = project.info.n_frames
    picks = sorted({int(round(x)) for x in np.linspace(0, T - 1, 5)})
    frames = project.frames()
    before = [np.asarray(frames[t]) for t in picks]
    after = [draw_tracks(session.render_frame(t), tracks, t, radius=3.5) for t in picks]
    sheet = contact_sheet(before, after, [f"frame {project.info.frames[t]}" for t in picks])
    sheet_path = out / "contact_sheet.png"
    folder.write_png(sheet_path.name, sheet)
    maps = project.maps()
    atl = [(np.clip(maps.atlas[L], 0, 1) * 255 + 0.5).astype(np.uint8) for L in maps.layers]
    size = max(a.shape[0] for a in atl)
    atl = [cv2.resize(a, (size, size), interpolation=cv2.INTER_NEAREST) for a in atl]
    atlases_path = out / "atlases.png"
    folder.write_png(atlases_path.name, np.concatenate(atl, axis=1))
    folder.finish()

    seconds = time.monotonic() - start
    metrics = project.metrics()
    lines = [f"demo finished in {seconds / 60:.1f} min (fit PSNR {metrics.get('psnr', '?')} dB)",
             f"  edited movie:   {movie}",
             f"  contact sheet:  {sheet_path}",
             f"  atlases:        {atlases_path}",
             f"  edit stack:     {edits_json}",
             f"  tracks:         {tracks_json}",
             f"  project:        {project_dir}"]
    return {"movie": str(movie), "contact_sheet": str(sheet_path), "atlases": str(atlases_path),
            "edits": str(edits_json), "tracks": str(tracks_json), "project": str(project_dir),
            "seconds": round(seconds, 1), "psnr": metrics.get("psnr"), "summary": "\n".join(lines)}

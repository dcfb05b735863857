#!/usr/bin/env python
"""Fidelity benchmark: how far propagated positions and edits land from the exact truth.

A synthetic clip with analytic ground truth (tests/synth.py): a camera that pans, zooms by
25 % and rolls by 9 degrees over a textured wall, and a textured disc that slides across,
turning by 29 degrees, hiding the wall behind it. The clip is fitted with the default
settings (automatic masks) for ``--minutes``; then, from a drawing frame (default: the last):

* tracks: a grid of points on both layers is carried to every frame, once with the
  mapping alone and once refined (core/refine.py); printed: median error by distance from
  the drawing frame, delta_avg (share within 1/2/4/8/16 px, averaged; TAP-Vid style, over
  positions the truth shows) and occlusion accuracy;
* edits: a paint layer and sketch strokes drawn on that frame are rendered into every frame
  through the fitted project and through the ground-truth project; printed: PSNR of the
  edited frames against the truth and IoU of the edited regions (all frames, the frames 20+
  away from the drawing frame, and paint and strokes alone);
* the networks' PSNR and the baked atlas' PSNR (what edits sample).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_fidelity.py --minutes 3

``--project DIR`` keeps the fitted project (or reuses one fitted before): code that only
changes propagation (refinement, edits) is then compared on the same fit.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BINS = ((0, 0), (1, 8), (9, 20), (21, 47), (48, 10_000))
THRESHOLDS = (1, 2, 4, 8, 16)


def track_errors(clip, ctx, t0: int, grid_n: int):
    """(layer, distance, error px, predicted visible, truly visible) for every point and frame."""
    import numpy as np

    from core.track import PointSpec, track_points

    gt = clip.gt
    W, H = clip.size
    xs = (np.arange(grid_n) + 0.5) * W / grid_n
    ys = (np.arange(grid_n) + 0.5) * H / grid_n
    xy = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    a = gt.alpha(xy, np.full(len(xy), float(t0)))
    keep = (a > 0.99) | (a < 0.01)  # points clearly on one layer
    pts = [PointSpec(str(i), t0, t0, (float(p[0]), float(p[1])), "fg" if al > 0.5 else "bg")
           for i, (p, al) in enumerate(zip(xy[keep], a[keep]))]
    tracks = track_points(ctx, pts)
    rows = []
    ts = np.arange(gt.n_frames, dtype=np.float64)
    for tr, p in zip(tracks, pts):
        uv = gt.forward(tr.layer, np.array([p.xy]), [float(t0)])
        truth = np.asarray(gt.inverse(tr.layer, np.repeat(uv, len(ts), 0), ts), np.float64)
        ta = gt.alpha(truth, ts)
        inside = (truth[:, 0] >= 0) & (truth[:, 0] <= W) & (truth[:, 1] >= 0) & (truth[:, 1] <= H)
        seen = inside & ((ta > 0.5) if tr.layer == "fg" else (ta <= 0.5))
        err = np.linalg.norm(tr.xy - truth, axis=1)
        for t in range(len(ts)):
            rows.append((tr.layer, abs(t - t0), err[t], bool(tr.visible[t]), bool(seen[t])))
    return rows


def summarise_tracks(rows) -> dict:
    import numpy as np

    out: dict = {}
    seen = [r for r in rows if r[4]]
    err = np.array([r[2] for r in seen])
    out["median_px"] = float(np.median(err))
    out["delta_avg"] = float(np.mean([np.mean(err < th) for th in THRESHOLDS]))
    out["occlusion_accuracy"] = float(np.mean([r[3] == r[4] for r in rows]))
    for lo, hi in BINS:
        for layer in ("bg", "fg"):
            e = [r[2] for r in seen if lo <= r[1] <= hi and r[0] == layer]
            if e:
                out[f"median_{layer}_{lo}-{hi}"] = float(np.median(e))
    return out


def make_edits(clip, t0: int, folder: Path) -> dict:
    """A paint layer (a patterned blob on the wall and one on the disc) and two sketch strokes."""
    import cv2
    import numpy as np

    from core import fsutil

    W, H = clip.size
    gt = clip.gt
    q, _ = gt.object_params(np.array([float(t0)]))
    cx, cy = float(q[0, 0]), float(q[0, 1])
    img = np.zeros((H, W, 4), np.float32)
    r = gt.radius
    cv2.ellipse(img, (int(cx), int(cy)), (int(0.5 * r), int(0.3 * r)), 20, 0, 360, (1.0, 0.1, 0.1, 1.0), -1, cv2.LINE_AA)
    bx, by = (0.2 * W, 0.25 * H) if cx > W / 2 else (0.8 * W, 0.25 * H)
    cv2.ellipse(img, (int(bx), int(by)), (int(0.12 * W), int(0.08 * H)), -10, 0, 360, (0.1, 0.3, 1.0, 1.0), -1,
                cv2.LINE_AA)
    for k in range(6):  # stripes inside the blobs: edges whose slide PSNR sees
        x = int(bx - 0.1 * W + k * 0.04 * W)
        cv2.line(img, (x, int(by - 0.06 * H)), (x, int(by + 0.06 * H)), (1.0, 1.0, 0.2, 1.0), 1, cv2.LINE_AA)
    fsutil.write_png(folder / "paint.png", img)
    stroke_bg = [[0.1 * W + 0.8 * W * s, 0.8 * H + 0.08 * H * math.sin(6 * s)] for s in np.linspace(0, 1, 25)]
    stroke_fg = [[cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 25)]
    doc = {"version": 1, "layers": [
        {"type": "paint", "frame": t0, "image": "paint.png"},
        {"type": "sketch", "frame": t0, "layer": "bg", "strokes": [{"points": stroke_bg, "color": [0, 1, 0, 1], "width": 2.0}]},
        {"type": "sketch", "frame": t0, "layer": "fg", "strokes": [{"points": stroke_fg, "color": [1, 1, 0, 1], "width": 2.0}]},
    ]}
    fsutil.write_json(folder / "edits.json", doc)
    return doc


def render(project, doc, folder: Path, mapping, refine: bool):
    import numpy as np

    from core.edits.session import EditSession
    from core.edits.spec import parse_edits

    layers = parse_edits(doc, folder, project.info,
                         atlas_sizes=lambda: {L: int(a.shape[0]) for L, a in project.maps().atlas.items()})
    session = EditSession(project, layers, mapping=mapping)
    session.ctx.refine_enabled = refine
    return np.stack([session.render_frame(t, cache=False) for t in range(session.ctx.T)])


def edit_scores(edited, truth, original) -> dict:
    import numpy as np

    mse = np.mean((edited.astype(np.float64) - truth.astype(np.float64)) ** 2) / 255.0 ** 2
    reg_e = np.abs(edited.astype(np.int16) - original.astype(np.int16)).max(-1) > 24
    reg_t = np.abs(truth.astype(np.int16) - original.astype(np.int16)).max(-1) > 24
    iou = (reg_e & reg_t).sum() / max(1, (reg_e | reg_t).sum())
    return {"psnr": float(10 * math.log10(1.0 / max(mse, 1e-12))), "iou": float(iou)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="192x128", help="source size WxH of the synthetic clip")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--iters", type=int, default=None, help="iteration budget instead of minutes")
    ap.add_argument("--draw-frame", type=int, default=-1, help="drawing frame (default: the last)")
    ap.add_argument("--grid", type=int, default=12, help="points per side of the tracked grid")
    ap.add_argument("--project", default=None, help="reuse (or keep) a trained project in this folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    import numpy as np

    from core.bake import atlas_psnr
    from core.edits.context import RenderContext
    from core.progress import Progress
    from core.project import Project
    from core.train import TrainConfig, train_project
    from tests.synth import make_clip, make_gt_project, write_clip

    W, H = (int(v) for v in args.size.lower().split("x"))
    clip = make_clip(T=args.frames, size=(W, H), camera="pan_zoom", seed=7)
    t0 = args.draw_frame % args.frames
    tmp = Path(tempfile.mkdtemp(prefix="inve-fidelity-"))
    proj_dir = Path(args.project) if args.project else tmp / "project"
    t_train = 0.0
    if not (proj_dir / Project.INFO).is_file():
        video = write_clip(clip, tmp / "frames")
        t = time.monotonic()
        cfg = TrainConfig(iters=args.iters, minutes=None if args.iters else args.minutes)
        train_project(video, proj_dir, cfg, Progress("none"))
        t_train = time.monotonic() - t
    project = Project.open(proj_dir)
    metrics = project.metrics()
    import cv2

    frames_w = np.stack([cv2.resize(f, tuple(project.info.work_size), interpolation=cv2.INTER_AREA)
                         for f in clip.frames])
    result: dict = {"clip": f"{args.frames} frames {W}x{H}", "draw_frame": t0, "psnr": metrics["psnr"],
                    "atlas_psnr": round(atlas_psnr(project.maps(), frames_w), 3),
                    "iterations": metrics["iterations"], "train_seconds": metrics["train_seconds"]}
    mapping = project.mapping()
    for refine in (False, True):
        ctx = RenderContext(project, mapping=mapping)
        ctx.refine_enabled = refine
        t = time.monotonic()
        rows = track_errors(clip, ctx, t0, args.grid)
        key = "refined" if refine else "mapping"
        result[f"tracks_{key}"] = summarise_tracks(rows)
        result[f"tracks_{key}"]["seconds"] = round(time.monotonic() - t, 2)
    gt_proj = make_gt_project(clip, tmp / "gt", atlas_size=1024)
    doc = make_edits(clip, t0, tmp)
    truth = render(gt_proj, doc, tmp, clip.gt, refine=False)
    far = slice(0, max(0, t0 - 20) + 1) if t0 >= args.frames // 2 else slice(t0 + 20, args.frames)
    for refine in (False, True):
        key = f"edits_{'refined' if refine else 'mapping'}"
        t = time.monotonic()
        edited = render(project, doc, tmp, mapping, refine)
        result[key] = edit_scores(edited, truth, clip.frames)
        result[key]["seconds"] = round(time.monotonic() - t, 2)
        result[key]["far"] = edit_scores(edited[far], truth[far], clip.frames[far])  # 20+ frames away
        # each kind of edit alone (where the error comes from)
        for kind in ("paint", "sketch"):
            sub = dict(doc, layers=[l for l in doc["layers"] if l["type"] == kind])
            result[key][kind] = edit_scores(render(project, sub, tmp, mapping, refine),
                                            render(gt_proj, sub, tmp, clip.gt, refine=False), clip.frames)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"fidelity benchmark: {result['clip']}, drawn on frame {t0}, {result['iterations']} iterations "
              f"({result['train_seconds']:.0f} s of training)")
        print(f"networks PSNR {result['psnr']:.2f} dB, baked atlas PSNR {result['atlas_psnr']:.2f} dB")
        for key in ("mapping", "refined"):
            tr = result[f"tracks_{key}"]
            ed = result[f"edits_{key}"]
            print(f"[{key}] tracks: median {tr['median_px']:.2f} px, delta_avg {tr['delta_avg']:.3f}, "
                  f"occlusion accuracy {tr['occlusion_accuracy']:.3f} ({tr['seconds']:.1f} s)")
            print("    median by distance: " + ", ".join(
                f"{k[7:]} {v:.2f}" for k, v in tr.items() if k.startswith("median_") and k != "median_px"))
            print(f"    edits: PSNR {ed['psnr']:.2f} dB vs truth, edited-region IoU {ed['iou']:.3f} "
                  f"({ed['seconds']:.1f} s for {args.frames} frames); 20+ frames away {ed['far']['psnr']:.2f} dB / "
                  f"{ed['far']['iou']:.3f}; paint alone {ed['paint']['psnr']:.2f} dB / {ed['paint']['iou']:.3f}, "
                  f"strokes alone {ed['sketch']['psnr']:.2f} dB / {ed['sketch']['iou']:.3f}")
    if not args.project:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

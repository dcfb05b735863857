"""Benchmark edit propagation (issue targets: <= 1 s for the 4-layer stack on 48 frames at
384x216, <= 50 ms to re-render one frame after adding a stroke, on 2 CPU cores).

Usage:
    .venv/bin/python scripts/bench_edit.py                 # ground-truth synthetic project, 48 frames 384x216
    .venv/bin/python scripts/bench_edit.py --project P     # a trained project (its networks do the mapping)
    .venv/bin/python scripts/bench_edit.py --edit-pass P   # issue 10: `inve edit` of P to PNGs and to a movie

The stack: one sketch stroke, one paint image, one rigid sticker, one adjustment region,
all drawn on the first frame. "propagate" = every frame-independent step (mapping calls,
atlas textures, sticker track) plus rendering all frames in memory, from a fresh session
on already-loaded baked maps; PNG encoding is timed separately.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from core import fsutil  # noqa: E402
from core.edits import EditSession, parse_edits  # noqa: E402
from core.project import Project  # noqa: E402


def make_assets(folder: Path, W: int, H: int) -> list[dict]:
    import cv2

    paint = np.zeros((H, W, 4), np.float32)
    cv2.circle(paint, (int(W * 0.55), int(H * 0.3)), int(H * 0.1), (0.1, 0.9, 0.2, 0.9), -1, cv2.LINE_AA)
    cv2.putText(paint, "INVE", (int(W * 0.3), int(H * 0.2)), cv2.FONT_HERSHEY_SIMPLEX, H / 300, (1, 1, 1, 1), 2,
                cv2.LINE_AA)
    fsutil.write_png(folder / "paint.png", paint)
    sticker = np.zeros((48, 96, 4), np.float32)
    sticker[..., :3] = (0.95, 0.2, 0.1)
    sticker[..., 3] = 1.0
    cv2.putText(sticker, "LOGO", (8, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (1, 1, 1, 1), 2, cv2.LINE_AA)
    fsutil.write_png(folder / "sticker.png", sticker)
    return [
        {"type": "sketch", "frame": None, "strokes": [{"points": [[W * 0.1, H * 0.8], [W * 0.3, H * 0.6], [W * 0.5, H * 0.7],
                                                                  [W * 0.7, H * 0.55], [W * 0.9, H * 0.65]],
                                                       "color": [1, 0.1, 0.1, 1], "width": 4.0}]},
        {"type": "paint", "frame": None, "image": "paint.png"},
        {"type": "sticker", "frame": None, "image": "sticker.png", "center": [W * 0.75, H * 0.8], "scale": H / 400,
         "rotation": 0.2, "mode": "rigid"},
        {"type": "adjust", "frame": None, "region": {"polygon": [[W * 0.05, H * 0.05], [W * 0.3, H * 0.08],
                                                                 [W * 0.28, H * 0.4], [W * 0.06, H * 0.35]]},
         "hue": 0.3, "saturation": 1.4, "brightness": 0.0, "contrast": 1.1},
    ]


def write_edit_pass_stack(project, tmp: Path) -> Path:
    """The edit pass's stack at source resolution (a paint layer and a sketch on the first
    frame) as ``tmp/EDITS.json`` with its image; bench_fit.py's long-shot rows use it too."""
    import json

    W, H = project.info.source_size
    f0 = project.info.frames[0]
    paint = np.zeros((H, W, 4), np.float32)
    paint[H // 4:H // 4 + H // 8, W // 3:W // 3 + W // 6] = (0.1, 0.9, 0.2, 0.8)
    fsutil.write_png(tmp / "paint.png", paint)
    doc = {"version": 1, "layers": [
        {"type": "paint", "frame": f0, "image": "paint.png", "layer": "bg"},
        {"type": "sketch", "frame": f0, "strokes": [{"points": [[W * 0.2, H * 0.6], [W * 0.5, H * 0.7],
                                                               [W * 0.7, H * 0.55]],
                                                    "color": [1, 0, 0, 1], "width": max(2.0, W / 200)}]}]}
    (tmp / "EDITS.json").write_text(json.dumps(doc))
    return tmp / "EDITS.json"


def edit_pass(project_dir: Path, tmp: Path, workers: int | None) -> None:
    """The source-resolution edit pass of issue 10 (``inve edit`` to PNGs and to a movie).

    The stack of ``scripts/bench_fit.py``'s edit timing: a paint layer (a rectangle) and one
    sketch stroke, drawn on the first frame. Wall clock of ``edit_command`` (decode, render,
    encode, checksum, write), with the CPU time of this process and of its children (render
    workers, ffmpeg).
    """
    import resource
    import shutil

    from core.edits import edit_command
    from core.edits.parallel import default_workers
    from core.progress import Progress

    project = Project.open(project_dir)
    W, H = project.info.source_size
    T = project.info.n_frames
    write_edit_pass_stack(project, tmp)
    n = default_workers(T) if workers is None else workers
    print(f"edit pass: {project_dir}, {T} frames at {W}x{H}, paint + sketch, {n} render process(es)")
    if os.getloadavg()[0] > 1.0:
        print(f"  note: load average {os.getloadavg()[0]:.1f} (other processes): wall times are inflated")
    for out in (tmp / "edit_png", tmp / "edit.mp4"):
        shutil.rmtree(out, ignore_errors=True)
        if out.is_file():
            out.unlink()
        c0 = time.process_time()
        k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        edit_command(project_dir, tmp / "EDITS.json", out, Progress("none"), render_workers=workers)
        wall = time.perf_counter() - t0
        k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        kids = (k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime)
        print(f"  to {'PNGs ' if out.suffix != '.mp4' else 'movie'}  {wall:6.2f} s wall ({T / wall:5.1f} frames/s), CPU "
              f"{time.process_time() - c0:.1f} s here + {kids:.1f} s in workers/ffmpeg (target <= 10 s), "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=None, help="a trained project (default: synthetic ground truth)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="384x216")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--edit-pass", type=Path, default=None, metavar="PROJECT",
                    help="time `inve edit` of a trained project at source resolution to PNGs and to a movie")
    ap.add_argument("--workers", type=int, default=None, help="render processes for --edit-pass (default: per core)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_edit_"))
    if args.edit_pass:
        try:
            edit_pass(args.edit_pass, tmp, args.workers)
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return
    if args.project:
        project = Project.open(args.project)
        mapping = project.mapping()
        what = f"trained project {args.project}"
    else:
        from synth import make_clip, make_gt_project

        W, H = (int(v) for v in args.size.lower().split("x"))
        clip = make_clip(T=args.frames, size=(W, H), camera="pan_zoom")
        project = make_gt_project(clip, tmp / "proj", atlas_size=512)
        mapping = clip.gt
        what = "synthetic ground-truth project (analytic mapping)"
    W, H = project.info.source_size
    T = project.info.n_frames
    t0 = time.perf_counter()
    maps, frames = project.maps(), np.asarray(project.frames())
    load_s = time.perf_counter() - t0
    doc = make_assets(tmp, W, H)
    f0 = project.info.frames[0]
    for layer in doc:
        layer["frame"] = f0
    layers = parse_edits({"version": 1, "layers": doc}, tmp, project.info)

    times, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        s = EditSession(project, layers, mapping=mapping, maps=maps)
        s.ctx.frames = frames
        out = [img for _, img in s.render_all(cache=True)]
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    prop = statistics.median(times)

    # add one stroke to the sketch layer and re-render the frame being looked at
    rng = np.random.default_rng(0)
    rerender, rerender_cpu = [], []
    for k in range(10):
        p = rng.uniform([0.1 * W, 0.1 * H], [0.9 * W, 0.9 * H], (4, 2)).tolist()
        doc[0] = dict(doc[0], strokes=doc[0]["strokes"] + [{"points": p, "color": [0, 0, 1, 1], "width": 3.0}])
        new_layers = parse_edits({"version": 1, "layers": doc}, tmp, project.info)
        t = int(rng.integers(0, T))
        t0, c0 = time.perf_counter(), time.process_time()
        s.set_layers(new_layers)
        s.render_frame(t)
        rerender.append(time.perf_counter() - t0)
        rerender_cpu.append(time.process_time() - c0)

    from core.video import write_png_sequence

    t0 = time.perf_counter()
    write_png_sequence(tmp / "png", ((project.info.frames[t], img) for t, img in enumerate(out)))
    png_s = time.perf_counter() - t0

    import torch

    print(f"edit benchmark: {what}, {T} frames at {W}x{H}, torch threads for rendering: 1 "
          f"(process default {torch.get_num_threads()})")
    if os.getloadavg()[0] > 1.0:
        print(f"  note: load average {os.getloadavg()[0]:.1f} (other processes): wall times are inflated; "
              "process CPU time is what an idle machine would show")
    print(f"  load baked maps + frames:                {load_s * 1000:7.1f} ms")
    print(f"  propagate 4-layer stack to all frames:   {prop * 1000:7.1f} ms wall, "
          f"{statistics.median(cpu) * 1000:7.1f} ms CPU   (median of {args.repeat}; target <= 1000 ms)")
    print(f"  re-render one frame after adding stroke: {statistics.median(rerender) * 1000:7.1f} ms wall, "
          f"{statistics.median(rerender_cpu) * 1000:7.1f} ms CPU   (median of {len(rerender)}, "
          f"max {max(rerender) * 1000:.1f} ms wall; target <= 50 ms)")
    print(f"  write {T} PNGs:                          {png_s * 1000:7.1f} ms")


if __name__ == "__main__":
    main()

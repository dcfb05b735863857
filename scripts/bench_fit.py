#!/usr/bin/env python
"""Fit benchmark: reconstruction PSNR against time, cycle error and peak memory.

Reference setting (issue 2): ../shared/clips/cup.mp4, frames 40:80, working size 256x192,
target >= 30 dB within 5 minutes of wall time on 2 CPU cores, peak RSS <= 2 GB, median
forward->inverse cycle error on the background <= 0.5 px.

    .venv/bin/python scripts/bench_fit.py                       # the reference setting
    .venv/bin/python scripts/bench_fit.py --video ../shared/clips/bbb_640x360.mp4 \\
        --frames 0:100 --max-side 480 --minutes 2               # the memory check

PSNR during training is measured on a fixed random subset of 65,536 pixels (the time
spent measuring is not counted); the final figure is the bake's PSNR over every pixel.
"""
from __future__ import annotations

import argparse
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(REPO.parent / "shared" / "clips" / "cup.mp4"))
    ap.add_argument("--frames", default="40:80")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget (bake and preprocessing come on top)")
    ap.add_argument("--eval-every", type=float, default=20.0, help="seconds of training between PSNR probes")
    ap.add_argument("--keep", default=None, help="keep the project in this folder")
    args = ap.parse_args()

    import numpy as np
    import torch

    from core.bake import frame_grid
    from core.progress import Progress
    from core.train import TrainConfig, train_project

    start, end = (int(v) for v in args.frames.split(":"))
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="inve-bench-")) / "project"
    curve: list[tuple[float, float, int]] = []
    probe: dict = {}

    def monitor(trainer) -> None:
        if trainer.elapsed < len(curve) * args.eval_every and not trainer.done():
            return
        data = trainer.data
        if not probe:
            gen = torch.Generator().manual_seed(123)
            hw = data.h * data.w
            idx = torch.randint(0, data.n * hw, (65536,), generator=gen)
            t = idx // hw
            grid = frame_grid(data.w, data.h)
            probe.update(p=grid[idx % hw], t=t.float(), rgb=data.rgb[idx].float() / 255.0)
        with torch.no_grad():
            rgb, _, _ = trainer.model.reconstruct(probe["p"], probe["t"])
        mse = float(((rgb - probe["rgb"]) ** 2).mean())
        trainer.model.train()
        curve.append((trainer.elapsed, 10 * math.log10(1 / max(mse, 1e-12)), trainer.step))
        print(f"  train {trainer.elapsed:6.1f} s  iter {trainer.step:5d}  PSNR {curve[-1][1]:6.2f} dB", flush=True)

    torch_threads = torch.get_num_threads()
    print(f"fit benchmark: {args.video} frames {args.frames}, max side {args.max_side}, "
          f"budget {args.minutes} min, torch {torch.__version__}, {torch_threads} threads")
    wall0 = time.monotonic()
    project = train_project(args.video, workdir, TrainConfig(frames=(start, end), max_side=args.max_side,
                                                              minutes=args.minutes), Progress("none"),
                            monitor=monitor)
    wall = time.monotonic() - wall0
    metrics = project.metrics()
    w, h = project.info.work_size
    print(f"working size      {w}x{h}, {project.info.n_frames} frames, layers {'+'.join(project.info.layers)}, "
          f"masks: {metrics['mask_source']}")
    print(f"iterations        {metrics['iterations']} in {metrics['train_seconds']:.1f} s of training")
    print(f"final PSNR        {metrics['psnr']:.2f} dB (every pixel of every frame)")
    for layer, err in metrics["cycle_error_px"].items():
        print(f"cycle error {layer:>3}   median {err:.3f} px at source resolution")
    print(f"wall time         {wall:.1f} s (load + preprocess + train + bake)")
    print(f"peak RSS          {peak_rss_mb():.0f} MB")
    if not args.keep:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

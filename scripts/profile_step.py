#!/usr/bin/env python
"""Profile and time the training step on the reference setting (cup.mp4 40:80 at 256x192).

Frames, flow and masks are computed once into a cache folder (``--cache``) and reused, so
repeated runs measure only the step. Modes:

    .venv/bin/python scripts/profile_step.py --steps 60                 # ms per step, by phase
    .venv/bin/python scripts/profile_step.py --steps 40 --cprofile      # where the time goes (Python)
    .venv/bin/python scripts/profile_step.py --steps 20 --torch-profile # where the time goes (ops)
    .venv/bin/python scripts/profile_step.py --seconds 60               # a timed fit, PSNR of the networks
    .venv/bin/python scripts/profile_step.py --iters 900 --set batch=4096   # a fit of 900 steps, one setting changed
    .venv/bin/python scripts/profile_step.py --iters 1500 --set error_share=0  # uniform batches (no error map)

A timed fit runs the default schedules against wall time like ``inve train --minutes`` and
reports the networks' PSNR over every pixel of every frame (no bake): quick to compare
schedule or step changes; ``scripts/bench_fit.py`` gives the figure the README records.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLIPS = next((p for p in (REPO.parent / "shared" / "clips", REPO.parents[1] / "shared" / "clips") if p.is_dir()),
             REPO.parent / "shared" / "clips")


def build_trainer(args):
    import torch

    from core import video as vio
    from core.model import LayeredAtlasModel, ModelConfig
    from core.preprocess import preprocess, working_frames
    from core.sampling import TrainingData
    from core.train import TrainConfig, Trainer, _cpu_threads

    torch.set_num_threads(args.threads or _cpu_threads())
    source = str(Path(args.video).resolve())
    vinfo = vio.probe(source)
    start, end = (int(v) for v in args.frames.split(":"))
    work = vio.working_size(vinfo.width, vinfo.height, args.max_side)
    cache = Path(args.cache)
    frames = working_frames(cache, source, vinfo, start, end, work, None)
    prep = preprocess(cache, frames, None, False, start, None)
    layers = ("bg", "fg") if prep.masks is not None else ("bg",)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = type(getattr(TrainConfig, key, 0.0))(value) if key != "minutes" else float(value)
    cfg = TrainConfig(frames=(start, end), minutes=args.seconds / 60 if args.seconds else None,
                      iters=args.iters or (None if args.seconds else 10**9), seed=args.seed, **overrides)
    torch.manual_seed(cfg.seed)
    model_overrides = {}
    for item in args.model:
        key, value = item.split("=", 1)
        model_overrides[key] = type(getattr(ModelConfig, key, 0.0))(value)
    model = LayeredAtlasModel(ModelConfig(n_frames=end - start, work_size=work, layers=layers, **model_overrides),
                              device="cpu")
    data = TrainingData(prep.frames, prep.flow, prep.masks, torch.device("cpu"))
    return Trainer(model, data, cfg, prep.mask_source)


def full_psnr(trainer) -> float:
    import torch

    from core.bake import frame_grid

    data = trainer.data
    grid = frame_grid(data.w, data.h)
    se, count = 0.0, 0
    trainer.model.set_atlas_detail(1.0)
    with torch.no_grad():
        for t in range(data.n):
            rgb, _, _ = trainer.model.reconstruct(grid, torch.full((grid.shape[0],), float(t)))
            hw = data.h * data.w
            target = data.rgb[t * hw:(t + 1) * hw].float() / 255.0
            se += float(((rgb - target) ** 2).sum())
            count += target.numel()
    return 10 * math.log10(1.0 / (se / count))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(CLIPS / "cup.mp4"))
    ap.add_argument("--frames", default="40:80")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--cache", default="/tmp/inve-profile-cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.5, help="budget fraction the timed steps run at")
    ap.add_argument("--phase", default="fit", choices=["fit", "polish"])
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: as training uses); 1 gives steadier CPU times on a loaded machine")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--torch-profile", action="store_true")
    ap.add_argument("--seconds", type=float, default=0.0, help="a timed fit of this many seconds instead")
    ap.add_argument("--iters", type=int, default=0, help="a fit of this many iterations instead")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override for the fit, e.g. --set lr_table=0.02 --set batch=4096")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                    help="ModelConfig override, e.g. --model atlas_cells_per_px=1.0")
    args = ap.parse_args()

    import torch

    trainer = build_trainer(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    if args.seconds or args.iters:
        t0, c0 = time.monotonic(), time.process_time()
        while not trainer.done():
            s0 = time.monotonic()
            trainer.train_step()
            trainer.elapsed += time.monotonic() - s0
        print(f"timed fit: {trainer.step} iterations in {trainer.elapsed:.1f} s "
              f"({time.process_time() - c0:.0f} s CPU), {1000 * trainer.elapsed / trainer.step:.1f} ms/step")
        print(f"PSNR (networks, every pixel) {full_psnr(trainer):.2f} dB; load average "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        return 0

    # fixed fraction: the schedules set rates / detail / phase for that point of the budget
    from core.schedules import CoarseToFine, LearningRate

    trainer.schedules = [LearningRate(trainer.base_lrs), CoarseToFine(), lambda tr, fr: setattr(tr, "phase", args.phase)]
    trainer.fraction = lambda: args.fraction  # type: ignore[method-assign]
    for _ in range(args.warmup):
        trainer.train_step()
    if args.cprofile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
    if args.torch_profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    t0, c0 = time.monotonic(), time.process_time()
    for _ in range(args.steps):
        trainer.train_step()
    wall = time.monotonic() - t0
    cpu = time.process_time() - c0
    if args.torch_profile:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    if args.cprofile:
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)
    print(f"{args.phase} step at fraction {args.fraction}: {1000 * wall / args.steps:.1f} ms wall, "
          f"{1000 * cpu / args.steps:.1f} ms CPU per step ({args.steps} steps); load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

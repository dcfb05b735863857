#!/usr/bin/env python
"""Batch benchmark: three shots with `inve batch` on a local Ray cluster, against running
them one after another with `inve train` (what a user does by hand without a batch).

    flock /tmp/inve-cpu.lock .venv/bin/python scripts/bench_batch.py            # 3 shots, 2 CPUs
    .venv/bin/python scripts/bench_batch.py --shots 4 --iters 300 --cpus 4

The shots are synthetic clips (tests/synth.py: a textured background under a panning
camera, a disc in front), the same size and budget each. Both ways run as fresh processes,
so both pay the same start-up (Python, torch); the batch also starts its Ray cluster. On
CPUs each `inve train` uses every core, each batch shot one core (Ray's ``num_cpus=1``), so
the batch runs as many shots at once as there are cores. Prints wall times, the speed-up
and the load average before the run (other work on the machine slows both).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "core", *args, "--progress", "none"], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"inve {' '.join(args)} failed: {proc.stderr.strip()}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="frames per shot")
    ap.add_argument("--size", default="96x64", help="frame size WxH")
    ap.add_argument("--iters", type=int, default=200, help="training iterations per shot")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    a = ap.parse_args()
    from tests.synth import make_clip, write_clip

    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="inve-bench-batch-") as tmp:
        tmp = Path(tmp)
        shots = []
        for i in range(a.shots):
            write_clip(make_clip(T=a.frames, size=(w, h), camera="pan", seed=20 + i), tmp / f"clip{i}")
            shots.append({"name": f"shot{i}", "video": f"clip{i}", "iters": a.iters, "max_side": max(w, h)})
        (tmp / "SHOTS.json").write_text(json.dumps({"shots": shots}))
        load = os.getloadavg()[0]

        seq = sum(run(["train", str(tmp / s["video"]), "-o", str(tmp / "seq" / s["name"]), "--iters", str(a.iters),
                       "--max-side", str(max(w, h))]) for s in shots)
        par = run(["batch", str(tmp / "SHOTS.json"), "-o", str(tmp / "batch"), "--cpus", str(a.cpus)])
        rerun = run(["batch", str(tmp / "SHOTS.json"), "-o", str(tmp / "batch"), "--cpus", str(a.cpus)])
        psnr = {}
        for way in ("seq", "batch"):
            psnr[way] = [json.loads((tmp / way / s["name"] / "metrics.json").read_text())["psnr"] for s in shots]

    print(f"{a.shots} shots of {a.frames} frames {w}x{h}, {a.iters} iterations each, {os.cpu_count()} cores "
          f"(load average before: {load:.2f})")
    print(f"  one after another (inve train x{a.shots}): {seq:6.1f} s   PSNR {psnr['seq']}")
    print(f"  inve batch (local Ray cluster, {a.cpus} CPUs): {par:6.1f} s   PSNR {psnr['batch']}")
    print(f"  speed-up {seq / par:.2f}x; rerunning the batch (all finished, skipped): {rerun:.1f} s")


if __name__ == "__main__":
    main()

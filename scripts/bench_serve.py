"""Benchmark the engine service (``inve serve``) the way the add-on uses it, through the client.

Issue #7 targets (warm service, 2 CPU cores): propagate 48 frames at 480x270 <= 1 s wall
(render + write), render one frame after a layer change <= 150 ms at 480x270 and <= 300 ms
at 1080p.

Usage:
    .venv/bin/python scripts/bench_serve.py                 # synthetic ground-truth projects: 480x270 x 48, 1920x1080 x 24
    .venv/bin/python scripts/bench_serve.py --project P     # a trained project (plain ``python -m core serve``)

Synthetic projects run the real service under tests/serve_gt.py, which only swaps the trained
networks for the clip's analytic mapping. The stack is scripts/bench_edit.py's: a sketch, a
paint image, a rigid sticker and an adjust region. Measured at the client (wall, what a user
waits) and in the engine (CPU seconds of the service process, which do not grow when other
processes load the machine).
  cold propagate   = first set_edits + propagate on a fresh service (imports torch, loads the project:
                     about what every click cost before, when each Propagate was a new process)
  warm propagate   = propagate again on the warm service, and after hiding one layer
  render_frame     = add one stroke (set_edits) + render the frame under the playhead to a PNG
                     (a new stroke is carried to every frame and refined against the pixels then),
                     and a playhead move (render another frame, stack unchanged)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_edit import make_assets  # noqa: E402
from inve_blender.io.engine_client import EngineClient  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def synthetic(tmp: Path, W: int, H: int, T: int, work_scale: float, refine: bool = True) -> tuple[Path, list[str]]:
    from synth import make_clip, make_gt_project

    clip_args = {"T": T, "size": [W, H], "camera": "pan_zoom"}
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=0)
    proj = make_gt_project(clip, tmp / f"proj_{W}x{H}", atlas_size=512, work_scale=work_scale).path
    spec = tmp / f"spec_{W}x{H}.json"
    spec.write_text(json.dumps({"clip": clip_args, "refine": refine}))
    return proj, [sys.executable, str(ROOT / "tests" / "serve_gt.py"), str(spec)]


def bench(name: str, project: Path, argv: list[str], tmp: Path, overlay: bool, repeat: int) -> None:
    info = json.loads((project / "project.json").read_text())
    W, H = info["source_size"]
    frames = info["frames"]
    doc = make_assets(tmp, W, H)
    for layer in doc:
        layer["frame"] = frames[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp / f"out_{name}"
    P = str(project)

    def propagate(client: EngineClient, label: str) -> tuple[float, dict]:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = client.call("propagate", timeout=600, project=P, output=str(out), overlay=overlay)
        return time.perf_counter() - t0, res

    t0 = time.perf_counter()
    client = EngineClient(argv, env=env)
    client.call("hello", timeout=120)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.call("set_edits", timeout=600, project=P, edits={"version": 1, "layers": doc}, base=str(tmp))
    cold_wall, cold = propagate(client, "cold")
    cold_total = time.perf_counter() - t0
    warm = [propagate(client, "warm") for _ in range(repeat)]
    hidden = dict(doc[1], visible=False)
    client.call("set_edits", timeout=600, project=P, edits={"version": 1, "layers": [doc[0], hidden, *doc[2:]]},
                base=str(tmp))
    hide_wall, hide = propagate(client, "hide")
    client.call("set_edits", timeout=600, project=P, edits={"version": 1, "layers": doc}, base=str(tmp))

    rng = np.random.default_rng(0)
    walls, cpus, engine = [], [], []
    sketch = dict(doc[0])
    for k in range(10):
        p = rng.uniform([0.1 * W, 0.1 * H], [0.9 * W, 0.9 * H], (4, 2)).tolist()
        sketch = dict(sketch, strokes=sketch["strokes"] + [{"points": p, "color": [0, 0, 1, 1], "width": 3.0}])
        f = int(rng.choice(frames))
        t1 = time.perf_counter()
        client.call("set_edits", timeout=60, project=P, edits={"version": 1, "layers": [sketch, *doc[1:]]},
                    base=str(tmp))
        r = client.call("render_frame", timeout=60, project=P, frame=f, output=str(tmp / f"preview_{name}.png"),
                        overlay=overlay)
        walls.append(time.perf_counter() - t1)
        cpus.append(r["cpu_ms"])
        engine.append(r["ms"])
    # the playhead moves (no change to the stack): the live preview while scrubbing
    scrub, scrub_engine = [], []
    for f in rng.choice(frames, 10):
        t1 = time.perf_counter()
        r = client.call("render_frame", timeout=60, project=P, frame=int(f), output=str(tmp / f"preview_{name}.png"),
                        overlay=overlay)
        scrub.append(time.perf_counter() - t1)
        scrub_engine.append(r["ms"])
    rss = rss_mb(client.pid) if client.pid else None
    client.shutdown(30)
    T = len(frames)
    med = statistics.median
    kind = "overlay RGBA" if overlay else "full-frame RGB"
    print(f"{name}: {T} frames at {W}x{H}, {kind} PNGs, 4-layer stack")
    print(f"  service start until hello answered           {start_s:7.2f} s wall (no torch import yet)")
    print(f"  cold: open + set_edits + propagate           {cold_total:7.2f} s wall (imports torch, loads the "
          f"project; propagate alone {cold_wall:.2f} s, engine CPU {cold['cpu_seconds']:.2f} s)")
    print(f"  warm propagate                               {med(w for w, _ in warm):7.2f} s wall, engine CPU "
          f"{med(r['cpu_seconds'] for _, r in warm):.2f} s (median of {repeat})")
    print(f"  warm propagate after hiding one layer        {hide_wall:7.2f} s wall, engine CPU {hide['cpu_seconds']:.2f} s")
    print(f"  add a stroke + render_frame                  {med(walls) * 1000:7.1f} ms wall at the client "
          f"(max {max(walls) * 1000:.1f}), engine {med(engine):.1f} ms wall / {med(cpus):.1f} ms CPU (median of 10)")
    print(f"  playhead move: render_frame                  {med(scrub) * 1000:7.1f} ms wall at the client "
          f"(max {max(scrub) * 1000:.1f}), engine {med(scrub_engine):.1f} ms (median of 10)")
    print(f"  service RSS after the run                    {rss:7.0f} MB" if rss else "  service RSS: n/a")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=None, help="a trained project (default: synthetic ground truth)")
    ap.add_argument("--full", action="store_true", help="full-frame PNGs instead of overlays")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-1080p", action="store_true")
    ap.add_argument("--no-refine", action="store_true",
                    help="synthetic projects: switch off the drift refinement of carried points (to see its cost)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        if os.getloadavg()[0] > 1.0:
            print(f"note: load average {os.getloadavg()[0]:.1f} (other processes): wall times are inflated; "
                  "engine CPU time is what an idle machine would show")
        if args.project:
            bench("trained project", args.project.resolve(), [sys.executable, "-m", "core", "serve"], tmp,
                  not args.full, args.repeat)
            return
        refine = not args.no_refine
        if not refine:
            print("drift refinement of carried points: OFF")
        proj, argv = synthetic(tmp, 480, 270, 48, 1.0, refine)
        bench("bundled clip size", proj, argv, tmp, not args.full, args.repeat)
        if not args.skip_1080p:
            proj, argv = synthetic(tmp, 1920, 1080, 24, 0.25, refine)
            bench("1080p", proj, argv, tmp, not args.full, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

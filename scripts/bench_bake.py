"""Re-bake a trained project in memory and check the bake stage's progress ETA (issue 10 item 5).

The bake reports one step per frame (the atlases and their usage splats are spread over the
frame steps); this prints, from the JSON progress it emits, the worst ETA error between 10 %
and 90 % of the stage's steps relative to the time that really remained (as
``scripts/bench_fit.py`` does for a training log). Nothing is written to the project.

    .venv/bin/python scripts/bench_bake.py PROJECT
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path)
    args = ap.parse_args()
    from core.bake import bake
    from core.model import load_model
    from core.progress import Progress
    from core.project import Project
    from core.video import load_clip

    proj = Project.open(args.project)
    model, _ = load_model(proj.path / proj.CHECKPOINT, "cpu")
    info = proj.info
    frames = load_clip(proj.source_path(), info.frames[0], info.frames[-1] + 1, info.work_size)
    load = os.getloadavg()[0]
    buf = io.StringIO()
    bake(model, frames, info.source_size, Progress("json", stream=buf, min_interval=0.0))
    ev = [json.loads(line) for line in buf.getvalue().splitlines()]
    end, total = ev[-1]["elapsed"], ev[-1]["total"]
    worst, worst_s = 0.0, 0.0
    for e in ev:
        remaining = end - e["elapsed"]
        if e["eta"] is None or not 0.1 * total <= e["step"] <= 0.9 * total or remaining <= 0:
            continue
        worst = max(worst, abs(e["eta"] - remaining) / remaining)
        worst_s = max(worst_s, abs(e["eta"] - remaining))
    print(f"bake of {args.project}: {len(frames)} frames at {info.work_size[0]}x{info.work_size[1]}, {total} steps, "
          f"{end:.1f} s; worst ETA error from 10 % to 90 % of the stage: {worst * 100:.0f} % ({worst_s:.1f} s); "
          f"load average {load:.1f} at the start")
    for e in ev[:: max(1, len(ev) // 12)]:
        print(f"  step {e['step']:5d}  elapsed {e['elapsed']:7.2f} s  eta {e['eta']}  really left {end - e['elapsed']:.2f} s")


if __name__ == "__main__":
    main()

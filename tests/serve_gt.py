"""Run ``inve serve`` on ground-truth synthetic projects (no trained networks): a test launcher.

``python tests/serve_gt.py SPEC.json`` rebuilds the analytic mapping of the synthetic clip
described in SPEC.json (``make_clip`` arguments T, size, camera[, occluder]; deterministic),
makes every project use it instead of a checkpoint, then runs the real service. If SPEC names a ``delay_file`` holding a number,
each frame's rendering first sleeps that many seconds (to cancel or kill mid-work on purpose);
``"refine": false`` switches the drift refinement of carried points off (for benchmarks);
``"workers_from": N`` renders a Propagate of N frames or more in render workers.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from synth import make_ground_truth  # noqa: E402
from core import cli  # noqa: E402
from core.edits.session import EditSession  # noqa: E402
from core.project import Project  # noqa: E402


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    c = spec["clip"]
    gt = make_ground_truth(int(c["T"]), tuple(c["size"]), c.get("camera", "pan_zoom"), c.get("occluder", True))
    Project.mapping = lambda self, device="cpu": gt  # type: ignore[assignment]
    if spec.get("refine") is False:  # benchmarks: figures without the photometric drift refinement
        from core.edits.context import RenderContext

        RenderContext.REFINE = False
    if "workers_from" in spec:  # Propagate through render workers from this many frames
        import core.serve

        core.serve.WORKERS_FROM_FRAMES = int(spec["workers_from"])
    delay_file = spec.get("delay_file")
    if delay_file:
        orig = EditSession.frame_patches

        def slow(self, t, cache=True):
            try:
                time.sleep(float(Path(delay_file).read_text()))
            except (OSError, ValueError):
                pass
            return orig(self, t, cache)

        EditSession.frame_patches = slow  # type: ignore[assignment]
    return cli.main(["serve", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())

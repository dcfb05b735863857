"""How far one foreground outline holds on the bundled clip (issue #9: the bunny's ears).

Grows masks from the outline of the bunny on frame 47 (the one in tests/test_hints.py) over
frames 0..47 at a working width, and counts the hand-checked points of the bunny (ears,
hands) inside the mask and of the scene right next to them (grass, leaves, trees) inside it,
on frames 40, 32, 24, 16, 8 and 0::

    python scripts/bench_hints.py [--width 240] [--without local,outline,own,leaks,gaps] [--verbose]

``--without`` switches parts of the growth off to measure what each one is worth:
``local`` (GrabCut's colour models from the whole frame instead of a crop around the
object), ``outline`` (the hint frame's mask is GrabCut's plus the outline as drawn, eroded
by a pixel), ``own`` (no thin parts kept by their own colours along the flow), ``leaks``
(what GrabCut adds outside the carried mask is not checked), ``gaps`` (the carried core is
sure foreground for GrabCut even where it now looks like the background around it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402

from core import hints  # noqa: E402
from core.flow import compute_flow  # noqa: E402
from core.video import default_clip, iter_frames  # noqa: E402
from tests.test_hints import BUNNY_OUTLINE, BUNNY_POINTS, SCENE_POINTS, held  # noqa: E402


def _switch_off(parts: list[str]) -> None:
    for part in parts:
        if part == "local":
            hints._grabcut = hints._grabcut_crop
        elif part == "outline":
            hints._fit_outline = lambda img, seed, bg: np.maximum(
                hints._grabcut(img, seed, bg), cv2.erode(seed, np.ones((3, 3), np.uint8)))
        elif part == "own":
            hints._keep_own = lambda img, prev_img, prev, carried, disp, cut: np.zeros_like(carried)
        elif part == "leaks":
            hints._drop_leaks = lambda img, carried, cut, mask: mask
        elif part == "gaps":
            hints._unlike_own = lambda img, prev_img, prev, carried, disp: np.zeros_like(carried)
        elif part:
            raise SystemExit(f"--without: unknown part {part!r} (local, outline, own, leaks, gaps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=240, help="working width (the clip is 480x270)")
    ap.add_argument("--without", default="", help="comma-separated parts to switch off")
    ap.add_argument("--verbose", action="store_true", help="name the points missed and leaked")
    args = ap.parse_args()
    _switch_off(args.without.split(","))
    w = args.width
    h = round(w * 270 / 480)
    frames = np.stack([cv2.resize(np.asarray(f), (w, h), interpolation=cv2.INTER_AREA)
                       for f in iter_frames(default_clip(), 0, 48)])
    flow = compute_flow(frames)
    doc = {"version": 1, "hints": [{"frame": 47, "polygon": BUNNY_OUTLINE, "label": "fg"}]}
    parsed = hints.parse_hints(doc, None, (480, 270), list(range(len(frames))))
    t0, c0 = time.perf_counter(), time.process_time()
    masks = hints.grow_masks(frames, flow, parsed, (480, 270))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cells, total_b, total_s, nb, ns = [], 0, 0, 0, 0
    for t in sorted(BUNNY_POINTS, reverse=True):
        b, s = held(masks, t, BUNNY_POINTS[t]), held(masks, t, SCENE_POINTS[t])
        total_b, total_s, nb, ns = total_b + sum(b.values()), total_s + sum(s.values()), nb + len(b), ns + len(s)
        cells.append(f"{t}: {sum(b.values())}/{len(b)} {sum(s.values())}/{len(s)}")
        if args.verbose:
            print(f"frame {t}: missed {[k for k, v in b.items() if not v]}, leaked {[k for k, v in s.items() if v]}")
    print(f"width {w}, without [{args.without}]: bunny / scene points inside the mask by frame: " + ", ".join(cells))
    print(f"bunny {total_b}/{nb} held, scene {total_s}/{ns} leaked; growing 48 frames: {wall:.1f} s ({cpu:.1f} s CPU)")


if __name__ == "__main__":
    main()

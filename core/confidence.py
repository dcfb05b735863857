"""The per-frame confidence read-out of a project (``inve info``): where edits may slide.

Baking measures, per frame, how well the networks reconstruct it (PSNR) and how far the
inverse mapping misses the forward one (median cycle error per layer, source px). A frame
whose cycle error is well above the clip's typical one, or whose reconstruction is poor,
is where an edit or a track is most likely off: the place to check, and to correct
(``inve correct``). Per-point estimates are in TRACKS.json's ``error_px`` (core/refine.py).
"""
from __future__ import annotations

import math
from typing import Any

#: a frame is flagged when its cycle error exceeds this many times the clip's median (and
#: half a pixel), or its PSNR is this many dB below the clip's median
CYCLE_FACTOR = 2.0
CYCLE_MIN_PX = 0.5
PSNR_DROP_DB = 3.0


def _median(vals: list[float]) -> float:
    v = sorted(x for x in vals if x is not None and math.isfinite(x))
    if not v:
        return float("nan")
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def frame_summary(per_frame: dict[str, Any]) -> dict[str, Any]:
    """Per source frame: the worst layer's cycle error, PSNR, and whether to check it."""
    frames = list(per_frame.get("frame", []))
    psnr = list(per_frame.get("psnr", []))
    cyc = per_frame.get("cycle_error_px", {})
    worst = [max((v[i] for v in cyc.values() if i < len(v) and v[i] is not None), default=None)
             for i in range(len(frames))]
    med_c, med_p = _median([w for w in worst if w is not None]), _median(psnr)
    flagged = []
    for i, f in enumerate(frames):
        c = worst[i]
        p = psnr[i] if i < len(psnr) else None
        bad_c = c is not None and math.isfinite(med_c) and c > max(CYCLE_MIN_PX, CYCLE_FACTOR * med_c)
        bad_p = p is not None and math.isfinite(med_p) and p < med_p - PSNR_DROP_DB
        if bad_c or bad_p:
            flagged.append(f)
    return {"frames": frames, "cycle_error_px": worst, "psnr": psnr,
            "median_cycle_error_px": None if not math.isfinite(med_c) else round(med_c, 3),
            "check_frames": flagged,
            "summary": (f"{len(flagged)} of {len(frames)} frames may let edits slide"
                        + (f": {', '.join(str(f) for f in flagged[:12])}{' ...' if len(flagged) > 12 else ''}"
                           if flagged else ""))}


__all__ = ["frame_summary"]

"""Moving, scaling and rotating a sticker by dragging in the preview (G/S/R), without bpy.

The modal operator turns mouse positions into source pixels (through the strip's placement)
and asks :class:`StickerDrag` for the sticker's new centre, scale and rotation; everything
here is plain arithmetic, tested without Blender (under the bpy module modal operators never
run). Conventions as EDITS.json: centre in source pixels (x right, y down), rotation in
radians counter-clockwise on screen, scale a factor of the image's own size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

Point = tuple[float, float]
MIN_SCALE, MAX_SCALE = 0.01, 100.0


@dataclass(frozen=True)
class StickerPose:
    center: Point
    scale: float = 1.0
    rotation: float = 0.0


def screen_angle(v: Point) -> float:
    """Counter-clockwise angle on screen of a vector in source pixels (y down)."""
    return math.atan2(-v[1], v[0])


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@dataclass
class StickerDrag:
    """One drag: started at ``start`` (source pixels) on pose ``pose`` in mode G, S or R.

    Blender's habits: G moves by the mouse's motion; S scales by the ratio of the mouse's
    distance to the centre now and at the start; R turns by the angle the mouse swept around
    the centre. ``precise`` (Shift) does a tenth of it; ``snap`` (Ctrl) rounds to whole
    pixels, 0.1 scale steps or 5 degrees. Switching modes mid-drag restarts from the pose so far.
    """

    pose: StickerPose
    start: Point
    mode: str = "G"

    def switch(self, mode: str, now: Point) -> None:
        self.pose = self.apply(now)
        self.start, self.mode = now, mode

    def apply(self, now: Point, precise: bool = False, snap: bool = False) -> StickerPose:
        p, (sx, sy), (nx, ny) = self.pose, self.start, now
        k = 0.1 if precise else 1.0
        if self.mode == "G":
            cx, cy = p.center[0] + (nx - sx) * k, p.center[1] + (ny - sy) * k
            if snap:
                cx, cy = round(cx), round(cy)
            return replace(p, center=(cx, cy))
        cx, cy = p.center
        v0, v1 = (sx - cx, sy - cy), (nx - cx, ny - cy)
        if self.mode == "S":
            d0 = math.hypot(*v0)
            if d0 < 1e-6:
                return p
            factor = 1.0 + (math.hypot(*v1) / d0 - 1.0) * k
            s = min(max(p.scale * factor, MIN_SCALE), MAX_SCALE)
            if snap:
                s = max(MIN_SCALE, round(s * 10.0) / 10.0)
            return replace(p, scale=s)
        if self.mode == "R":
            if math.hypot(*v0) < 1e-6 or math.hypot(*v1) < 1e-6:
                return p
            r = p.rotation + wrap_angle(screen_angle(v1) - screen_angle(v0)) * k
            if snap:
                step = math.radians(5.0)
                r = round(r / step) * step
            return replace(p, rotation=r)
        raise ValueError(f"unknown transform mode {self.mode!r} (G, S or R)")

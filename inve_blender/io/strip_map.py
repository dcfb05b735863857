"""Strip <-> source mapping: scene frames to source frames, preview coordinates to source pixels.

The engine speaks *source frames* (0-based indices into the video file) and *source pixels*;
the Sequencer speaks *scene frames* and *preview coordinates*. :class:`StripTiming` and
:class:`StripPlacement` do those conversions; they are built from a strip's attributes by
``blender/sequencer.py`` and tested here without Blender. Never imports bpy.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

RESULT_TAG = "inve_result_of"  # custom property on image strips we created: name of the movie strip
EPS = 1e-6


# ---------------------------------------------------------------------------------------
# time
@dataclass(frozen=True)
class StripTiming:
    """How a movie strip maps scene frames to source frames.

    ``frame_start`` is the scene frame where the strip's first content frame sits (before
    the handles/trims), ``final_start``/``final_end`` the visible half-open range of scene
    frames, ``anim_offset`` the source frames cut off the file's start (hard trim), ``rate``
    source frames per scene frame (1 unless Blender retimed the strip to play a clip of a
    different frame rate at its real speed) and ``length`` the number of content frames.
    """

    frame_start: float
    final_start: int
    final_end: int
    anim_offset: int = 0
    rate: float = 1.0
    length: int | None = None

    def scene_to_source(self, scene_frame: float) -> int | None:
        """Source frame shown at ``scene_frame``; ``None`` where the strip shows nothing."""
        if not (self.final_start <= scene_frame < self.final_end):
            return None
        content = math.floor((scene_frame - self.frame_start) * self.rate + EPS)
        if content < 0 or (self.length is not None and content >= self.length):
            return None
        return self.anim_offset + content

    def source_to_scene(self, source_frame: int) -> int:
        """First scene frame that shows ``source_frame`` (may lie outside the visible range)."""
        content = source_frame - self.anim_offset
        return int(math.ceil(self.frame_start + content / self.rate - EPS))

    def visible_source_range(self) -> tuple[int, int]:
        """Half-open range of source frames the strip shows (what ``--frames`` should train)."""
        first = self.scene_to_source(self.final_start)
        last = self.scene_to_source(self.final_end - 1)
        if first is None or last is None:
            raise ValueError("the strip shows no frames")
        return first, last + 1


def playback_rate(content_frames: int | None, timeline_frames: int) -> float:
    """Source frames per scene frame from the file's frame count and the strip's length.

    Blender's "adjust playback rate" stretches a strip so a 24 fps clip plays at real speed
    in a 30 fps scene; then ``frame_duration`` is no longer the file's frame count. Ratios
    within half a frame of 1 are exactly 1 (the usual case).
    """
    if not content_frames or timeline_frames <= 0:
        return 1.0
    rate = content_frames / timeline_frames
    if abs(content_frames - timeline_frames) <= 0.5:
        return 1.0
    return rate


# ---------------------------------------------------------------------------------------
# space
@dataclass(frozen=True)
class StripPlacement:
    """Where a strip's image lands in the render/preview (Blender's strip transform).

    The image (``source_size``) is centred in the render (``render_size``), moved by
    ``offset`` render pixels, and scaled (``scale`` times ``fit``) and rotated
    (``rotation`` radians, counter-clockwise) about its ``origin`` (fractions of the image,
    from the bottom-left). Preview/View2D coordinates are render pixels centred on the frame
    with y up, which is what annotation strokes store.
    """

    render_size: tuple[float, float]
    source_size: tuple[float, float]
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    origin: tuple[float, float] = (0.5, 0.5)
    fit: tuple[float, float] = (1.0, 1.0)
    flip_x: bool = False
    flip_y: bool = False

    def _frame(self) -> tuple[float, float, float, float, float, float]:
        W, H = self.render_size
        w, h = self.source_size
        bl_x = (W - w) / 2.0 + self.offset[0]
        bl_y = (H - h) / 2.0 + self.offset[1]
        px, py = self.origin[0] * w, self.origin[1] * h
        sx, sy = self.scale[0] * self.fit[0], self.scale[1] * self.fit[1]
        return bl_x, bl_y, px, py, sx, sy

    def view_to_source(self, x: float, y: float) -> tuple[float, float]:
        """Preview View2D point (centred, y up, render px) -> source pixel (x right, y down)."""
        W, H = self.render_size
        w, h = self.source_size
        bl_x, bl_y, px, py, sx, sy = self._frame()
        # render pixel from the bottom-left, relative to the pivot
        rx, ry = x + W / 2.0 - bl_x - px, y + H / 2.0 - bl_y - py
        c, s = math.cos(-self.rotation), math.sin(-self.rotation)
        ux, uy = c * rx - s * ry, s * rx + c * ry
        ix, iy = ux / sx + px, uy / sy + py  # image pixel from the bottom-left
        if self.flip_x:
            ix = w - ix
        if self.flip_y:
            iy = h - iy
        return ix, h - iy

    def source_to_view(self, x: float, y: float) -> tuple[float, float]:
        """Inverse of :meth:`view_to_source`."""
        W, H = self.render_size
        w, h = self.source_size
        bl_x, bl_y, px, py, sx, sy = self._frame()
        ix, iy = x, h - y
        if self.flip_x:
            ix = w - ix
        if self.flip_y:
            iy = h - iy
        ux, uy = (ix - px) * sx, (iy - py) * sy
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        rx, ry = c * ux - s * uy, s * ux + c * uy
        return rx + bl_x + px - W / 2.0, ry + bl_y + py - H / 2.0

    def pixels_per_source_pixel(self) -> float:
        """Average render pixels per source pixel (to convert stroke widths)."""
        sx, sy = self._frame()[4:]
        return math.sqrt(abs(sx * sy))


FIT_METHODS = ("FIT", "FILL", "STRETCH", "ORIGINAL")


def fit_scale(method: str, render_size: tuple[float, float], source_size: tuple[float, float]) -> tuple[float, float]:
    """Scale Blender applies for a strip fit method (4.x keeps it out of ``transform.scale``)."""
    W, H = render_size
    w, h = source_size
    if method == "FIT":
        f = min(W / w, H / h)
        return f, f
    if method == "FILL":
        f = max(W / w, H / h)
        return f, f
    if method == "STRETCH":
        return W / w, H / h
    return 1.0, 1.0


# ---------------------------------------------------------------------------------------
# names
def result_strip_name(movie_strip_name: str) -> str:
    return f"INVE {movie_strip_name}"[:63]


def frame_names(source_frames: Iterable[int]) -> list[str]:
    """The PNG names ``inve edit`` writes: source frame index, zero-padded to 4 digits (or to
    the width of the last index, so names sort)."""
    frames = [int(f) for f in source_frames]
    width = max(4, len(str(max(frames)))) if frames else 4
    return [f"{f:0{width}d}.png" for f in frames]


def frame_files(folder: str, source_frames: Iterable[int]) -> list[str]:
    """:func:`frame_names`, checked: every frame must be in ``folder``."""
    names = frame_names(source_frames)
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} propagated frame(s) missing in {folder}, e.g. {missing[0]}")
    return names


# ---------------------------------------------------------------------------------------
# the result strip follows its movie strip
@dataclass(frozen=True)
class OverlaySpan:
    """Where an image strip of one PNG per project frame goes so it lines up with its movie:
    its first element at ``frame_start``, ``offset_start``/``offset_end`` elements hidden at
    its ends (the movie's trims), ``length`` elements in all."""

    frame_start: int
    offset_start: int
    offset_end: int
    length: int

    @property
    def visible(self) -> bool:
        return self.offset_start + self.offset_end < self.length


def overlay_span(timing: StripTiming, source_frames: list[int]) -> OverlaySpan:
    """Span of the result strip for a movie strip with ``timing`` (frame rate 1:1 with the
    scene; a retimed clip keeps its first frame aligned)."""
    n = len(source_frames)
    start = timing.source_to_scene(source_frames[0])
    end = start + n
    vis_start = min(max(start, timing.final_start), end)
    vis_end = max(min(end, timing.final_end), vis_start)
    if vis_end == vis_start:  # the movie shows none of these frames: all hidden
        return OverlaySpan(start, n, 0, n)
    return OverlaySpan(start, vis_start - start, end - vis_end, n)


def assign_ids(current: list[str | None], new_id: Callable[[], str]) -> list[str]:
    """Unique ids for strips in order: a strip keeps its id unless an earlier strip has it
    (a duplicate or the second half of a blade cut copies its custom properties)."""
    seen: set[str] = set()
    out = []
    for cid in current:
        if not cid or cid in seen:
            cid = new_id()
        seen.add(cid)
        out.append(cid)
    return out

"""Video Sequencer helpers: the active movie strip, frame mapping, placement, result strips.

The engine speaks *source frames* (0-based indices into the video file) and *source pixels*;
the Sequencer speaks *scene frames* and *preview coordinates*. The pure functions here
(:class:`StripTiming`, :class:`StripPlacement`) do those conversions and are tested
directly; the functions taking Blender objects only read/write their attributes, so this
module never imports bpy at import time (the unit tests run without Blender).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable

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


def scene_fps(scene: Any) -> float:
    return float(scene.render.fps) / float(scene.render.fps_base or 1.0)


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


def strip_timing(strip: Any, content_frames: int | None = None) -> StripTiming:
    """Read a movie strip's timing (``content_frames``: frames in the file after the hard trims)."""
    ao = int(getattr(strip, "animation_offset_start", getattr(strip, "anim_offset_start", 0)))
    rate = playback_rate(content_frames, int(strip.frame_duration))
    return StripTiming(frame_start=float(strip.frame_start), final_start=int(strip.frame_final_start),
                       final_end=int(strip.frame_final_end), anim_offset=ao, rate=rate,
                       length=content_frames)


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


def render_size(scene: Any) -> tuple[int, int]:
    """Full render resolution (annotation coordinates ignore the percentage slider)."""
    return int(scene.render.resolution_x), int(scene.render.resolution_y)


def strip_source_size(strip: Any) -> tuple[int, int]:
    elems = getattr(strip, "elements", None)
    if elems is not None and len(elems) and elems[0].orig_width > 0:
        return int(elems[0].orig_width), int(elems[0].orig_height)
    raise ValueError(f"strip {strip.name!r} has no loaded media (is the file missing?)")


def strip_placement(scene: Any, strip: Any, source_size: tuple[int, int] | None = None) -> StripPlacement:
    size = source_size or strip_source_size(strip)
    rs = render_size(scene)
    t = strip.transform
    method = getattr(strip, "fit_method", None)  # a strip property up to 4.x; baked into scale in 5.0
    fit = fit_scale(method, rs, size) if method else (1.0, 1.0)
    return StripPlacement(render_size=rs, source_size=size, scale=(t.scale_x, t.scale_y),
                          offset=(t.offset_x, t.offset_y), rotation=float(t.rotation),
                          origin=(float(t.origin[0]), float(t.origin[1])), fit=fit,
                          flip_x=bool(strip.use_flip_x), flip_y=bool(strip.use_flip_y))


# ---------------------------------------------------------------------------------------
# strips in the scene
def sequencer_scene(context: Any) -> Any:
    """The scene the Sequencer shows (5.0: ``context.sequencer_scene``, None in background)."""
    scene = getattr(context, "sequencer_scene", None)
    return scene if scene is not None else context.scene


def strip_collection(scene: Any) -> Any:
    """Top-level strips (5.0 ``strips``; 4.x ``sequences``). ``hasattr``: empty collections are falsy."""
    se = scene.sequence_editor
    if se is None:
        se = scene.sequence_editor_create()
    return se.strips if hasattr(se, "strips") else se.sequences


def all_strips(scene: Any) -> Iterable[Any]:
    se = scene.sequence_editor
    if se is None:
        return []
    return se.strips_all if hasattr(se, "strips_all") else se.sequences_all


def active_strip(scene: Any) -> Any:
    se = scene.sequence_editor
    if se is None:
        return None
    return se.active_strip


def movie_strip_problem(scene: Any) -> str | None:
    """Why there is no usable active movie strip (``None`` if there is one)."""
    if scene is None or scene.sequence_editor is None:
        return "No sequencer in this scene: add a movie strip first"
    strip = active_strip(scene)
    if strip is None:
        return "No active strip: click a movie strip in the Sequencer"
    if strip.type != "MOVIE":
        kind = strip.type.lower().replace("_", " ")
        article = "an" if kind[:1] in "aeiou" else "a"
        return f"The active strip '{strip.name}' is {article} {kind} strip, not a movie"
    if not os.path.isfile(abs_path(strip.filepath)):
        return f"The movie file of '{strip.name}' is missing: {abs_path(strip.filepath)}"
    return None


def abs_path(path: str) -> str:
    """Resolve a Blender path (``//`` = next to the .blend) without needing bpy in tests."""
    try:
        import bpy

        return os.path.normpath(bpy.path.abspath(path))
    except ImportError:  # pragma: no cover - only outside Blender
        return os.path.normpath(path)


def result_strip_name(movie_strip_name: str) -> str:
    return f"INVE {movie_strip_name}"[:63]


def find_result_strip(scene: Any, movie_strip: Any) -> Any:
    for s in all_strips(scene):
        if s.type == "IMAGE" and s.get(RESULT_TAG) == movie_strip.name:
            return s
    return None


def free_channel_above(scene: Any, movie_strip: Any, start: int, end: int, ignore: Any = None) -> int:
    """Lowest channel above the movie strip with no other strip in [start, end)."""
    channel = movie_strip.channel + 1
    others = [s for s in strip_collection(scene) if s != movie_strip and s != ignore]
    while True:
        busy = any(s.channel == channel and s.frame_final_start < end and start < s.frame_final_end for s in others)
        if not busy and channel <= 128:
            return channel
        if channel >= 128:
            raise ValueError("no free channel above the movie strip")
        channel += 1


def frame_files(folder: str, source_frames: Iterable[int]) -> list[str]:
    """The PNG names ``inve edit`` writes: source frame index, zero-padded to 4 digits (or to
    the width of the last index, so names sort)."""
    frames = [int(f) for f in source_frames]
    width = max(4, len(str(max(frames)))) if frames else 4
    names = [f"{f:0{width}d}.png" for f in frames]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} propagated frame(s) missing in {folder}, e.g. {missing[0]}")
    return names


def place_result_strip(scene: Any, movie_strip: Any, folder: str, source_frames: list[int],
                       timing: StripTiming) -> Any:
    """Create or update the image strip of propagated frames in the channel above the movie.

    Frame ``source_frames[i]`` is shown at the scene frame where the movie strip shows it, so
    the edit lines up in time; a second run replaces the images of the same strip in place.
    """
    names = frame_files(folder, source_frames)
    start = timing.source_to_scene(source_frames[0])
    end = start + len(names)
    coll = strip_collection(scene)
    strip = find_result_strip(scene, movie_strip)
    directory = folder.rstrip("/\\") + os.sep
    if strip is None:
        channel = free_channel_above(scene, movie_strip, start, end)
        strip = coll.new_image(result_strip_name(movie_strip.name), os.path.join(folder, names[0]),
                               channel, start, fit_method="ORIGINAL")
        for n in names[1:]:
            strip.elements.append(n)
        strip[RESULT_TAG] = movie_strip.name
    else:
        # in place: same strip, channel, name and settings; new images and timing
        strip.directory = directory
        while len(strip.elements) > 1:
            strip.elements.pop(len(strip.elements) - 1)
        strip.elements[0].filename = names[0]
        for n in names[1:]:
            strip.elements.append(n)
        strip.frame_offset_start = strip.frame_offset_end = 0
        strip.frame_start = start
        if any(s.channel == strip.channel and s != strip and s.frame_final_start < end and start < s.frame_final_end
               for s in coll):
            strip.channel = free_channel_above(scene, movie_strip, start, end, ignore=strip)
        strip.invalidate_cache("RAW")
    # Same placement as the movie: the PNGs have the movie's source size.
    t, mt = strip.transform, movie_strip.transform
    t.scale_x, t.scale_y, t.offset_x, t.offset_y = mt.scale_x, mt.scale_y, mt.offset_x, mt.offset_y
    t.rotation = mt.rotation
    t.origin = tuple(mt.origin)
    if hasattr(movie_strip, "fit_method"):
        strip.fit_method = movie_strip.fit_method
    strip.use_flip_x, strip.use_flip_y = movie_strip.use_flip_x, movie_strip.use_flip_y
    strip.blend_type = "ALPHA_OVER"
    return strip

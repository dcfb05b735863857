"""The Sequencer side of strips: the active movie strip, reading a strip's timing and placement,
and the image strip that shows INVE's result above its movie strip.

Only reads and writes attributes of Blender objects (pure mapping lives in ``io/strip_map.py``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from ..io.strip_map import (RESULT_TAG, OverlaySpan, StripPlacement, StripTiming, assign_ids, fit_scale, frame_files,
                            frame_names, overlay_span, playback_rate, result_strip_name)

# ---------------------------------------------------------------------------------------
# reading a strip
def scene_fps(scene: Any) -> float:
    return float(scene.render.fps) / float(scene.render.fps_base or 1.0)


def strip_timing(strip: Any, content_frames: int | None = None) -> StripTiming:
    """Read a movie strip's timing (``content_frames``: frames in the file after the hard trims)."""
    ao = int(getattr(strip, "animation_offset_start", getattr(strip, "anim_offset_start", 0)))
    rate = playback_rate(content_frames, int(strip.frame_duration))
    return StripTiming(frame_start=float(strip.frame_start), final_start=int(strip.frame_final_start),
                       final_end=int(strip.frame_final_end), anim_offset=ao, rate=rate,
                       length=content_frames)


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


MOVIE_ID = "inve_strip_id"  # custom property on movie strips: which result strip is theirs


def movie_strips(scene: Any) -> list[Any]:
    return [s for s in all_strips(scene) if s.type == "MOVIE"]


def ensure_strip_ids(scene: Any) -> None:
    """Give every movie strip its own id (a duplicate or a blade cut's second half copied the
    original's): the result strip it owns carries that id. Writes only what changes."""
    import uuid

    movies = sorted(movie_strips(scene), key=lambda m: (m.frame_final_start, m.channel, m.name))
    ids = assign_ids([m.get(MOVIE_ID) for m in movies], lambda: uuid.uuid4().hex[:12])
    for m, i in zip(movies, ids):
        if m.get(MOVIE_ID) != i:
            m[MOVIE_ID] = i


def find_result_strip(scene: Any, movie_strip: Any) -> Any:
    mid = movie_strip.get(MOVIE_ID)
    if not mid:
        return None
    for s in all_strips(scene):
        if s.type == "IMAGE" and s.get(RESULT_TAG) == mid:
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


def place_result_strip(scene: Any, movie_strip: Any, folder: str, source_frames: list[int],
                       timing: StripTiming, streaming: bool = False) -> Any:
    """Create or update the image strip of propagated frames in the channel above the movie.

    Frame ``source_frames[i]`` is shown at the scene frame where the movie strip shows it, so
    the edit lines up in time; a second run replaces the images of the same strip in place.
    ``streaming``: the frames are still being written (a running or cancelled Propagate):
    the strip lists them all and shows each as it arrives.
    """
    names = frame_names(source_frames) if streaming else frame_files(folder, source_frames)
    ensure_strip_ids(scene)
    coll = strip_collection(scene)
    strip = find_result_strip(scene, movie_strip)
    directory = folder.rstrip("/\\") + os.sep
    span = overlay_span(timing, source_frames)
    if strip is None:
        channel = free_channel_above(scene, movie_strip, span.frame_start, span.frame_start + span.length)
        strip = coll.new_image(result_strip_name(movie_strip.name), os.path.join(folder, names[0]),
                               channel, span.frame_start, fit_method="ORIGINAL")
        for n in names[1:]:
            strip.elements.append(n)
        strip[RESULT_TAG] = movie_strip[MOVIE_ID]
    else:
        # in place: same strip, channel, name and settings; new images and timing
        if os.path.normpath(bpy_abspath(strip.directory)) != os.path.normpath(folder) or \
                [e.filename for e in strip.elements] != names:
            strip.directory = directory
            while len(strip.elements) > 1:
                strip.elements.pop(len(strip.elements) - 1)
            strip.elements[0].filename = names[0]
            for n in names[1:]:
                strip.elements.append(n)
        strip.invalidate_cache("RAW")
    align_result_strip(scene, strip, movie_strip, span)
    strip.blend_type = "ALPHA_OVER"
    return strip


def bpy_abspath(path: str) -> str:
    try:
        import bpy

        return bpy.path.abspath(path)
    except ImportError:  # pragma: no cover - only outside Blender
        return path


def _set(obj: Any, name: str, value: Any) -> None:
    """Assign only when it changes (a depsgraph handler must not trigger itself forever)."""
    cur = getattr(obj, name)
    if isinstance(value, float) or isinstance(cur, float):
        if abs(float(cur) - float(value)) < 1e-6:
            return
    elif cur == value:
        return
    setattr(obj, name, value)


def align_result_strip(scene: Any, strip: Any, movie_strip: Any, span: OverlaySpan, stale: bool = False) -> None:
    """Line the result strip up with its movie: time (slide, trims, cuts), placement, flips;
    muted where it shows nothing of the movie's frames, or another edit stack (``stale``)."""
    _set(strip, "frame_start", span.frame_start)
    _set(strip, "frame_offset_start", span.offset_start if span.visible else 0)
    _set(strip, "frame_offset_end", span.offset_end if span.visible else 0)
    _set(strip, "mute", stale or not span.visible)
    start, end = strip.frame_final_start, strip.frame_final_end
    if strip.channel <= movie_strip.channel or any(
            s.channel == strip.channel and s != strip and s.frame_final_start < end and start < s.frame_final_end
            for s in strip_collection(scene)):
        strip.channel = free_channel_above(scene, movie_strip, start, end, ignore=strip)
    # Same placement as the movie: the PNGs have the movie's source size.
    t, mt = strip.transform, movie_strip.transform
    for name in ("scale_x", "scale_y", "offset_x", "offset_y", "rotation"):
        _set(t, name, getattr(mt, name))
    if tuple(t.origin) != tuple(mt.origin):
        t.origin = tuple(mt.origin)
    if hasattr(movie_strip, "fit_method"):
        _set(strip, "fit_method", movie_strip.fit_method)
    _set(strip, "use_flip_x", movie_strip.use_flip_x)
    _set(strip, "use_flip_y", movie_strip.use_flip_y)


def follow_movies(scene: Any, lookup: Callable[[Any], "tuple[str, list[int], bool] | None"]) -> list[str]:
    """Keep every result strip with its movie strip after move, trim, cut or duplicate.

    ``lookup(movie)`` gives the propagated frames of the movie's project (folder, source
    frames, stale: they show another edit stack than the layer list) or None. A movie strip
    made by a blade cut or a duplicate gets its own result strip; one whose movie is gone is
    muted (the frames stay on disk). Returns what changed.
    """
    ensure_strip_ids(scene)
    results = {s.get(RESULT_TAG): s for s in all_strips(scene) if s.type == "IMAGE" and s.get(RESULT_TAG)}
    changed = []
    for m in movie_strips(scene):
        got = lookup(m)
        r = results.pop(m.get(MOVIE_ID), None)
        if got is None:
            if r is not None and not r.mute:
                r.mute = True
                changed.append(r.name)
            continue
        folder, frames, stale = got
        timing = strip_timing(m)
        if r is None:
            r = place_result_strip(scene, m, folder, frames, timing, streaming=True)
            changed.append(r.name)
        elif os.path.normpath(bpy_abspath(r.directory)) != os.path.normpath(folder):
            place_result_strip(scene, m, folder, frames, timing, streaming=True)  # another stack's frames
            changed.append(r.name)
        before = (r.frame_final_start, r.frame_final_end, r.channel, r.mute)
        align_result_strip(scene, r, m, overlay_span(timing, frames), stale=stale)
        if (r.frame_final_start, r.frame_final_end, r.channel, r.mute) != before:
            changed.append(r.name)
    for r in results.values():  # their movie strip was deleted
        if not r.mute:
            r.mute = True
            changed.append(r.name)
    return changed

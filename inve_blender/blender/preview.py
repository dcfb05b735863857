"""Live preview: the frame under the playhead rendered with the current layers, in the
Sequencer, without pressing Propagate.

Handlers (``handlers.py``) call :func:`schedule` when the playhead moves or the data
changes; a timer calls :func:`pump`, which sends at most one ``render_frame`` at a time to
the engine service (:class:`~inve_blender.io.preview.PreviewScheduler` coalesces) and shows
the PNG it wrote in a one-frame image strip at the playhead, above the movie, with Alpha
Over. While the layer list differs from what the propagated result strip shows (a new
layer, a hidden one, Undo), that result strip is muted as stale and the preview shows the
truth for the current frame. Under the bpy module timers never fire: tests and the
benchmark call :func:`pump` with ``wait`` themselves.
"""
from __future__ import annotations

import os
import time
from typing import Any

import bpy

from ..io.preview import PreviewScheduler, PreviewTarget, preview_path
from ..io.projects import Workspace
from . import context as ctx
from . import sequencer as strips
from . import service

PREVIEW_TAG = "inve_preview_of"
POLL_SECONDS = 0.03
SCHED = PreviewScheduler()
_pending: dict[str, Any] = {}
_counter = 0
last_ms: float | None = None  # change -> image shown, for the panel and the benchmark
_t_wanted: float | None = None


def target(scene: Any) -> PreviewTarget | None:
    """What the preview should show now (None: nothing to preview here)."""
    if scene is None or not scene.inve.live_preview or strips.movie_strip_problem(scene):
        return None
    movie = strips.active_strip(scene)
    item = ctx.scene_strip_project(scene, movie)
    if item is None or not item.info_json:
        return None
    folder = ctx.project_folder(item, update=False)
    if folder is None:
        return None
    src = strips.strip_timing(movie).scene_to_source(scene.frame_current)
    if src is None or not (item.frame_start <= src < item.frame_end):
        return None
    ws = Workspace(folder)
    try:
        doc, key = ctx.stack_of(item, ws)
    except (ValueError, FileNotFoundError):
        return None
    global _counter
    _counter += 1
    strips.ensure_strip_ids(scene)
    return PreviewTarget(project=ws.project, frame=src, output=preview_path(os.path.join(folder, "preview"), src,
                                                                           _counter),
                         stack=key, edits=doc, base=ws.edits_dir, owner=movie.get(strips.MOVIE_ID, ""))


def schedule(scene: Any, stack_changed: bool = False) -> None:
    """Note that the preview may be out of date; the timer (or :func:`pump`) does the rest."""
    global _t_wanted
    try:
        t = target(scene)
    except (ReferenceError, RuntimeError, AttributeError, OSError):
        return
    if t is None:
        return
    SCHED.want(t)
    if _t_wanted is None:
        _t_wanted = time.perf_counter()
    if not bpy.app.background and not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.0)


def _check_restart() -> None:
    if service.restarted_since("preview"):
        SCHED.forget()


def pump(scene: Any, wait: bool = False, timeout: float = 30.0) -> bool:
    """Send what is due and show what arrived; with ``wait`` block until it is shown (tests).
    Returns True while something is still in flight."""
    global _t_wanted, last_ms
    deadline = time.monotonic() + timeout
    while True:
        _check_restart()
        if not _pending:
            nxt = SCHED.next_requests()
            if nxt is not None:
                ops, t = nxt
                os.makedirs(os.path.dirname(t.output), exist_ok=True)
                reqs = [service.request(op, **fields) for op, fields in ops]
                _pending.update(target=t, reqs=reqs)
        if _pending:
            reqs, t = _pending["reqs"], _pending["target"]
            if all(r.done() for r in reqs):
                _pending.clear()
                ok = all(r.error is None for r in reqs) if hasattr(reqs[-1], "error") else True
                SCHED.finished(t, ok)
                if ok:
                    show(scene, t, reqs[-1].result(timeout=0).get("path", t.output))
                    if _t_wanted is not None:
                        last_ms = (time.perf_counter() - _t_wanted) * 1000.0
                    _t_wanted = None
                continue
        if not wait or not _pending:
            return bool(_pending) or SCHED.wanted is not None
        if time.monotonic() > deadline:
            return True
        time.sleep(0.005)


def _tick() -> float | None:
    scene = bpy.context.scene
    try:
        busy = pump(strips.sequencer_scene(bpy.context) or scene)
    except Exception:  # noqa: BLE001 - a preview failure must not kill the timer loop forever
        _pending.clear()
        SCHED.inflight = None
        return None
    return POLL_SECONDS if busy else None


def find_preview_strip(scene: Any, owner: str) -> Any:
    for s in strips.all_strips(scene):
        if s.type == "IMAGE" and s.get(PREVIEW_TAG) == owner:
            return s
    return None


def show(scene: Any, t: PreviewTarget, path: str) -> Any:
    """Put the rendered PNG at the playhead, above the movie (and its result strip)."""
    movie = next((m for m in strips.movie_strips(scene) if m.get(strips.MOVIE_ID) == t.owner), None)
    if movie is None:
        return None
    frame = scene.frame_current
    strip = find_preview_strip(scene, t.owner)
    coll = strips.strip_collection(scene)
    result = strips.find_result_strip(scene, movie)
    above = result if result is not None else movie
    if strip is None:
        channel = strips.free_channel_above(scene, above, frame, frame + 1)
        strip = coll.new_image(f"INVE Preview {movie.name}"[:63], path, channel, frame, fit_method="ORIGINAL")
        strip[PREVIEW_TAG] = t.owner
    else:
        strip.directory = os.path.dirname(path) + os.sep
        strip.elements[0].filename = os.path.basename(path)
        strip.frame_start = frame
        if strip.channel <= above.channel:
            strip.channel = strips.free_channel_above(scene, above, frame, frame + 1, ignore=strip)
        strip.invalidate_cache("RAW")
    strips.align_result_strip(scene, strip, movie, strips.OverlaySpan(frame, 0, 0, 1))
    strip.blend_type = "ALPHA_OVER"
    # the propagated result, when it shows another stack, is stale: muted until Propagate
    if result is not None:
        item = ctx.scene_strip_project(scene, movie)
        folder = ctx.project_folder(item, update=False) if item is not None else None
        stale = folder is None or ctx.is_stale(item, Workspace(folder))
        if result.mute != stale:
            result.mute = stale
    return strip


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _pending.clear()
    SCHED.inflight = SCHED.wanted = None
    SCHED.forget()

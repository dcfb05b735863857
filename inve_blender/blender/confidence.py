"""Where edits may slide, in the panel (thin glue over :mod:`inve_blender.io.confidence`).

Handlers call :func:`schedule` when the data changes (a layer added, moved, hidden; the
project read or retrained); a timer calls :func:`pump`, which sends at most one ``track``
request for the visible layers' anchor points to the engine service and stores the answer,
so the panel only reads a cache. Nothing here waits on the engine in interactive Blender.
Under the bpy module timers never fire: tests call :func:`pump` with ``wait`` themselves
(as :class:`INVE_OT_check_slides` does in background Blender).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import bpy

from ..io import confidence as conf
from ..io.projects import Workspace
from . import context as ctx
from . import sequencer as strips
from . import service

POLL_SECONDS = 0.1
FETCH = conf.ConfidenceFetcher()
_pending: dict[str, Any] = {}


def _state(info: dict[str, Any]) -> str:
    """What changes when the project is retrained or corrected (its answers are then stale)."""
    m = info.get("metrics") or {}
    keep = {k: m.get(k) for k in ("iterations", "train_seconds", "psnr")}
    keep["frames"] = [info.get("frames", [None])[0], len(info.get("frames") or [])]
    keep["confidence"] = (info.get("confidence") or {}).get("check_frames")
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def wish_for(scene: Any) -> conf.ConfidenceWish | None:
    """What the panel should know for the active strip (None: no trained project or no
    visible layers)."""
    if scene is None or strips.movie_strip_problem(scene):
        return None
    item = ctx.scene_strip_project(scene, strips.active_strip(scene))
    if item is None or not item.info_json:
        return None
    try:
        info = json.loads(item.info_json)
    except json.JSONDecodeError:
        return None
    frames, size = info.get("frames") or [], info.get("source_size")
    if not info.get("trained") or not frames or not size:
        return None
    folder = ctx.project_folder(item, update=False)
    if folder is None:
        return None
    items, without = conf.anchors(item.layers, frames, size, layers=info.get("layers") or ("fg", "bg"))
    if not items and not without:
        return None
    check = (info.get("confidence") or {}).get("check_frames") or []
    return conf.ConfidenceWish(Workspace(folder).project, conf.anchors_key(items, without, _state(info)),
                               tuple(items), tuple(int(f) for f in frames), tuple(int(f) for f in check),
                               tuple(without))


def schedule(scene: Any, force: bool = False) -> conf.ConfidenceWish | None:
    """Note what the panel should show; the timer (or :func:`pump`) asks the engine."""
    try:
        wish = wish_for(scene)
    except (ReferenceError, RuntimeError, AttributeError, OSError, ValueError, TypeError):
        return None
    if wish is None:
        return None
    FETCH.want(wish, force=force)
    if (FETCH.wanted is not None or _pending) and not bpy.app.background \
            and not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=POLL_SECONDS)
    return wish


def _check_restart() -> None:
    if service.restarted_since("confidence"):
        FETCH.forget()
        _pending.clear()


def pump(wait: bool = False, timeout: float = 120.0) -> bool:
    """Send what is due and store what arrived; with ``wait`` block until nothing is in
    flight (tests, background Blender). Returns True while something is still in flight."""
    deadline = time.monotonic() + timeout
    while True:
        _check_restart()
        if not _pending:
            nxt = FETCH.next_request()
            if nxt is not None:
                fields, wish = nxt
                if fields is not None:
                    try:
                        _pending.update(wish=wish, req=service.request("track", **fields))
                    except Exception as exc:  # noqa: BLE001 - the service cannot start: say so in the panel
                        FETCH.finished(wish, None, f"cannot start the engine service: {exc}")
                continue
        if _pending and _pending["req"].done():
            wish, req = _pending.pop("wish"), _pending.pop("req")
            try:
                result = req.result(timeout=0)
            except Exception as exc:  # noqa: BLE001 - EngineError: shown in the panel
                FETCH.finished(wish, None, str(exc) or type(exc).__name__)
            else:
                FETCH.finished(wish, result)
            _redraw()
            continue
        busy = bool(_pending) or FETCH.wanted is not None
        if not wait or not busy:
            return busy
        if time.monotonic() > deadline:
            return True
        time.sleep(0.01)


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", []) or []:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def _tick() -> float | None:
    try:
        busy = pump()
    except Exception:  # noqa: BLE001 - a failure must not leave the timer running forever
        _pending.clear()
        FETCH.inflight = None
        return None
    return POLL_SECONDS if busy else None


def current(scene: Any) -> tuple[conf.ConfidenceWish | None, conf.Answer | None]:
    """The active strip's wish and its answer (None while it is being fetched)."""
    try:
        wish = wish_for(scene)
    except (ReferenceError, RuntimeError, AttributeError, OSError, ValueError, TypeError):
        return None, None
    if wish is None:
        return None, None
    return wish, FETCH.answer(*wish.cache_key)


def strip_ranges(scene: Any, answer: conf.Answer | None) -> tuple[list[conf.SlideRange], int]:
    """The answer's flagged frames as the active strip shows them (scene frames)."""
    if answer is None or answer.report is None or strips.movie_strip_problem(scene):
        return [], 0
    return conf.strip_ranges(answer.report, strips.strip_timing(strips.active_strip(scene)))


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _pending.clear()
    FETCH.wanted = None
    FETCH.forget()

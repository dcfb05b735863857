"""The one running engine job and its thin UI glue (timer, progress bar, status bar).

Interactive Blender: a ``bpy.app.timers`` callback polls the worker a few times a second,
updates the window-manager progress and the status bar, redraws the Sequencer, and on the end
calls the job's ``on_done``. Background Blender (``blender -b`` and the bpy module used by
the tests), where timers never fire: the same worker runs to completion synchronously and the
same ``on_done`` runs. Everything decided here is in plain functions of ``worker``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import bpy

from .worker import ProgressState, Worker

POLL_SECONDS = 0.25


@dataclass
class Job:
    kind: str  # 'train' | 'edit' | 'track' | 'atlas' | 'install'
    worker: Worker
    scene_name: str = ""
    on_done: Callable[["Job"], None] | None = None
    context_data: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""  # the last report, for the panel

    @property
    def state(self) -> ProgressState:
        return self.worker.state


_current: Job | None = None
_last: Job | None = None


def current() -> Job | None:
    return _current


def last() -> Job | None:
    """The job that ran most recently (its outcome stays visible in the panel)."""
    return _current or _last


def busy() -> bool:
    return _current is not None and not _current.state.finished


def interactive() -> bool:
    return not bpy.app.background


def start(job: Job) -> ProgressState:
    """Start ``job``; in background mode block until it ends. Returns the state so far."""
    global _current
    if busy():
        raise RuntimeError("another INVE job is running; cancel it or wait")
    _current = job
    job.worker.start()
    if not interactive():
        job.worker.run_to_completion()
        _finish(job)
        return job.state
    wm = bpy.context.window_manager
    wm.progress_begin(0.0, 1.0)
    bpy.app.timers.register(_tick, first_interval=POLL_SECONDS)
    return job.state


def cancel() -> bool:
    if _current is None or _current.state.finished:
        return False
    _current.worker.cancel()
    return True


def _set_status_text(text: str | None) -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(text)


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "PREFERENCES", "CLIP_EDITOR", "IMAGE_EDITOR"):
                area.tag_redraw()


def _tick() -> float | None:
    job = _current
    if job is None:
        return None
    state = job.worker.poll()
    wm = bpy.context.window_manager
    if not state.finished:
        wm.progress_update(state.fraction)
        _set_status_text("INVE " + state.status_text())
        _redraw()
        return POLL_SECONDS
    wm.progress_end()
    _set_status_text(None)
    _finish(job)
    _redraw()
    return None


def _finish(job: Job) -> None:
    global _current, _last
    try:
        if job.on_done is not None:
            job.on_done(job)
    except Exception as exc:  # noqa: BLE001 - a failure here must reach the user, not the console only
        job.outcome = f"{job.kind} finished, but applying its result failed: {exc}"
        job.state.ok = False
        job.state.error = job.outcome
    finally:
        _last, _current = job, None


def shutdown() -> None:
    """On unregister: stop a running engine and the timer (leaves no orphan process)."""
    global _current
    if _current is not None and not _current.state.finished:
        _current.worker.cancel()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _current = None

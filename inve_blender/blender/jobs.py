"""The one running engine job's thin UI glue (timer, progress bar, status bar).

Interactive Blender: a ``bpy.app.timers`` callback polls the job a few times a second,
updates the window-manager progress and the status bar, redraws the Sequencer, and on the end
the job's ``on_done`` runs. Background Blender (``blender -b`` and the bpy module used by the
tests), where timers never fire: the same task runs to completion synchronously and the same
``on_done`` runs. What is decided is in :mod:`inve_blender.io.jobs` (tested without Blender).
"""
from __future__ import annotations

import bpy

from ..io.jobs import Job, JobSlot
from ..io.worker import ProgressState

__all__ = ["Job", "busy", "cancel", "current", "interactive", "last", "shutdown", "start"]

#: a warm Propagate streams its frames within a fraction of a second: polling at 4 Hz left the
#: strip up to 0.25 s behind the engine; a poll costs microseconds when nothing arrived
POLL_SECONDS = 0.05
SLOT = JobSlot()


def current() -> Job | None:
    return SLOT.current


def last() -> Job | None:
    """The job that ran most recently (its outcome stays visible in the panel)."""
    return SLOT.last()


def busy() -> bool:
    return SLOT.busy()


def interactive() -> bool:
    return not bpy.app.background


def start(job: Job) -> ProgressState:
    """Start ``job``; in background mode block until it ends. Returns the state so far."""
    blocking = not interactive()
    state = SLOT.start(job, blocking=blocking)
    if not blocking:
        bpy.context.window_manager.progress_begin(0.0, 1.0)
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=POLL_SECONDS)
    return state


def cancel() -> bool:
    return SLOT.cancel()


def _set_status_text(text: str | None) -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        if window.workspace is not None:
            window.workspace.status_text_set(text)


def redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "PREFERENCES", "CLIP_EDITOR", "IMAGE_EDITOR"):
                area.tag_redraw()


def _tick() -> float | None:
    job = SLOT.current
    if job is None:
        return None
    running = SLOT.tick()
    wm = bpy.context.window_manager
    if running:
        wm.progress_update(job.state.fraction)
        _set_status_text("INVE " + job.state.status_text())
        redraw()
        return POLL_SECONDS
    wm.progress_end()
    _set_status_text(None)
    redraw()
    return None


def shutdown() -> None:
    """On unregister: stop a running engine job and the timer (leaves no orphan process)."""
    SLOT.shutdown()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)

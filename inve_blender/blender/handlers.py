"""Blender handlers: result strips follow their movie strips; the live preview hears changes.

Handlers run in Blender's main thread on every change, so they only compare and assign
(:func:`~inve_blender.blender.sequencer.follow_movies` writes nothing when nothing moved)
and post work for timers; nothing here waits on the engine.
"""
from __future__ import annotations

from typing import Any

import bpy
from bpy.app.handlers import persistent

from . import context as ctx

_busy = False


@persistent
def on_depsgraph_update(scene: Any, depsgraph: Any = None) -> None:
    global _busy
    if _busy:  # our own assignments raise another update
        return
    _busy = True
    try:
        ctx.follow(scene)
    except (ReferenceError, RuntimeError, AttributeError):  # mid-undo or while loading: next update
        pass
    finally:
        _busy = False
    from . import confidence, preview

    preview.schedule(scene)
    confidence.schedule(scene)  # the slide read-out follows layer and project changes


@persistent
def on_frame_change(scene: Any, depsgraph: Any = None) -> None:
    from . import preview

    preview.schedule(scene)


@persistent
def on_undo_redo(scene: Any, *args: Any) -> None:
    """Undo/Redo restored the layer list: the result strip shows the frames of that stack if
    they were propagated, else it is muted as stale; the preview renders the frame anew."""
    from . import confidence, preview

    try:
        ctx.follow(scene)
    except (ReferenceError, RuntimeError, AttributeError):
        pass
    preview.schedule(scene, stack_changed=True)
    confidence.schedule(scene)


HANDLERS = ((bpy.app.handlers.depsgraph_update_post, on_depsgraph_update),
            (bpy.app.handlers.frame_change_post, on_frame_change),
            (bpy.app.handlers.undo_post, on_undo_redo),
            (bpy.app.handlers.redo_post, on_undo_redo))


def register() -> None:
    for lst, fn in HANDLERS:
        if fn not in lst:
            lst.append(fn)


def unregister() -> None:
    for lst, fn in HANDLERS:
        if fn in lst:
            lst.remove(fn)

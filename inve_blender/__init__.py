"""INVE for Blender: interactive neural video editing in the Video Sequencer.

Train layered neural atlases on a movie strip, draw on one frame, and propagate the edit to
every frame as an image strip. The heavy work runs in the INVE engine (``core``, bundled in
``engine/``) as a separate process; see ``worker.py``.

Blender imports this package and calls :func:`register`; the plain-Python modules (worker,
strips, strokes, edit_stack, tracking, engine_env) import without Blender, for the tests.
"""
from __future__ import annotations


def _classes() -> list[type]:
    from . import ops_edit, ops_engine, ops_track, ops_train, panels, preferences, properties

    return [*properties.CLASSES, *preferences.CLASSES, *ops_train.CLASSES, *ops_edit.CLASSES,
            *ops_track.CLASSES, *ops_engine.CLASSES, *panels.CLASSES]


def register() -> None:
    import bpy

    from . import properties

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register_props()
    from . import ops_engine

    ops_engine.register()  # the engine check at start-up, in the background


def unregister() -> None:
    import bpy

    from . import jobs, ops_engine, properties

    jobs.shutdown()
    ops_engine.unregister()
    properties.unregister_props()
    for cls in reversed(_classes()):
        if getattr(cls, "is_registered", True):
            bpy.utils.unregister_class(cls)

"""INVE for Blender: interactive neural video editing in the Video Sequencer.

Train layered neural atlases on a movie strip, draw on one frame, and propagate the edit to
every frame as an image strip. The heavy work runs in the INVE engine (``core``, bundled in
``engine/``) as a separate process.

Layout (as Blender's glTF add-on splits ``io`` from ``blender``):

- ``io/``: plain Python, never imports bpy, unit-tested without Blender: the engine
  worker process and service client, the engine environment, strip/frame mapping, strokes,
  the edit layer stack, tracking data, the job slot.
- ``blender/``: the bpy glue on top: properties, preferences, operators (one base for those
  that run an engine job), panels, the Sequencer strips.

Blender imports this package and calls :func:`register`.
"""
from __future__ import annotations


def _classes() -> list[type]:
    from .blender import (ops_batch, ops_confidence, ops_edit, ops_engine, ops_hint, ops_sticker, ops_track,
                          ops_train, panels, preferences, properties)

    return [*properties.CLASSES, *preferences.CLASSES, *ops_train.CLASSES, *ops_batch.CLASSES, *ops_edit.CLASSES,
            *ops_sticker.CLASSES, *ops_track.CLASSES, *ops_hint.CLASSES, *ops_confidence.CLASSES,
            *ops_engine.CLASSES, *panels.CLASSES]


def register() -> None:
    import bpy

    from .blender import handlers, keymap, ops_engine, preferences, properties

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register_props()
    handlers.register()
    keymap.register()
    ops_engine.register(preferences.engine_spec)  # the engine check at start-up, in the background


def unregister() -> None:
    import bpy

    from .blender import confidence, handlers, jobs, keymap, ops_engine, preview, properties, service

    keymap.unregister()
    handlers.unregister()
    preview.unregister()
    confidence.unregister()
    jobs.shutdown()
    ops_engine.unregister()
    service.stop()  # the engine service ends with the add-on
    properties.unregister_props()
    for cls in reversed(_classes()):
        if getattr(cls, "is_registered", True):
            bpy.utils.unregister_class(cls)

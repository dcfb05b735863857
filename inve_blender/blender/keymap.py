"""Shortcuts: G / S / R over the Sequencer preview move, scale and rotate the active sticker.

Registered into the window manager's add-on key configuration with the add-on and removed
with it, so they show (and can be changed) under Preferences > Keymap > Sequencer > Preview.
The operator's poll lets the keys through to Blender's own strip transform whenever the
active INVE layer is not a sticker, so G/S/R keep moving strips as usual otherwise.
Background Blender (and the bpy module) has no add-on key configuration: nothing to do there.
"""
from __future__ import annotations

from typing import Any

import bpy

#: (key, operator mode): the keys Blender users press to move, scale and rotate
KEYS = (("G", "G"), ("S", "S"), ("R", "R"))
KEYMAP = ("SequencerPreview", "SEQUENCE_EDITOR", "WINDOW")
OPERATOR = "inve.sticker_transform"

_items: list[tuple[Any, Any]] = []


def keyconfig() -> Any:
    """Where the shortcuts go: the add-on key configuration (None in background Blender)."""
    wm = bpy.context.window_manager
    return wm.keyconfigs.addon if wm is not None else None


def register() -> list[tuple[Any, Any]]:
    kc = keyconfig()
    if kc is None:
        return []
    name, space, region = KEYMAP
    km = kc.keymaps.new(name=name, space_type=space, region_type=region)
    for key, mode in KEYS:
        kmi = km.keymap_items.new(OPERATOR, key, "PRESS")
        kmi.properties.mode = mode
        _items.append((km, kmi))
    return list(_items)


def unregister() -> None:
    for km, kmi in _items:
        try:
            km.keymap_items.remove(kmi)
        except (ReferenceError, RuntimeError):  # the key configuration went first (Blender exiting)
            pass
    _items.clear()

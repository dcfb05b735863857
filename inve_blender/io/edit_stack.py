"""The layer stack: Blender's list of edit layers -> EDITS.json.

The stack is a ``CollectionProperty`` of ``INVE_PG_layer`` items (``properties.py``) saved
in the .blend; each item keeps its EDITS.json layer as a JSON string (``data``) plus the
parts a user edits in the panel (name, visibility, order, image path). This module holds
the plain-Python side (building, validating and writing EDITS.json, stack moves) and is
tested without Blender. Paths in EDITS.json are relative to the file (ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable, Protocol

LAYER_TYPES = ("sketch", "paint", "sticker", "adjust", "atlas")
IMAGE_TYPES = ("paint", "sticker", "atlas")


class LayerItem(Protocol):
    name: str
    kind: str
    visible: bool
    data: str
    image: str
    attach: str


def layer_dict(item: LayerItem, edits_dir: str, abspath: Callable[[str], str] = os.path.abspath) -> dict[str, Any]:
    """One stack item as an EDITS.json layer (image paths made relative to ``edits_dir``)."""
    try:
        layer = json.loads(item.data) if item.data else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"layer '{item.name}' is damaged: {exc}") from None
    if not isinstance(layer, dict):
        raise ValueError(f"layer '{item.name}' is damaged: not a JSON object")
    layer["type"] = item.kind
    if item.kind not in LAYER_TYPES:
        raise ValueError(f"layer '{item.name}' has unknown type {item.kind!r}")
    if item.kind in IMAGE_TYPES:
        if not item.image:
            raise ValueError(f"layer '{item.name}' has no image")
        path = abspath(item.image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image of layer '{item.name}' not found: {path}")
        layer["image"] = relative_path(path, edits_dir)
    if item.attach in ("fg", "bg"):
        layer["layer"] = item.attach
    elif item.kind != "atlas":
        layer.pop("layer", None)
    return layer


def relative_path(path: str, start: str) -> str:
    """``path`` relative to ``start`` with forward slashes; absolute when there is no relative
    path (another drive on Windows)."""
    try:
        rel = os.path.relpath(path, start)
    except ValueError:
        return os.path.abspath(path).replace("\\", "/")
    return rel.replace("\\", "/")


def build_edits(items: Iterable[LayerItem], edits_dir: str,
                abspath: Callable[[str], str] = os.path.abspath) -> dict[str, Any]:
    """EDITS.json for the visible layers, in stack order (later layers render on top)."""
    layers = [layer_dict(it, edits_dir, abspath) for it in items if it.visible]
    return {"version": 1, "layers": layers}


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON via a temporary file + rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".edits.", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_edits(items: Iterable[LayerItem], path: str,
                abspath: Callable[[str], str] = os.path.abspath) -> dict[str, Any]:
    edits = build_edits(items, os.path.dirname(os.path.abspath(path)), abspath)
    write_json_atomic(path, edits)
    return edits


def move_index(index: int, direction: str, length: int) -> int:
    """Target index of moving item ``index`` 'UP' (earlier) or 'DOWN' (later), clamped."""
    target = index - 1 if direction == "UP" else index + 1
    return min(max(target, 0), length - 1)


def unique_name(base: str, existing: Iterable[str]) -> str:
    """Blender-style ``name``, ``name.001``, ... so every layer can be told apart."""
    taken = set(existing)
    if base not in taken:
        return base
    i = 1
    while f"{base}.{i:03d}" in taken:
        i += 1
    return f"{base}.{i:03d}"


def describe(layer: dict[str, Any]) -> str:
    """Short label for the list: type and frame (or atlas layer)."""
    kind = layer.get("type", "?")
    if kind == "atlas":
        return f"atlas {layer.get('layer', 'bg')}"
    if kind == "sketch":
        return f"sketch, {len(layer.get('strokes', []))} stroke(s), frame {layer.get('frame')}"
    return f"{kind}, frame {layer.get('frame')}"

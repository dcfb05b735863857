"""The atlas as a Blender image for Texture Paint, and the painted result as an ``atlas`` layer.

``inve atlas`` writes one PNG per layer (e.g. ``atlas_bg.png``); each opens as an image
datablock tagged with its layer. After painting in the Image Editor, the image is saved as
``painted_<layer>_atlas.png`` next to EDITS.json and becomes (or updates) that layer.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any

ATLAS_TAG = "inve_atlas_layer"
STRIP_TAG = "inve_atlas_strip"


def atlas_files(folder: str) -> dict[str, str]:
    """{layer: path} of the atlas PNGs in ``folder`` (``atlas_<layer>.png``; else any PNG by stem)."""
    out: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.png"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        m = re.fullmatch(r"(?:atlas_)?(fg|bg)(?:_atlas)?", stem)
        if m:
            out[m.group(1)] = path
    return out


def painted_name(layer: str) -> str:
    return f"painted_{layer}_atlas.png"


def image_name(strip_name: str, layer: str) -> str:
    return f"INVE atlas {layer} ({strip_name})"[:63]


def open_atlas_images(data: Any, folder: str, strip_name: str) -> list[Any]:
    """Load (or reload) the atlas PNGs as images tagged with layer and strip."""
    images = []
    for layer, path in atlas_files(folder).items():
        name = image_name(strip_name, layer)
        img = data.images.get(name)
        if img is None:
            img = data.images.load(path)
            img.name = name
        else:
            img.filepath = path
            img.reload()
        img[ATLAS_TAG] = layer
        img[STRIP_TAG] = strip_name
        images.append(img)
    return images


def atlas_images(data: Any, strip_name: str) -> list[Any]:
    return [im for im in data.images if im.get(STRIP_TAG) == strip_name and im.get(ATLAS_TAG) in ("fg", "bg")]


def save_painted(img: Any, edits_dir: str) -> str:
    """Save the (painted) atlas image as a PNG next to EDITS.json; returns the path."""
    os.makedirs(edits_dir, exist_ok=True)
    dest = os.path.join(edits_dir, painted_name(img[ATLAS_TAG]))
    img.file_format = "PNG"
    img.save(filepath=dest)
    return dest

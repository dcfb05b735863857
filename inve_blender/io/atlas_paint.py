"""The atlas as a Blender image for Texture Paint, and the painted result as an ``atlas`` layer.

``inve atlas`` writes one PNG per layer (e.g. ``atlas_bg.png``); each opens as an image
datablock tagged with its layer. After painting in the Image Editor, the image is saved as
``painted_<layer>_atlas.png`` next to EDITS.json and becomes (or updates) that layer.

A project split into segments has atlases per segment, written as
``<segment>_atlas_<layer>.png`` with segment names ``f<first>-<end>`` (source frames, end
exclusive, six digits). Open Atlas opens the segment that renders the frame under the
playhead (consecutive segments overlap; the seam is the middle of the overlap, as the engine
renders them); the engine recognises a painted atlas as that segment's and carries it into
the others.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any

ATLAS_TAG = "inve_atlas_layer"
STRIP_TAG = "inve_atlas_strip"


SEGMENT_TAG = "inve_atlas_segment"
_SEGMENT_FILE = re.compile(r"f(\d+)-(\d+)_atlas_(fg|bg)")


def segment_atlases(folder: str) -> dict[tuple[int, int], dict[str, str]]:
    """{(first, end) source frames: {layer: path}} of a segmented project's atlas PNGs."""
    out: dict[tuple[int, int], dict[str, str]] = {}
    for path in glob.glob(os.path.join(folder, "*.png")):
        m = _SEGMENT_FILE.fullmatch(os.path.splitext(os.path.basename(path))[0])
        if m:
            out.setdefault((int(m.group(1)), int(m.group(2))), {})[m.group(3)] = path
    return dict(sorted(out.items()))


def segment_at(ranges: list[tuple[int, int]], source_frame: int | None) -> int:
    """Index of the segment that renders ``source_frame`` (sorted overlapping ``ranges``).

    Each seam is the middle of the overlap (what the engine renders, core/segments.py
    ``owned``); a frame before/after them all (or None) gives the first/last segment.
    """
    if source_frame is None:
        return 0
    for k in range(len(ranges) - 1):
        if source_frame < (ranges[k + 1][0] + ranges[k][1]) // 2:
            return k
    return len(ranges) - 1


def atlas_files(folder: str, source_frame: int | None = None) -> dict[str, str]:
    """{layer: path} of the atlas PNGs in ``folder`` (``atlas_<layer>.png``; else any PNG by stem).

    In a segmented project's atlas folder: those of the segment that renders ``source_frame``
    (the frame under the playhead; None: the first segment)."""
    segments = segment_atlases(folder)
    if segments:
        ranges = list(segments)
        return dict(sorted(segments[ranges[segment_at(ranges, source_frame)]].items()))
    out: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.png"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        m = re.fullmatch(r"(?:atlas_)?(fg|bg)(?:_atlas)?", stem)
        if m:
            out[m.group(1)] = path
    return out


def segment_of(path: str) -> str:
    """The segment name of a segment atlas file (``f000035-000074``), else ``""``."""
    m = _SEGMENT_FILE.fullmatch(os.path.splitext(os.path.basename(path))[0])
    return f"f{m.group(1)}-{m.group(2)}" if m else ""


def painted_name(layer: str, segment: str = "") -> str:
    """``painted_<layer>_atlas.png`` (a segment's: ``painted_<segment>_<layer>_atlas.png``, so
    paintings on two segments do not overwrite each other)."""
    return f"painted_{segment}_{layer}_atlas.png" if segment else f"painted_{layer}_atlas.png"


def image_name(strip_name: str, layer: str) -> str:
    return f"INVE atlas {layer} ({strip_name})"[:63]


def open_atlas_images(data: Any, folder: str, strip_name: str, source_frame: int | None = None) -> list[Any]:
    """Load (or reload) the atlas PNGs as images tagged with layer and strip (and segment:
    the one under ``source_frame``, in a segmented project)."""
    images = []
    for layer, path in atlas_files(folder, source_frame).items():
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
        img[SEGMENT_TAG] = segment_of(path)
        images.append(img)
    return images


def atlas_images(data: Any, strip_name: str) -> list[Any]:
    return [im for im in data.images if im.get(STRIP_TAG) == strip_name and im.get(ATLAS_TAG) in ("fg", "bg")]


def save_painted(img: Any, edits_dir: str) -> str:
    """Save the (painted) atlas image as a PNG next to EDITS.json; returns the path."""
    os.makedirs(edits_dir, exist_ok=True)
    dest = os.path.join(edits_dir, painted_name(img[ATLAS_TAG], str(img.get(SEGMENT_TAG) or "")))
    img.file_format = "PNG"
    img.save(filepath=dest)
    return dest

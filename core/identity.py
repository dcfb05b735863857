"""Content fingerprints: which source a project was trained on, whatever it is called now.

Why: a project must be found again after the things editors do every day (renaming a strip,
blade-cutting it, Save As into another folder, moving the footage) and must refuse files that
do not belong to it (a checkpoint copied from another project). Names and paths change;
content does not. Hashing a whole 4K movie would take seconds, so the fingerprint reads the
file's size, its first and its last MiB: enough to tell real footage apart, cheap enough to
compute in a panel's background job. This module imports only the standard library so the
Blender add-on can load it from the bundled engine without torch.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".exr", ".webp")


def _hash_file_ends(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode() + b"\0")
    with open(path, "rb") as fh:
        h.update(fh.read(CHUNK))
        if size > 2 * CHUNK:
            fh.seek(size - CHUNK)
            h.update(fh.read(CHUNK))
        elif size > CHUNK:
            h.update(fh.read())


def source_fingerprint(path: str | os.PathLike) -> str:
    """32 hex digits identifying a movie file or an image folder by content (not by name).

    A folder is identified by its image files' sorted names and sizes plus the ends of the
    first and last image (renaming the folder keeps the fingerprint; renumbering frames does not).
    """
    path = Path(path)
    h = hashlib.sha256(b"inve-source-v1\0")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for p in images:
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        if images:
            _hash_file_ends(h, images[0])
            _hash_file_ends(h, images[-1])
    else:
        _hash_file_ends(h, path)
    return h.hexdigest()[:32]

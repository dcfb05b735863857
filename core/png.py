"""A fast 8-bit PNG encoder for frames inve writes (previews, overlays, frame sequences).

Why our own: general encoders pick a row filter per row by trying all five (libpng's
adaptive filtering), which is most of their time on video frames: OpenCV took ~100 ms for
a 1080p frame at its fastest setting, Pillow ~50 ms for a mostly transparent 1080p overlay.
Here every row uses the *Up* filter (the difference to the row above, one numpy
subtraction) and the rows are deflated by ISA-L (the ``isal`` package, a zlib-compatible
stream: ~4x faster than zlib on 640x480 video frames at the same size, 2.0 ms instead of
7.6 ms, ~12x on mostly transparent overlays, whose files it leaves about twice as large,
still a few tens of KB at 1080p) or, where isal is not installed, by zlib with its
run-length strategy at level 1 (~2x faster than libpng's adaptive filtering on full frames
and ~3x on overlays, with files within ~20 %). Both release the GIL, so writer threads
overlap rendering. The output is a standard PNG any reader loads
(Blender, OpenCV, Pillow, browsers); :func:`encode` returns its bytes so callers can hash
them in memory instead of reading the file back.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # ISA-L's deflate (optional: zlib does the same job, ~4x slower)
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - the project installs it; a bare Blender Python may not have it
    _isal = None

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
#: compression effort (zlib's scale: 0 stores, 1 fastest): 1..3 are ISA-L's levels 1..3 where
#: isal is installed (more is 3), zlib's with its run-length strategy otherwise (higher levels
#: cost more and gain little on video frames)
LEVEL = 1


def deflate(data: "bytes | np.ndarray", level: int = LEVEL) -> bytes:
    """A zlib stream (RFC 1950, what a PNG's IDAT holds) of ``data`` at effort ``level``."""
    level = int(level)
    if _isal is not None and level > 0:
        return _isal.compress(data, min(3, level))
    co = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return co.compress(data) + co.flush()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def filtered_rows(img: np.ndarray) -> np.ndarray:
    """The PNG scanlines of ``img`` with filter type 2 (Up): uint8 [H, 1 + W * C]."""
    H = img.shape[0]
    x = img.reshape(H, -1)
    rows = np.empty((H, x.shape[1] + 1), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = x[0]
    np.subtract(x[1:], x[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps: PNG's modulo 256
    return rows


def encode(img: np.ndarray, level: int = LEVEL) -> bytes:
    """PNG bytes of a uint8 image [H, W] (grey) or [H, W, C], C = 1..4 (grey+alpha, RGB, RGBA)."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise TypeError(f"PNG frames are 8-bit: got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPES or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"cannot write an image of shape {img.shape} as PNG")
    H, W, C = a.shape
    a = np.ascontiguousarray(a)
    data = deflate(filtered_rows(a), level)
    head = struct.pack(">IIBBBBB", W, H, 8, _COLOR_TYPES[C], 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", head), _chunk(b"IDAT", data), _chunk(b"IEND", b"")))

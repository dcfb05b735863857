"""EDITS.json: parse and validate into dataclasses, loading every image up front.

Why up front: a bad file must fail with one clear line *before* anything is written, so
every field is checked and every image is decoded and size-checked here. Messages name the
file, the layer and the field, e.g. ``EDITS.json layers[2] (sticker): image 'logo.png' not
found``.

Units (fixed here, documented in README): coordinates are source pixels (pixel centres
at i+0.5); ``frame`` is a source frame index; ``width`` is in source pixels; sticker
``rotation`` is in radians, counter-clockwise on screen (Blender's angle convention);
adjust ``hue`` is a shift in turns (-0.5..0.5 covers the circle; +1/3 takes red to
green), ``saturation`` and ``contrast`` are factors (1 = unchanged), ``brightness`` an
offset in 0..1 units; ``feather`` (adjust, optional) is the soft edge in pixels.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from core.errors import InveError
from core.project import ProjectInfo

LAYER_TYPES = ("sketch", "paint", "sticker", "adjust", "atlas")
STICKER_MODES = ("rigid", "deform")
FORMAT_VERSION = 1


@dataclass
class Stroke:
    points: np.ndarray  # float64 [N, 2] source pixels
    color: tuple[float, float, float, float]  # straight RGBA 0..1
    width: float  # source pixels


@dataclass
class EditLayer:
    """Fields every layer has. ``t`` is the project frame index of ``frame``."""

    index: int
    type: str
    frame: int | None
    t: int | None
    layer: str | None  # "fg" | "bg" | None (automatic)
    visible: bool
    name: str
    key: str = field(default="", repr=False)  # content hash: caches re-use work for unchanged layers


@dataclass
class SketchLayer(EditLayer):
    strokes: list[Stroke] = field(default_factory=list)


@dataclass
class PaintLayer(EditLayer):
    image: np.ndarray | None = None  # float32 [H, W, 4] straight RGBA at source size


@dataclass
class StickerLayer(EditLayer):
    image: np.ndarray | None = None  # float32 [h, w, 4] straight RGBA
    center: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    rotation: float = 0.0  # radians, counter-clockwise on screen
    mode: str = "rigid"


@dataclass
class AdjustLayer(EditLayer):
    polygon: np.ndarray | None = None  # float64 [N, 2]
    hue: float = 0.0  # turns
    saturation: float = 1.0
    brightness: float = 0.0
    contrast: float = 1.0
    feather: float = 1.5  # px


@dataclass
class AtlasLayer(EditLayer):
    image: np.ndarray | None = None  # float32 [A, A, 4] straight RGBA (alpha = edit mask)
    has_alpha: bool = False


# ---------------------------------------------------------------------------------------
class _Ctx:
    """Where we are in the file, for error messages."""

    def __init__(self, fname: str, i: int | None = None, kind: str | None = None) -> None:
        self.fname, self.i, self.kind = fname, i, kind

    def fail(self, msg: str) -> InveError:
        where = self.fname if self.i is None else f"{self.fname} layers[{self.i}]"
        if self.kind:
            where += f" ({self.kind})"
        return InveError(f"{where}: {msg}")


def _number(ctx: _Ctx, d: dict, key: str, default: float | None = None, *, lo: float | None = None,
            lo_open: bool = False) -> float:
    if key not in d:
        if default is None:
            raise ctx.fail(f"missing field '{key}'")
        return float(default)
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ctx.fail(f"'{key}' must be a number, got {json.dumps(v)}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ctx.fail(f"'{key}' must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    return float(v)


def _xy(ctx: _Ctx, v: Any, what: str) -> tuple[float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in v)):
        raise ctx.fail(f"{what} must be [x, y] (two numbers), got {json.dumps(v)[:60]}")
    return float(v[0]), float(v[1])


# Extreme values are handled here, before anything is allocated: buffers downstream are sized
# by the frame, never by a number from the file. Coordinates may reach a few frames beyond the
# picture (a stroke may start off-screen); widths and feathers wider than the frame look the
# same as the frame's size, so they are clipped to it; stickers must end up between half a
# pixel and 16 frames in size.
COORD_MARGIN = 4.0  # coordinates within [-4 W, 5 W] x [-4 H, 5 H]
STICKER_MAX_FRAMES = 16.0


def _check_coords(ctx: _Ctx, pts: np.ndarray, what: str, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or pts.size == 0:
        return pts
    W, H = size
    lo = -COORD_MARGIN * np.array([W, H], np.float64)
    hi = (1.0 + COORD_MARGIN) * np.array([W, H], np.float64)
    bad = np.nonzero(((pts < lo) | (pts > hi)).any(axis=1))[0]
    if bad.size:
        x, y = pts[bad[0]]
        raise ctx.fail(f"{what} point ({x:.6g}, {y:.6g}) is far outside the {W}x{H} frame "
                       f"(coordinates must lie within {lo[0]:g}..{hi[0]:g} x {lo[1]:g}..{hi[1]:g} source pixels)")
    return pts


def _points(ctx: _Ctx, v: Any, what: str, min_len: int, size: tuple[int, int] | None = None) -> np.ndarray:
    if not isinstance(v, list) or len(v) < min_len:
        raise ctx.fail(f"{what} must be a list of at least {min_len} [x, y] points")
    pts = np.array([_xy(ctx, p, f"{what}[{j}]") for j, p in enumerate(v)], np.float64).reshape(-1, 2)
    return _check_coords(ctx, pts, what, size)


def parse_color(ctx: _Ctx, v: Any, what: str = "color") -> tuple[float, float, float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) not in (3, 4)
            or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in v)):
        raise ctx.fail(f"'{what}' must be [r, g, b] or [r, g, b, a] with numbers in 0..1, got {json.dumps(v)[:60]}")
    if any(c < 0.0 or c > 1.0 for c in v):
        raise ctx.fail(f"'{what}' components must be in 0..1, got {json.dumps(v)}")
    c = [float(x) for x in v] + ([1.0] if len(v) == 3 else [])
    return c[0], c[1], c[2], c[3]


def load_rgba(path: Path) -> tuple[np.ndarray, bool]:
    """Decode an image as straight RGBA float32 0..1; also says whether it had alpha."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError("cannot be decoded as an image")
    if img.dtype == np.uint16:
        a = img.astype(np.float32) / 65535.0
    elif img.dtype == np.uint8:
        a = img.astype(np.float32) / 255.0
    elif np.issubdtype(img.dtype, np.floating):
        a = np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0)
    else:
        raise ValueError(f"has an unsupported pixel type {img.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    if c == 1:
        rgb, alpha, has = np.repeat(a, 3, axis=2), np.ones(a.shape[:2], np.float32), False
    elif c == 2:
        rgb, alpha, has = np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1], True
    elif c == 3:
        rgb, alpha, has = a[:, :, ::-1], np.ones(a.shape[:2], np.float32), False
    elif c == 4:
        rgb, alpha, has = a[:, :, 2::-1], a[:, :, 3], True
    else:
        raise ValueError(f"has {c} channels")
    return np.ascontiguousarray(np.dstack([rgb, alpha]).astype(np.float32)), has


def _image(ctx: _Ctx, d: dict, base: Path, size: tuple[int, int] | None, size_what: str) -> tuple[np.ndarray, bool, str]:
    if "image" not in d:
        raise ctx.fail("missing field 'image'")
    name = d["image"]
    if not isinstance(name, str) or not name:
        raise ctx.fail(f"'image' must be a file name, got {json.dumps(name)[:60]}")
    path = (base / name) if not Path(name).is_absolute() else Path(name)
    if not path.is_file():
        raise ctx.fail(f"image '{name}' not found")
    try:
        img, has_alpha, digest = _decoded(path)
    except (ValueError, OSError) as exc:
        raise ctx.fail(f"image '{name}' {exc}") from None
    if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
        raise ctx.fail(f"image '{name}' is {img.shape[1]}x{img.shape[0]}, it must be {size[0]}x{size[1]} ({size_what})")
    return img, has_alpha, digest


#: decoded edit images by (path, size, mtime): an interactive session re-sends the whole stack
#: at every change, and decoding + hashing a 1080p paint image costs ~100 ms each time
_DECODED: "OrderedDict[tuple, tuple[np.ndarray, bool, str]]" = OrderedDict()
_DECODED_BYTES = 256 * 2**20


def _decoded(path: Path) -> tuple[np.ndarray, bool, str]:
    """``load_rgba`` + content digest, cached while the file is unchanged (callers never modify images)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _DECODED.get(key)
    if hit is not None:
        _DECODED.move_to_end(key)
        return hit
    img, has_alpha = load_rgba(path)
    entry = (img, has_alpha, hashlib.sha1(img.tobytes()).hexdigest()[:16])
    if img.nbytes <= _DECODED_BYTES // 4:
        _DECODED[key] = entry
        while sum(e[0].nbytes for e in _DECODED.values()) > _DECODED_BYTES:
            _DECODED.popitem(last=False)
    return entry


def _key(d: dict, extra: str = "") -> str:
    """Content hash of a layer (minus fields that do not change its pixels)."""
    body = {k: v for k, v in d.items() if k not in ("visible", "name")}
    return hashlib.sha1((json.dumps(body, sort_keys=True) + extra).encode()).hexdigest()[:20]


def parse_layer(i: int, d: Any, base: Path, info: ProjectInfo, fname: str = "EDITS.json",
                atlas_sizes: dict[str, int] | Callable[[], dict[str, int]] | None = None) -> EditLayer:
    """Validate one layer dict (also used by the Blender add-on for in-memory stacks)."""
    ctx = _Ctx(fname, i)
    if not isinstance(d, dict):
        raise ctx.fail(f"must be an object, got {type(d).__name__}")
    kind = d.get("type")
    if kind is None:
        raise ctx.fail("missing field 'type'")
    if kind not in LAYER_TYPES:
        raise ctx.fail(f"unknown type {json.dumps(kind)[:40]} (expected one of {', '.join(LAYER_TYPES)})")
    ctx.kind = kind
    layer = d.get("layer")
    if layer is not None and layer not in ("fg", "bg"):
        raise ctx.fail(f"'layer' must be \"fg\" or \"bg\", got {json.dumps(layer)[:40]}")
    if layer is not None and layer not in info.layers:
        raise ctx.fail(f"layer '{layer}' is not in this project (it has {', '.join(info.layers)})")
    visible = d.get("visible", True)
    if not isinstance(visible, bool):
        raise ctx.fail(f"'visible' must be true or false, got {json.dumps(visible)[:40]}")
    name = d.get("name", f"{kind} {i}")
    if not isinstance(name, str):
        raise ctx.fail("'name' must be a string")
    frame = t = None
    if kind != "atlas":
        if "frame" not in d:
            raise ctx.fail("missing field 'frame'")
        frame = d["frame"]
        if isinstance(frame, float) and frame.is_integer():
            frame = int(frame)
        try:
            t = info.frame_index(frame)
        except InveError as exc:
            raise ctx.fail(str(exc)) from None
    common = dict(index=i, type=kind, frame=frame, t=t, layer=layer, visible=visible, name=name)
    W, H = info.source_size

    if kind == "sketch":
        strokes_in = d.get("strokes")
        if not isinstance(strokes_in, list):
            raise ctx.fail("missing field 'strokes' (a list of strokes)" if strokes_in is None
                           else "'strokes' must be a list")
        strokes = []
        for j, s in enumerate(strokes_in):
            sctx = _Ctx(fname, i, f"sketch, strokes[{j}]")
            if not isinstance(s, dict):
                raise sctx.fail("must be an object with 'points', 'color', 'width'")
            if "points" not in s:
                raise sctx.fail("missing field 'points'")
            pts = _points(sctx, s["points"], "'points'", 1, (W, H))
            color = parse_color(sctx, s["color"]) if "color" in s else (1.0, 0.0, 0.0, 1.0)
            width = min(_number(sctx, s, "width", 4.0, lo=0.0, lo_open=True), 2.0 * max(W, H))  # clipped
            strokes.append(Stroke(points=pts, color=color, width=width))
        return SketchLayer(**common, strokes=strokes, key=_key(d))

    if kind == "paint":
        img, _, digest = _image(ctx, d, base, (W, H), "the source frame size")
        return PaintLayer(**common, image=img, key=_key(d, digest))

    if kind == "sticker":
        img, _, digest = _image(ctx, d, base, None, "")
        if "center" not in d:
            raise ctx.fail("missing field 'center'")
        center = _xy(ctx, d["center"], "'center'")
        _check_coords(ctx, np.array([center], np.float64), "'center'", (W, H))
        scale = _number(ctx, d, "scale", 1.0, lo=0.0, lo_open=True)
        side = scale * max(img.shape[0], img.shape[1])
        if side > STICKER_MAX_FRAMES * max(W, H):
            raise ctx.fail(f"'scale' {scale:g} makes the sticker {side:.6g} px wide, more than {STICKER_MAX_FRAMES:g} "
                           f"times the {W}x{H} frame: only a blurred patch of it would show; use a smaller scale")
        if side < 0.5:
            raise ctx.fail(f"'scale' {scale:g} makes the sticker {side:.3g} px wide: it would cover nothing "
                           "visible; use a larger scale")
        rotation = _number(ctx, d, "rotation", 0.0)
        mode = d.get("mode", "rigid")
        if mode not in STICKER_MODES:
            raise ctx.fail(f"'mode' must be \"rigid\" or \"deform\", got {json.dumps(mode)[:40]}")
        return StickerLayer(**common, image=img, center=center, scale=scale, rotation=rotation, mode=mode,
                            key=_key(d, digest))

    if kind == "adjust":
        region = d.get("region")
        if not isinstance(region, dict) or "polygon" not in region:
            raise ctx.fail("missing field 'region' ({\"polygon\": [[x, y], ...]})")
        poly = _points(ctx, region["polygon"], "'region.polygon'", 3, (W, H))
        return AdjustLayer(**common, polygon=poly, hue=_number(ctx, d, "hue", 0.0),
                           saturation=_number(ctx, d, "saturation", 1.0, lo=0.0),
                           brightness=_number(ctx, d, "brightness", 0.0),
                           contrast=_number(ctx, d, "contrast", 1.0, lo=0.0),
                           feather=min(_number(ctx, d, "feather", 1.5, lo=0.0), float(max(W, H))),  # clipped
                           key=_key(d))

    # atlas
    layer = layer or "bg"
    if layer not in info.layers:
        raise ctx.fail(f"layer '{layer}' is not in this project")
    sizes = atlas_sizes() if callable(atlas_sizes) else atlas_sizes
    A = None if sizes is None else sizes.get(layer)
    img, has_alpha, digest = _image(ctx, d, base, None if A is None else (A, A), f"the size of atlas_{layer}.png")
    common["layer"] = layer
    return AtlasLayer(**common, image=img, has_alpha=has_alpha, key=_key(d, digest))


def parse_edits(doc: Any, base: Path, info: ProjectInfo, fname: str = "EDITS.json",
                atlas_sizes: dict[str, int] | Callable[[], dict[str, int]] | None = None) -> list[EditLayer]:
    """Validate a whole EDITS document (already decoded JSON)."""
    ctx = _Ctx(fname)
    if not isinstance(doc, dict):
        raise ctx.fail("must be a JSON object with a 'layers' list")
    version = doc.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ctx.fail(f"'version' must be an integer, got {json.dumps(version)[:40]}")
    if version > FORMAT_VERSION:
        raise ctx.fail(f"version {version} is newer than this inve reads ({FORMAT_VERSION}); upgrade inve")
    layers = doc.get("layers")
    if layers is None:
        raise ctx.fail("missing field 'layers'")
    if not isinstance(layers, list):
        raise ctx.fail("'layers' must be a list")
    return [parse_layer(i, d, base, info, fname, atlas_sizes) for i, d in enumerate(layers)]


def load_edits(path: Path, info: ProjectInfo,
               atlas_sizes: dict[str, int] | Callable[[], dict[str, int]] | None = None) -> list[EditLayer]:
    """Read and validate an EDITS.json file; images are resolved relative to it."""
    from core import fsutil

    path = Path(path)
    doc = fsutil.read_json(path, "edits file")
    return parse_edits(doc, path.parent, info, path.name, atlas_sizes)

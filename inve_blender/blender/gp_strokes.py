"""Strokes of Grease Pencil (v3) objects, seen through the scene camera as the render sees
them, in a movie strip's source pixels (needs ``bpy_extras``/``mathutils``)."""
from __future__ import annotations

import math
from typing import Any, Iterable

from ..io.strip_map import StripPlacement
from ..io.strokes import Point, Stroke, _frame_at, camera_ndc_to_view, mix_gp_color


def _gp_layers(gp_data: Any) -> Iterable[Any]:
    return gp_data.layers


def read_gp_object_strokes(obj: Any, scene: Any, scene_frame: int, placement: StripPlacement) -> list[Stroke]:
    """Strokes of a Grease Pencil v3 object at ``scene_frame``, projected through the scene
    camera into render pixels and then into the movie strip's source pixels."""
    from bpy_extras.object_utils import world_to_camera_view  # Blender-only, imported on use
    from mathutils import Vector

    cam = scene.camera
    if cam is None:
        raise ValueError("Grease Pencil strokes are mapped through the scene camera: add a camera")
    rs = placement.render_size
    right = cam.matrix_world.to_3x3().col[0].normalized()
    scale = placement.pixels_per_source_pixel()
    out: list[Stroke] = []
    for layer in _gp_layers(obj.data):
        if getattr(layer, "hide", False):
            continue
        frame = layer.get_frame_at(scene_frame) if hasattr(layer, "get_frame_at") else _frame_at(layer.frames, scene_frame)
        if frame is None or frame.drawing is None:
            continue
        to_world = obj.matrix_world @ layer.matrix_local if hasattr(layer, "matrix_local") else obj.matrix_world
        for st in frame.drawing.strokes:
            mat = _gp_material(obj, st.material_index)
            if mat is not None and not getattr(mat, "show_stroke", True):
                continue
            mat_rgba = tuple(mat.color) if mat is not None else (0.0, 0.0, 0.0, 1.0)
            pts: list[Point] = []
            widths: list[float] = []
            colors = []
            for p in st.points:
                world = to_world @ Vector(tuple(p.position))
                ndc = world_to_camera_view(scene, cam, world)
                view = camera_ndc_to_view(ndc[0], ndc[1], rs)
                pts.append(placement.view_to_source(*view))
                edge = world_to_camera_view(scene, cam, world + right * float(p.radius))
                ev = camera_ndc_to_view(edge[0], edge[1], rs)
                widths.append(2.0 * math.dist(view, ev) / scale)
                colors.append(mix_gp_color(mat_rgba, tuple(p.vertex_color), float(p.opacity)))
            if not pts:
                continue
            n = len(colors)
            color = tuple(sum(c[i] for c in colors) / n for i in range(4))
            out.append(Stroke(points=pts, color=color, width=max(sum(widths) / n, 0.5), cyclic=bool(st.cyclic)))
    return out


def _gp_material(obj: Any, index: int) -> Any:
    slots = getattr(obj, "material_slots", [])
    if 0 <= index < len(slots) and slots[index].material is not None:
        return getattr(slots[index].material, "grease_pencil", None)
    return None


def is_gp_object(obj: Any) -> bool:
    """A Grease Pencil v3 object (4.3+: type 'GREASEPENCIL')."""
    return obj is not None and obj.type == "GREASEPENCIL"


def consume_gp_strokes(obj: Any, scene_frame: int) -> int:
    """Remove the strokes :func:`read_gp_object_strokes` read at ``scene_frame`` (they became
    a layer: pressing Add Strokes again must not add them twice). Returns how many."""
    n = 0
    for layer in _gp_layers(obj.data):
        if getattr(layer, "hide", False):
            continue
        frame = layer.get_frame_at(scene_frame) if hasattr(layer, "get_frame_at") else _frame_at(layer.frames, scene_frame)
        if frame is None or frame.drawing is None:
            continue
        drawing = frame.drawing
        idx = []
        for i, st in enumerate(drawing.strokes):
            mat = _gp_material(obj, st.material_index)
            if mat is None or getattr(mat, "show_stroke", True):
                idx.append(i)
        if idx:
            drawing.remove_strokes(indices=idx)
            n += len(idx)
    return n


def consume_annotation_strokes(annotation: Any, scene_frame: int) -> int:
    """Remove the annotation drawings shown at ``scene_frame`` on visible layers (they became
    a layer). RNA cannot remove single annotation strokes; the key frame holding them goes."""
    if annotation is None:
        return 0
    n = 0
    for layer in annotation.layers:
        if getattr(layer, "annotation_hide", False) or getattr(layer, "hide", False):
            continue
        frame = _frame_at(layer.frames, scene_frame)
        if frame is not None:
            n += len(frame.strokes)
            layer.frames.remove(frame)
    return n

"""Operators: strokes/stickers -> layers, the layer list, Propagate."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import bpy
from bpy.props import EnumProperty, FloatProperty

from ..io import edit_stack, results, strokes
from ..io.preview import stack_key
from . import gp_strokes, jobs, service
from . import sequencer as strips
from .context import active_project, poll_movie_strip, settings, strip_target, timing, workspace
from .ops_base import EngineJobOperator, ImageFileOperator, JobPlan


def find_annotation(context: bpy.types.Context) -> object | None:
    """The Sequencer preview's annotations: the current editor's, else the first preview's."""
    space = context.space_data
    if space is not None and space.type == "SEQUENCE_EDITOR":
        data = strokes.annotation_data(space)
        if data is not None:
            return data
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                for sp in area.spaces:
                    if sp.type == "SEQUENCE_EDITOR":
                        data = strokes.annotation_data(sp)
                        if data is not None:
                            return data
    return None


def preview_cursor_source(context: bpy.types.Context, strip: object) -> tuple[float, float] | None:
    """The Sequencer preview's 2D cursor in the strip's source pixels (None without a preview)."""
    spaces = []
    if context.space_data is not None and context.space_data.type == "SEQUENCE_EDITOR":
        spaces.append(context.space_data)
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                spaces += [sp for sp in area.spaces if sp.type == "SEQUENCE_EDITOR"]
    for sp in spaces:
        if getattr(sp, "view_type", "") in ("PREVIEW", "SEQUENCER_PREVIEW") and hasattr(sp, "cursor_location"):
            scene = strips.sequencer_scene(context)
            try:
                return strips.strip_placement(scene, strip).view_to_source(*sp.cursor_location)
            except ValueError:
                return None
    return None


def gp_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    """Selected Grease Pencil objects, else the active one, else all visible ones in the scene."""
    scene = strips.sequencer_scene(context)
    objs = [o for o in getattr(context, "selected_objects", []) or [] if gp_strokes.is_gp_object(o)]
    active = getattr(context, "active_object", None)
    if not objs and gp_strokes.is_gp_object(active):
        objs = [active]
    if not objs:
        objs = [o for o in scene.objects if gp_strokes.is_gp_object(o) and not o.hide_render]
    return objs


def collect_strokes(op: bpy.types.Operator, context: bpy.types.Context, strip: object,
                    source: str) -> list[strokes.Stroke] | None:
    scene = strips.sequencer_scene(context)
    try:
        placement = strips.strip_placement(scene, strip)
    except ValueError as exc:
        op.report({"ERROR"}, str(exc))
        return None
    if source == "ANNOTATION":
        found = strokes.read_annotation_strokes(find_annotation(context), scene.frame_current, placement)
        where = "annotation strokes in the Sequencer preview on this frame"
    else:
        found = []
        objects = gp_objects(context)
        if not objects:
            op.report({"ERROR"}, "No Grease Pencil objects in the scene (Grease Pencil v3: Blender 4.3 or newer); "
                                 "or draw with the Annotate tool in the Sequencer preview")
            return None
        try:
            for obj in objects:
                found += gp_strokes.read_gp_object_strokes(obj, scene, scene.frame_current, placement)
        except ValueError as exc:
            op.report({"ERROR"}, str(exc))
            return None
        where = "Grease Pencil strokes on this frame"
    if not found:
        op.report({"ERROR"}, f"No {where}: draw some first")
        return None
    return found


def consume_strokes(context: bpy.types.Context, source: str) -> int:
    """Take the strokes that became a layer off the canvas (a second Add Strokes adds nothing twice)."""
    frame = strips.sequencer_scene(context).frame_current
    if source == "ANNOTATION":
        return gp_strokes.consume_annotation_strokes(find_annotation(context), frame)
    return sum(gp_strokes.consume_gp_strokes(obj, frame) for obj in gp_objects(context))


def add_layer(context: bpy.types.Context, kind: str, layer: dict, name: str, image: str = "") -> object:
    """Append a layer to the stack of the active strip's project (layers belong to a project)."""
    s = active_project(context)
    if s is None:
        raise ValueError("the active strip has no trained project to hold layers")
    item = s.layers.add()
    item.name = edit_stack.unique_name(name, [it.name for it in s.layers if it != item])
    item.kind = kind
    item.data = json.dumps({k: v for k, v in layer.items() if k not in ("type", "image")})
    item.image = image
    if layer.get("layer") in ("fg", "bg"):
        item.attach = layer["layer"]
    s.active_layer = len(s.layers) - 1
    return item


class _NeedsProject:
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def drawing_target(self, context: bpy.types.Context) -> tuple[object, dict, int] | None:
        """(movie strip, project info, source frame under the playhead), or None after a report."""
        t = strip_target(self, context, need_frame=True)
        return None if t is None else (t.strip, t.info, t.frame)


class INVE_OT_add_strokes(_NeedsProject, bpy.types.Operator):
    """Turn the strokes drawn on this frame into an edit layer that follows the surface"""

    bl_idname = "inve.add_strokes"
    bl_label = "Add Strokes as Layer"
    bl_options = {"REGISTER", "UNDO"}

    source: EnumProperty(name="Strokes From", items=[
        ("SETTINGS", "As in Panel", ""), ("ANNOTATION", "Annotations", ""), ("GPENCIL", "Grease Pencil", "")],
        default="SETTINGS")
    as_region: EnumProperty(name="Closed Strokes", items=[
        ("SETTINGS", "As in Panel", ""), ("LINE", "Lines", ""), ("REGION", "Adjust Regions", "")],
        default="SETTINGS")

    def execute(self, context: bpy.types.Context) -> set[str]:
        s = settings(context)
        target = self.drawing_target(context)
        if target is None:
            return {"CANCELLED"}
        strip, info, frame = target
        source = s.stroke_source if self.source == "SETTINGS" else self.source
        found = collect_strokes(self, context, strip, source)
        if found is None:
            return {"CANCELLED"}
        regions = s.as_region if self.as_region == "SETTINGS" else self.as_region == "REGION"
        lines = [st for st in found if not (regions and strokes.is_closed(st))]
        closed = [st for st in found if regions and strokes.is_closed(st)]
        for st in closed:
            add_layer(context, "adjust", strokes.adjust_layer(st, frame, s.hue, s.saturation, s.brightness,
                                                               s.contrast), f"Region f{frame}")
        if lines:
            add_layer(context, "sketch", strokes.sketch_layer(lines, frame), f"Sketch f{frame}")
        consume_strokes(context, source)
        self.report({"INFO"}, f"Added {len(lines)} stroke(s)" + (f" and {len(closed)} region(s)" if closed else "")
                    + f" on source frame {frame}")
        return {"FINISHED"}


class INVE_OT_add_sticker(ImageFileOperator, _NeedsProject, bpy.types.Operator):
    """Place an image on the current frame; it follows the surface under its centre"""

    bl_idname = "inve.add_sticker"
    bl_label = "Add Sticker"
    bl_options = {"REGISTER", "UNDO"}
    center_x: FloatProperty(name="Centre X", description="Source pixels from the left (-1: frame centre)",
                            default=-1.0)
    center_y: FloatProperty(name="Centre Y", description="Source pixels from the top (-1: frame centre)",
                            default=-1.0)
    scale: FloatProperty(name="Scale", default=1.0, min=0.01, max=100.0)
    rotation: FloatProperty(name="Rotation", subtype="ANGLE", default=0.0)
    mode: EnumProperty(name="Mode", items=[("rigid", "Rigid", "Follows position, rotation and scale"),
                                           ("deform", "Deform", "Bends with the surface")], default="rigid")

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"Sticker image not found: {path or '(none chosen)'}")
            return {"CANCELLED"}
        target = self.drawing_target(context)
        if target is None:
            return {"CANCELLED"}
        strip, info, frame = target
        w, h = info.get("source_size", [0, 0])
        cursor = preview_cursor_source(context, strip)
        cx = self.center_x if self.center_x >= 0 else (cursor[0] if cursor else w / 2.0)
        cy = self.center_y if self.center_y >= 0 else (cursor[1] if cursor else h / 2.0)
        # keep a copy with the edits so the project is self-contained
        ws = workspace(context, strip)
        os.makedirs(ws.edits_dir, exist_ok=True)
        dest = os.path.join(ws.edits_dir, os.path.basename(path))
        if os.path.abspath(dest) != os.path.abspath(path):
            shutil.copy2(path, dest)
        layer = {"type": "sticker", "frame": frame, "center": [cx, cy], "scale": self.scale,
                 "rotation": self.rotation, "mode": self.mode}
        add_layer(context, "sticker", layer, f"Sticker f{frame}", image=dest)
        self.report({"INFO"}, f"Sticker placed on source frame {frame}")
        return {"FINISHED"}


class INVE_OT_add_paint(ImageFileOperator, _NeedsProject, bpy.types.Operator):
    """Add an RGBA image the size of the source frame, painted over the current frame, as a layer"""

    bl_idname = "inve.add_paint"
    bl_label = "Add Paint Image"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"Paint image not found: {path or '(none chosen)'}")
            return {"CANCELLED"}
        target = self.drawing_target(context)
        if target is None:
            return {"CANCELLED"}
        strip, info, frame = target
        img = bpy.data.images.load(path, check_existing=True)
        size = tuple(img.size)
        if img.users == 0:
            bpy.data.images.remove(img)
        want = tuple(info.get("source_size") or ())
        if size != want:
            self.report({"ERROR"}, f"The paint image is {size[0]}x{size[1]}; it must be the source frame's size "
                                   f"{want[0]}x{want[1]}")
            return {"CANCELLED"}
        add_layer(context, "paint", {"type": "paint", "frame": frame}, f"Paint f{frame}", image=path)
        self.report({"INFO"}, f"Paint image added on source frame {frame}")
        return {"FINISHED"}


class INVE_OT_layer_set_adjust(bpy.types.Operator):
    """Give the active adjust layer the hue, saturation, brightness and contrast set in the panel"""

    bl_idname = "inve.layer_set_adjust"
    bl_label = "Apply Adjustment Values"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        s = active_project(context)
        if s is None or not (0 <= s.active_layer < len(s.layers)) or s.layers[s.active_layer].kind != "adjust":
            cls.poll_message_set("The active layer is not an adjust layer")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        s = settings(context)
        item = active_project(context).layers[active_project(context).active_layer]
        data = json.loads(item.data or "{}")
        data.update(hue=s.hue, saturation=s.saturation, brightness=s.brightness, contrast=s.contrast)
        item.data = json.dumps(data)
        return {"FINISHED"}


class INVE_OT_layer_move(bpy.types.Operator):
    """Move the active layer up (earlier, underneath) or down (later, on top)"""

    bl_idname = "inve.layer_move"
    bl_label = "Move Layer"
    bl_options = {"REGISTER", "UNDO"}

    direction: EnumProperty(items=[("UP", "Up", ""), ("DOWN", "Down", "")])

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        s = active_project(context)
        if s is None or len(s.layers) < 2:
            cls.poll_message_set("Nothing to reorder")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        s = active_project(context)
        i = s.active_layer
        j = edit_stack.move_index(i, self.direction, len(s.layers))
        if i != j:
            s.layers.move(i, j)
            s.active_layer = j
        return {"FINISHED"}


class INVE_OT_layer_remove(bpy.types.Operator):
    """Delete the active layer"""

    bl_idname = "inve.layer_remove"
    bl_label = "Delete Layer"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        s = active_project(context)
        if s is None or not (0 <= s.active_layer < len(s.layers)):
            cls.poll_message_set("No layer selected")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        s = active_project(context)
        s.layers.remove(s.active_layer)
        s.active_layer = min(s.active_layer, len(s.layers) - 1)
        return {"FINISHED"}


class INVE_OT_propagate(EngineJobOperator, bpy.types.Operator):
    """Render the visible layers into every frame, streamed as a transparent overlay strip
    (Alpha Over) above the movie; the frames show up as the engine writes them"""

    bl_idname = "inve.propagate"
    bl_label = "Propagate"
    bl_options = {"REGISTER", "UNDO"}
    job_kind = "edit"
    failed_text = "Propagation failed"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not poll_movie_strip(cls, context):
            return False
        item = active_project(context)
        if item is None or not any(it.visible for it in item.layers):
            cls.poll_message_set("No visible layers: add strokes, a sticker or a painted atlas first")
            return False
        return True

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        target = strip_target(self, context)
        if target is None:
            return None
        strip, info = target.strip, target.info
        s = active_project(context)
        ws = workspace(context, strip)
        try:  # EDITS.json stays next to the project: `inve edit` reproduces the result from it
            edits = edit_stack.write_edits(s.layers, ws.edits_file, abspath=bpy.path.abspath)
        except (ValueError, FileNotFoundError) as exc:
            self.report({"ERROR"}, str(exc))
            return None
        key = stack_key(edits)
        out = results.folder_for(ws.frames, key)
        scene = strips.sequencer_scene(context)
        strips.ensure_strip_ids(scene)
        data = {"strip": strip.name, "movie_id": strip.get(strips.MOVIE_ID, ""), "frames_dir": out,
                "frames_root": ws.frames, "source_frames": list(info.get("frames") or []),
                "timing": timing(context, strip), "stack": key, "shown": 0}
        fields: dict[str, Any] = {"project": ws.project, "output": out, "overlay": True}
        if settings(context).export_movie:
            fields.update(movie=os.path.join(ws.base, f"{key}.mp4"), overwrite=True)
            data["movie"] = fields["movie"]
        title = f"Propagating {len(edits['layers'])} layer(s)"
        task = service.task("propagate", fields, title, on_frame=lambda ev: _frame_arrived(scene.name, data, ev),
                            pre=[("set_edits", {"project": ws.project, "edits": edits, "base": ws.edits_dir})])
        return JobPlan(task, title, data)

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        d = job.context_data
        results.record(d["frames_root"], d["stack"], complete=True)
        result = _show_frames(scene, d)
        if result is None:
            return "Propagated, but its movie strip is gone"
        if jobs.interactive():
            bpy.ops.ed.undo_push(message="INVE Propagate")
        movie = f"; movie {d['movie']}" if d.get("movie") else ""
        return f"Propagated into '{result.name}' (channel {result.channel}, {len(result.elements)} frames){movie}"

    @classmethod
    def cancelled(cls, job: jobs.Job, scene: Any) -> str:
        d = job.context_data
        n = len(getattr(job.worker, "frames", []))
        if n:  # the frames written stay, and the strip shows them
            results.record(d["frames_root"], d["stack"], complete=False)
            _show_frames(scene, d)
        return f"Propagation cancelled: {n} frame(s) written are kept"


def _movie_of(scene: Any, data: dict[str, Any]) -> Any:
    if scene is None:
        return None
    return next((m for m in strips.movie_strips(scene) if m.get(strips.MOVIE_ID) == data["movie_id"]), None)


def _show_frames(scene: Any, data: dict[str, Any]) -> Any:
    movie = _movie_of(scene, data)
    if movie is None:
        return None
    return strips.place_result_strip(scene, movie, data["frames_dir"], data["source_frames"], data["timing"],
                                     streaming=True)


def _frame_arrived(scene_name: str, data: dict[str, Any], ev: dict[str, Any]) -> None:
    """A propagated frame is on disk: show the overlay strip (made on the first frame)."""
    scene = bpy.data.scenes.get(scene_name)
    movie = _movie_of(scene, data)
    if movie is None:
        return
    strip = strips.find_result_strip(scene, movie)
    if strip is None or os.path.normpath(bpy.path.abspath(strip.directory)) != os.path.normpath(data["frames_dir"]):
        _show_frames(scene, data)
    else:
        strip.invalidate_cache("RAW")
    data["shown"] += 1


CLASSES = (INVE_OT_add_strokes, INVE_OT_add_sticker, INVE_OT_add_paint, INVE_OT_layer_set_adjust, INVE_OT_layer_move,
           INVE_OT_layer_remove, INVE_OT_propagate)

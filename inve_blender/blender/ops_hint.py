"""Mark Foreground: the outline of the moving object, for training (thin glue).

The user outlines the object on the frame under the playhead — a closed stroke with the
Annotate tool (or Grease Pencil), or a Mask drawn over the strip's Movie Clip — and presses
*Mark Foreground*; Train then passes the hints to the engine (``--fg-hint``), which grows
them into masks for the whole clip. What is decided (polygons, mask space, the file) is
:mod:`inve_blender.io.fg_hints`, tested without Blender.
"""
from __future__ import annotations

import os
from typing import Any

import bpy
from bpy.props import EnumProperty

from ..io import fg_hints, strokes
from . import sequencer as strips
from .context import movie_strip, poll_movie_strip, settings, timing
from .ops_edit import collect_strokes, consume_strokes
from .ops_train import hint_for, train_workspace


class _Quiet:
    """Stands in for an operator's ``report`` where a lookup must not report (drawing)."""

    def report(self, *args: Any) -> None:
        pass


def hint_file(context: bpy.types.Context, strip: Any, load: bool = True) -> str | None:
    """HINTS.json of ``strip``'s workspace: exactly where Train reads it
    (:func:`.ops_train.train_workspace`, one rule for both); None when the movie file cannot
    be read or the project folder was moved. ``load=False`` while drawing."""
    try:
        got = train_workspace(_Quiet(), context, strip, load=load)
    except (OSError, ValueError):
        return None
    return None if got is None else fg_hints.hints_path(got[1][0])


def hint_found(context: bpy.types.Context, strip: Any, load: bool = True) -> str | None:
    """The hint Train would use now (also one marked before the .blend was saved), or None."""
    path = hint_file(context, strip, load=load)
    return None if path is None else hint_for(os.path.dirname(path))


def find_mask(context: bpy.types.Context, scene_frame: int) -> Any:
    """The Mask under the playhead: the one a Movie Clip editor shows, else the only Mask
    whose frame range holds the playhead."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "CLIP_EDITOR":
                mask = getattr(area.spaces.active, "mask", None)
                if mask is not None:
                    return mask
    live = [m for m in bpy.data.masks if m.frame_start <= scene_frame <= m.frame_end]
    return live[0] if len(live) == 1 else None


def mask_splines(mask: Any, context: bpy.types.Context) -> list[tuple[list[Any], str]]:
    """The visible layers' splines as ((co, handle_left, handle_right) per point, label): a
    Subtract (or inverted) layer marks background. Animated masks are read as evaluated."""
    try:
        mask = mask.evaluated_get(context.evaluated_depsgraph_get())
    except (AttributeError, RuntimeError, TypeError):
        pass
    out = []
    for layer in mask.layers:
        if layer.hide:
            continue
        label = "bg" if layer.blend == "SUBTRACT" or layer.invert else "fg"
        for spline in layer.splines:
            pts = [(tuple(p.co), tuple(p.handle_left), tuple(p.handle_right)) for p in spline.points]
            out.append((pts, label))
    return out


class INVE_OT_mark_foreground(bpy.types.Operator):
    """Use the closed outline drawn on this frame (or the Mask under the playhead) as a hint of
    where the moving foreground is; Train grows it into masks for the whole clip"""

    bl_idname = "inve.mark_foreground"
    bl_label = "Mark Foreground"
    bl_options = {"REGISTER"}

    source: EnumProperty(name="Outline From", items=[
        ("SETTINGS", "As in Panel", "Strokes from where the panel says (Annotations or Grease Pencil)"),
        ("ANNOTATION", "Annotations", "A closed stroke drawn with the Annotate tool in the Sequencer preview"),
        ("GPENCIL", "Grease Pencil", "A closed stroke of the selected Grease Pencil objects"),
        ("MASK", "Mask", "The Mask drawn over the strip's Movie Clip (Mask mode of the Movie Clip editor)")],
        default="SETTINGS")
    label: EnumProperty(name="Region Is", items=[
        ("fg", "Foreground", "The outline goes around the moving object"),
        ("bg", "Background", "The outline goes around a region that is surely background")], default="fg")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = strips.sequencer_scene(context)
        strip = movie_strip(context)
        frame = timing(context, strip).scene_to_source(scene.frame_current)
        if frame is None:
            self.report({"ERROR"}, f"The strip '{strip.name}' shows nothing at frame {scene.frame_current}: "
                                   "move the playhead onto it")
            return {"CANCELLED"}
        path = hint_file(context, strip)
        if path is None:
            self.report({"ERROR"}, f"'{strip.name}': its movie file cannot be read, or its project folder was "
                                   "moved (Relink Project)")
            return {"CANCELLED"}
        size = strips.strip_source_size(strip)
        source = settings(context).stroke_source if self.source == "SETTINGS" else self.source
        if source == "MASK":
            mask = find_mask(context, scene.frame_current)
            if mask is None:
                self.report({"ERROR"}, "No Mask under the playhead: draw one over the strip's Movie Clip (Movie "
                                       "Clip editor, Mask mode), or outline the object with the Annotate tool")
                return {"CANCELLED"}
            polygons = fg_hints.mask_polygons(mask_splines(mask, context), size)
            where = f"Mask '{mask.name}'"
        else:
            found = collect_strokes(self, context, strip, source)
            if found is None:
                return {"CANCELLED"}
            polygons = [(st.points, self.label) for st in found if strokes.is_closed(st)]
            where = "the outline"
            if not polygons:
                self.report({"ERROR"}, "No closed stroke on this frame: draw a loop around the object")
                return {"CANCELLED"}
        before = hint_for(os.path.dirname(path)) or path  # also the outlines marked before the first save
        try:
            doc = fg_hints.set_frame_hints(fg_hints.load(before), frame, polygons, size)
        except ValueError as exc:
            self.report({"ERROR"}, f"Cannot use {where}: {exc}")
            return {"CANCELLED"}
        fg_hints.save(path, doc)
        if before != path:
            fg_hints.clear(before)
        if source != "MASK":
            consume_strokes(context, source)  # the outline is used: off the canvas, as Add Strokes does
        self.report({"INFO"}, f"{fg_hints.summary(doc)}: Train uses it")
        return {"FINISHED"}


class INVE_OT_clear_foreground_hint(bpy.types.Operator):
    """Forget the foreground outlines of the active strip (Train finds the foreground by itself)"""

    bl_idname = "inve.clear_foreground_hint"
    bl_label = "Clear Foreground Hint"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not poll_movie_strip(cls, context):
            return False
        if hint_found(context, movie_strip(context), load=False) is None:
            cls.poll_message_set("No foreground hint is set for this strip")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = movie_strip(context)
        while (found := hint_found(context, strip)) is not None:  # also one marked before saving
            fg_hints.clear(found)
        self.report({"INFO"}, "Foreground hint cleared")
        return {"FINISHED"}


def hint_line(context: bpy.types.Context, strip: Any) -> str:
    """The panel's line about the strip's hint ("" when none is set)."""
    path = hint_found(context, strip, load=False)
    if path is None:
        return ""
    try:
        return fg_hints.summary(fg_hints.load(path)) or ""
    except ValueError as exc:
        return str(exc)


CLASSES = (INVE_OT_mark_foreground, INVE_OT_clear_foreground_hint)

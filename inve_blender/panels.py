"""The Sequencer sidebar tab "INVE": engine state, strip, training, layers, track and atlas."""
from __future__ import annotations

import json
import textwrap

import bpy

from . import engine_env, jobs, ops_engine, strips
from .edit_stack import describe


def _wrapped(layout: bpy.types.UILayout, text: str, icon: str = "NONE", width: int = 44) -> None:
    lines = textwrap.wrap(text, width) or [""]
    for i, line in enumerate(lines):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


def draw_engine_status(layout: bpy.types.UILayout, context: bpy.types.Context, in_preferences: bool = False) -> bool:
    """Engine readiness with the one-click ways out; returns whether the engine is ready."""
    status = engine_env.cached_status()
    if status is not None and status.ok:
        if in_preferences:
            _wrapped(layout, status.message, icon="CHECKMARK")
            layout.operator("inve.check_engine", icon="FILE_REFRESH")
        return True
    box = layout.box()
    if status is None:
        box.label(text="Checking the engine..." if ops_engine.checking() else "Engine not checked yet", icon="INFO")
    else:
        _wrapped(box, status.message, icon="ERROR")
    row = box.row(align=True)
    row.operator("inve.check_engine", icon="FILE_REFRESH")
    ops_engine.draw_install(box)
    if in_preferences:  # the older way: into Blender's own Python (per Blender version)
        box.operator("inve.install_dependencies", icon="IMPORT")
    if not in_preferences:
        box.operator("inve.open_preferences", icon="PREFERENCES")
    return False


def draw_job(layout: bpy.types.UILayout) -> None:
    job = jobs.last()
    if job is None:
        return
    st = job.state
    if not st.finished:
        layout.progress(factor=st.fraction, type="BAR", text=st.status_text())
        layout.operator("inve.cancel", icon="CANCEL")
    elif job.outcome or st.error:
        icon = "CHECKMARK" if st.ok else ("CANCEL" if st.cancelled else "ERROR")
        _wrapped(layout, job.outcome or st.error, icon=icon)


class INVE_PT_main(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "INVE"
    bl_label = "INVE"

    def draw(self, context: bpy.types.Context) -> None:
        from .ops_common import workspace_path

        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = strips.sequencer_scene(context)
        draw_engine_status(layout, context)
        problem = strips.movie_strip_problem(scene)
        if problem:
            _wrapped(layout, problem, icon="INFO")
            draw_job(layout)
            return
        strip = strips.active_strip(scene)
        s = scene.inve
        col = layout.column(align=True)
        col.label(text=strip.name, icon="FILE_MOVIE")
        col.label(text=f"Scene frames {strip.frame_final_start}-{strip.frame_final_end - 1}")
        try:
            src = strips.strip_timing(strip).visible_source_range()
            col.label(text=f"Source frames {src[0]}-{src[1] - 1}  ({strip.fps:g} fps)")
        except ValueError:
            pass

        col = layout.column()
        col.prop(s, "quality")
        if s.quality == "CUSTOM":
            col.prop(s, "max_side")
        col.prop(s, "minutes")
        col.prop(s, "single_layer")
        col.prop(s, "device")
        col.prop(s, "project_dir")
        base, temporary = workspace_path(context, strip)
        if temporary:
            _wrapped(layout.box(), f"Unsaved file: the project goes to a temporary folder ({base}). "
                                   "Save the .blend to keep it next to it.", icon="ERROR")
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("inve.train", icon="PLAY")
        draw_job(layout)
        self._draw_info(layout, s, strip)

    @staticmethod
    def _draw_info(layout: bpy.types.UILayout, s: object, strip: object) -> None:
        box = layout.box()
        row = box.row()
        row.label(text="Project", icon="FILE_FOLDER")
        row.operator("inve.project_info", text="", icon="FILE_REFRESH")
        if not s.info_json or s.info_strip != strip.name:
            box.label(text="Not trained yet (or press refresh)")
            return
        try:
            info = json.loads(s.info_json)
        except json.JSONDecodeError:
            box.label(text="Project info unreadable: refresh", icon="ERROR")
            return
        m = info.get("metrics") or {}
        box.label(text="Trained" if info.get("trained") else "Not trained (checkpoint only)",
                  icon="CHECKMARK" if info.get("trained") else "INFO")
        frames = info.get("frames") or []
        if frames:
            box.label(text=f"Frames {frames[0]}-{frames[-1]}, {len(frames)} in all")
        size, work = info.get("source_size"), info.get("work_size")
        if size and work:
            box.label(text=f"{size[0]}x{size[1]} px, trained at {work[0]}x{work[1]}")
        for key, label, fmt in (("psnr", "PSNR", "{:.2f} dB"), ("iterations", "Iterations", "{:d}"),
                                ("train_seconds", "Training time", "{:.0f} s")):
            value = m.get(key)
            if isinstance(value, (int, float)):
                try:
                    box.label(text=f"{label}: {fmt.format(value)}")
                except (ValueError, TypeError):
                    box.label(text=f"{label}: {value}")


class INVE_UL_layers(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: PLR0913
        kind_icon = {"sketch": "GREASEPENCIL", "paint": "BRUSH_DATA", "sticker": "IMAGE_DATA",
                     "adjust": "MOD_HUE_SATURATION", "atlas": "TEXTURE"}.get(item.kind, "DOT")
        row = layout.row(align=True)
        row.prop(item, "name", text="", emboss=False, icon=kind_icon)
        try:
            row.label(text=describe({"type": item.kind, **json.loads(item.data or "{}")}))
        except (json.JSONDecodeError, TypeError):
            row.label(text=item.kind)
        row.prop(item, "visible", text="", emboss=False, icon="HIDE_OFF" if item.visible else "HIDE_ON")


class INVE_PT_layers(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "INVE"
    bl_label = "Edit Layers"
    bl_parent_id = "INVE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        s = strips.sequencer_scene(context).inve
        row = layout.row()
        row.template_list("INVE_UL_layers", "", s, "layers", s, "active_layer", rows=4)
        col = row.column(align=True)
        col.operator("inve.layer_move", text="", icon="TRIA_UP").direction = "UP"
        col.operator("inve.layer_move", text="", icon="TRIA_DOWN").direction = "DOWN"
        col.separator()
        col.operator("inve.layer_remove", text="", icon="X")
        layout.label(text="Later layers draw on top")
        if 0 <= s.active_layer < len(s.layers):
            item = s.layers[s.active_layer]
            sub = layout.column()
            sub.use_property_split = True
            sub.prop(item, "attach")
            if item.kind in ("paint", "sticker", "atlas"):
                sub.prop(item, "image")
            if item.kind == "adjust":
                for name in ("hue", "saturation", "brightness", "contrast"):
                    sub.prop(s, name)
                sub.operator("inve.layer_set_adjust", icon="CHECKMARK")
        col = layout.column()
        col.use_property_split = True
        col.prop(s, "stroke_source")
        col.prop(s, "as_region")
        active_adjust = 0 <= s.active_layer < len(s.layers) and s.layers[s.active_layer].kind == "adjust"
        if s.as_region and not active_adjust:
            for name in ("hue", "saturation", "brightness", "contrast"):
                col.prop(s, name)
        row = layout.row(align=True)
        row.operator("inve.add_strokes", icon="GREASEPENCIL")
        row = layout.row(align=True)
        row.operator("inve.add_sticker", icon="IMAGE_DATA")
        row.operator("inve.add_paint", icon="BRUSH_DATA")
        big = layout.row()
        big.scale_y = 1.4
        big.operator("inve.propagate", icon="RENDER_ANIMATION")


class INVE_PT_tools(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "INVE"
    bl_label = "Track and Atlas"
    bl_parent_id = "INVE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("inve.track", icon="TRACKER")
        row = layout.row(align=True)
        row.operator("inve.atlas_open", icon="TPAINT_HLT")
        row.operator("inve.atlas_apply", icon="CHECKMARK")


CLASSES = (INVE_PT_main, INVE_UL_layers, INVE_PT_layers, INVE_PT_tools)

"""The Sequencer sidebar tab "INVE": engine state, strip, training, layers, track and atlas."""
from __future__ import annotations

import json

import bpy

from ..io.edit_stack import describe
from . import sequencer as strips
from . import confidence, ops_batch, ops_hint, preview, service
from .context import active_project, project_folder, propagated, started_folder, strip_project, workspace_path
from .ui import _wrapped, draw_engine_status, draw_job


MAX_SLIDE_ROWS = 8  # runs of frames listed under Where Edits May Slide (then "... and N more")
BATCH_ICONS = {"queued": "SORTTIME", "training": "PLAY", "done": "CHECKMARK", "failed": "ERROR",
               "cancelled": "CANCEL"}


def draw_batch(layout: bpy.types.UILayout, active: str = "") -> None:
    """Each strip's state in the latest Train All (queued / training with progress and PSNR /
    done / failed with its message); the active strip's row is highlighted."""
    job = ops_batch.batch_job()
    if job is None:
        draw_saved_batch(layout, strips.sequencer_scene(bpy.context), active)
        return
    tracker = job.worker.tracker
    box = layout.box()
    box.label(text="Train All Strips", icon="SEQ_STRIP_DUPLICATE")
    col = box.column(align=True)
    for name, names in job.context_data.get("strips", {}).items():
        sh = tracker.shots.get(name)
        if sh is None:
            continue
        for strip_name in names:
            row = col.row(align=True)
            row.alert = sh.state == "failed"
            row.label(text=strip_name, icon="RIGHTARROW" if strip_name == active else BATCH_ICONS.get(sh.state, "DOT"))
            if sh.state == "training" and sh.total:
                row.progress(factor=sh.fraction, type="BAR", text=sh.line())
            else:
                row.label(text=sh.line())


def draw_hint(layout: bpy.types.UILayout, context: bpy.types.Context, strip: object) -> None:
    """Mark Foreground (outline from strokes or a Mask) and, when set, the hint with Clear."""
    box = layout.box()
    row = box.row(align=True)
    row.operator("inve.mark_foreground", icon="SELECT_SET")
    row.operator("inve.mark_foreground", text="", icon="MOD_MASK").source = "MASK"
    line = ops_hint.hint_line(context, strip)
    if line:
        row = box.row(align=True)
        row.label(text=line, icon="CHECKMARK")
        row.operator("inve.clear_foreground_hint", text="", icon="X")


def draw_saved_batch(layout: bpy.types.UILayout, scene: object, active: str = "") -> None:
    """The latest Train All's end as saved in the .blend (after reopening the file)."""
    rows = getattr(getattr(scene, "inve", None), "batch_strips", None)
    if not rows:
        return
    box = layout.box()
    box.label(text="Train All Strips", icon="SEQ_STRIP_DUPLICATE")
    col = box.column(align=True)
    for r in rows:
        row = col.row(align=True)
        row.alert = r.state == "failed"
        row.label(text=r.strip, icon="RIGHTARROW" if r.strip == active else BATCH_ICONS.get(r.state, "DOT"))
        row.label(text=r.line)
    if scene.inve.batch_outcome:
        _wrapped(box, scene.inve.batch_outcome, icon="INFO")


class INVE_PT_main(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "INVE"
    bl_label = "INVE"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = strips.sequencer_scene(context)
        draw_engine_status(layout, context)
        problem = strips.movie_strip_problem(scene)
        if problem:
            _wrapped(layout, problem, icon="INFO")
            layout.operator("inve.train_all", icon="SEQ_STRIP_DUPLICATE")
            draw_job(layout)
            draw_batch(layout)
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
        item, match = strip_project(context, strip)
        folder = (project_folder(item, update=False) or started_folder(item)) if item is not None else None
        try:
            base, temporary = workspace_path(context, strip, update=False)
        except (OSError, ValueError):
            base, temporary = "", False
        if temporary:
            _wrapped(layout.box(), f"Unsaved file: the project goes to a temporary folder ({base}). "
                                   "Save the .blend to keep it next to it.", icon="ERROR")
        if item is not None and folder is None:
            box = layout.box()
            _wrapped(box, f"The project folder was moved or deleted ({item.abs_path})", icon="ERROR")
            box.operator("inve.relink_project", icon="FILE_FOLDER")
        if match is not None and not match.complete:
            box = layout.box()
            missing = ", ".join(f"{a}-{b - 1}" for a, b in match.outside)
            _wrapped(box, f"Source frames {missing} are not trained: they show no edits", icon="ERROR")
            box.operator("inve.train", text="Train New Frames", icon="PLAY")
        draw_hint(layout, context, strip)
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("inve.train", icon="PLAY")
        layout.operator("inve.train_all", icon="SEQ_STRIP_DUPLICATE")
        draw_job(layout)
        draw_batch(layout, strip.name)
        notice = service.MANAGER.check_restarts()
        if notice:
            _wrapped(layout.box(), notice, icon="ERROR")
        self._draw_info(layout, item, strip)

    @staticmethod
    def _draw_info(layout: bpy.types.UILayout, item: object, strip: object) -> None:
        box = layout.box()
        row = box.row()
        row.label(text="Project", icon="FILE_FOLDER")
        row.operator("inve.project_info", text="", icon="FILE_REFRESH")
        if item is None:
            box.label(text="Not trained yet")
            return
        box.label(text=f"{item.source_name} {item.frame_start}-{item.frame_end - 1}", icon="FILE_MOVIE")
        if not item.info_json:
            box.label(text="Not trained yet (or press refresh)")
            return
        try:
            info = json.loads(item.info_json)
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
        owner = active_project(context)
        if owner is None:
            layout.label(text="Train the active strip: its project holds the layers", icon="INFO")
            return
        row = layout.row()
        row.template_list("INVE_UL_layers", "", owner, "layers", owner, "active_layer", rows=4)
        col = row.column(align=True)
        col.operator("inve.layer_move", text="", icon="TRIA_UP").direction = "UP"
        col.operator("inve.layer_move", text="", icon="TRIA_DOWN").direction = "DOWN"
        col.separator()
        col.operator("inve.layer_remove", text="", icon="X")
        layout.label(text="Later layers draw on top")
        if 0 <= owner.active_layer < len(owner.layers):
            item = owner.layers[owner.active_layer]
            sub = layout.column()
            sub.use_property_split = True
            sub.prop(item, "attach")
            if item.kind in ("paint", "sticker", "atlas"):
                sub.prop(item, "image")
            if item.kind == "sticker":
                row = sub.row(align=True)
                for mode, icon in (("G", "VIEW_PAN"), ("S", "FULLSCREEN_ENTER"), ("R", "FILE_REFRESH")):
                    row.operator("inve.sticker_transform", text=mode, icon=icon).mode = mode
            if item.kind == "adjust":
                for name in ("hue", "saturation", "brightness", "contrast"):
                    sub.prop(s, name)
                sub.operator("inve.layer_set_adjust", icon="CHECKMARK")
        col = layout.column()
        col.use_property_split = True
        col.prop(s, "stroke_source")
        col.prop(s, "as_region")
        active_adjust = 0 <= owner.active_layer < len(owner.layers) and owner.layers[owner.active_layer].kind == "adjust"
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
        scene = strips.sequencer_scene(context)
        got = propagated(scene, strips.active_strip(scene))
        if got is not None and got[2]:
            _wrapped(layout, "The result strip shows other layers than these (muted): Propagate to update it",
                     icon="INFO")
        row = layout.row()
        row.prop(s, "live_preview")
        if s.live_preview and preview.last_ms is not None:
            row.label(text=f"{preview.last_ms:.0f} ms")
        layout.prop(s, "export_movie")


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
        row.operator("inve.apply_corrections", icon="TRACKING_REFINE_FORWARDS")
        row.prop(strips.sequencer_scene(context).inve, "correct_minutes", text="")
        row = layout.row(align=True)
        row.operator("inve.atlas_open", icon="TPAINT_HLT")
        row.operator("inve.atlas_apply", icon="CHECKMARK")


class INVE_PT_slides(bpy.types.Panel):
    """Where an edit is likely to slide: the frames to check (and correct), from the engine's
    own error estimate near the visible layers."""

    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "INVE"
    bl_label = "Where Edits May Slide"
    bl_parent_id = "INVE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = strips.sequencer_scene(context)
        wish, answer = confidence.current(scene)
        if wish is None:
            layout.label(text="Train the strip and add a layer first", icon="INFO")
            return
        row = layout.row(align=True)
        row.operator("inve.next_slide", icon="NEXT_KEYFRAME")
        row.operator("inve.check_slides", text="", icon="FILE_REFRESH")
        if answer is None:
            if not confidence.FETCH.pending(*wish.cache_key):
                confidence.schedule(scene)
            layout.label(text="Checking...", icon="SORTTIME")
            return
        if answer.error:
            confidence.schedule(scene)  # asked again once the failure is RETRY_FAILED old
            _wrapped(layout, f"Checking failed: {answer.error}", icon="ERROR")
            return
        rep = answer.report
        ranges, hidden = confidence.strip_ranges(scene, answer)
        _wrapped(layout, rep.summary(), icon="ERROR" if rep.flagged else "CHECKMARK")
        col = layout.column(align=True)
        for r in ranges[:MAX_SLIDE_ROWS]:
            row = col.row(align=True)
            row.alert = r.scene_first <= scene.frame_current <= r.scene_last
            row.label(text=r.line(), icon="DOT")
        if len(ranges) > MAX_SLIDE_ROWS:
            col.label(text=f"... and {len(ranges) - MAX_SLIDE_ROWS} more run(s)")
        if hidden:
            col.label(text=f"{hidden} more outside the strip's trim")
        if rep.layers_without:
            _wrapped(layout, "Judged by the whole frame (no points to follow): " + ", ".join(rep.layers_without),
                     icon="INFO")


CLASSES = (INVE_PT_main, INVE_UL_layers, INVE_PT_layers, INVE_PT_slides, INVE_PT_tools)

"""Operators: Track points into Movie Clip markers; open the atlas for painting and apply it."""
from __future__ import annotations

import json
import os
from typing import Any

import bpy
from bpy.props import EnumProperty

from ..io import atlas_paint, edit_stack, tracking
from ..io.worker import Worker
from . import jobs
from . import sequencer as strips
from .context import (active_project, current_source_frame, engine_ready, movie_strip, poll_movie_strip, project_info, settings,
                      timing, workspace)
from .ops_base import EngineJobOperator, JobPlan
from .ops_edit import add_layer, collect_strokes


class INVE_OT_track(EngineJobOperator, bpy.types.Operator):
    """Track the points marked on this frame (the centre of each stroke) through the clip and
    put them into a Movie Clip as tracking markers"""

    bl_idname = "inve.track"
    bl_label = "Track Points"
    bl_options = {"REGISTER", "UNDO"}
    job_kind = "track"
    cancelled_text = "Tracking cancelled"
    failed_text = "Tracking failed"

    source: EnumProperty(name="Points From", items=[
        ("SETTINGS", "As in Panel", ""), ("ANNOTATION", "Annotations", ""), ("GPENCIL", "Grease Pencil", "")],
        default="SETTINGS")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        s = settings(context)
        strip = movie_strip(context)
        spec = engine_ready(self, context)
        if spec is None:
            return None
        info = project_info(self, context, strip, spec)
        if info is None:
            return None
        frame = current_source_frame(self, context, strip, info)
        if frame is None:
            return None
        found = collect_strokes(self, context, strip, s.stroke_source if self.source == "SETTINGS" else self.source)
        if found is None:
            return None
        centres = [(sum(p[0] for p in st.points) / len(st.points), sum(p[1] for p in st.points) / len(st.points))
                   for st in found]
        ws = workspace(context, strip)
        os.makedirs(ws.tracks_dir, exist_ok=True)
        points_path = os.path.join(ws.tracks_dir, "POINTS.json")
        tracks_path = os.path.join(ws.tracks_dir, "TRACKS.json")
        edit_stack.write_json_atomic(points_path, tracking.points_json(centres, frame))
        cmd = spec.command("track", ws.project, "--points", points_path, "-o", tracks_path, "--overwrite")
        title = f"Tracking {len(centres)} point(s)"
        return JobPlan(Worker(cmd, env=spec.env(), title=title), title,
                       {"strip": strip.name, "tracks": tracks_path,
                        "size": tuple(info.get("source_size") or strips.strip_source_size(strip)),
                        "timing": timing(context, strip)})

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        movie = next((s for s in strips.all_strips(scene) if s.name == job.context_data["strip"]), None) if scene else None
        if movie is None:
            return "Tracked, but the movie strip is gone"
        tracks = tracking.load_tracks(job.context_data["tracks"])
        clip = bpy.data.movieclips.load(bpy.path.abspath(movie.filepath), check_existing=True)
        t: strips.StripTiming = job.context_data["timing"]
        # clip frame c shows at scene frame frame_start + c - 1: line the clip up with the strip
        clip.frame_start = int(round(t.frame_start)) - t.anim_offset
        names = tracking.apply_tracks(clip, tracks, job.context_data["size"])
        if jobs.interactive():
            bpy.ops.ed.undo_push(message="INVE Track")
        return f"{len(names)} track(s) in Movie Clip '{clip.name}'"


class INVE_OT_atlas_open(EngineJobOperator, bpy.types.Operator):
    """Write the atlas images of the project and open them for Texture Paint"""

    bl_idname = "inve.atlas_open"
    bl_label = "Open Atlas for Painting"
    bl_options = {"REGISTER", "UNDO"}
    job_kind = "atlas"
    failed_text = "Writing the atlas failed"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        strip = movie_strip(context)
        spec = engine_ready(self, context)
        if spec is None:
            return None
        if project_info(self, context, strip, spec) is None:
            return None
        ws = workspace(context, strip)
        worker = Worker(spec.command("atlas", ws.project, "-o", ws.atlas), env=spec.env(), title="Writing atlas")
        return JobPlan(worker, "Writing atlas", {"strip": strip.name, "folder": ws.atlas})

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        images = atlas_paint.open_atlas_images(bpy.data, job.context_data["folder"], job.context_data["strip"])
        if not images:
            msg = f"The engine wrote no atlas images into {job.context_data['folder']}"
            job.state.ok, job.state.error = False, msg
            return msg
        if jobs.interactive():
            _show_in_image_editor(images[0])
        return f"Opened {', '.join(im.name for im in images)}: paint, then Apply Painted Atlas"


def _show_in_image_editor(image: bpy.types.Image) -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                area.spaces.active.ui_mode = "PAINT"
                return


class INVE_OT_atlas_apply(bpy.types.Operator):
    """Save the painted atlas images and add (or update) them as atlas layers"""

    bl_idname = "inve.atlas_apply"
    bl_label = "Apply Painted Atlas"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not poll_movie_strip(cls, context):
            return False
        if not atlas_paint.atlas_images(bpy.data, movie_strip(context).name):
            cls.poll_message_set("Open the atlas for painting first")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = movie_strip(context)
        owner = active_project(context)
        if owner is None:
            self.report({"ERROR"}, f"No trained project for '{strip.name}': press Train first")
            return {"CANCELLED"}
        ws = workspace(context, strip)
        done = []
        for img in atlas_paint.atlas_images(bpy.data, strip.name):
            layer = img[atlas_paint.ATLAS_TAG]
            path = atlas_paint.save_painted(img, ws.edits_dir)
            item = next((it for it in owner.layers if it.kind == "atlas" and it.attach == layer), None)
            if item is None:
                item = add_layer(context, "atlas", {"type": "atlas", "layer": layer}, f"Atlas {layer}", image=path)
            item.image = path
            item.data = json.dumps({"layer": layer})
            done.append(layer)
        self.report({"INFO"}, f"Atlas layer(s) {', '.join(done)} saved: Propagate to see them")
        return {"FINISHED"}


CLASSES = (INVE_OT_track, INVE_OT_atlas_open, INVE_OT_atlas_apply)

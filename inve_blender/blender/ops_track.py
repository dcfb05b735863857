"""Operators: Track points into Movie Clip markers, Apply Corrections (markers moved by hand
teach the engine), open the atlas for painting and apply it.

Track and Open Atlas are requests to the engine service (the project is warm there already);
Apply Corrections runs ``inve correct`` as its own process (it fine-tunes the networks under
the project lock, minutes of work), then tracks again and re-propagates through the service.
"""
from __future__ import annotations

import json
import os
from typing import Any

import bpy
from bpy.props import EnumProperty

from ..io import atlas_paint, corrections, edit_stack, tracking
from ..io.jobs import Job
from ..io.worker import Worker
from . import engine_jobs, jobs, service
from . import sequencer as strips
from .context import (active_project, movie_strip, poll_movie_strip, settings, strip_project, strip_target, timing,
                      workspace)
from .ops_base import EngineJobOperator, JobPlan
from .ops_edit import add_layer, collect_strokes

POINTS_FILE, TRACKS_FILE, CORRECTIONS_FILE = "POINTS.json", "TRACKS.json", "CORRECTIONS.json"


def tracked_clip(strip: Any) -> Any:
    """The Movie Clip of ``strip``'s file that holds the add-on's tracks (None: not tracked yet)."""
    if strip is None:
        return None
    path = os.path.normpath(strips.abs_path(strip.filepath))
    for clip in bpy.data.movieclips:
        if os.path.normpath(bpy.path.abspath(clip.filepath)) == path and any(
                t.name.startswith(tracking.TRACK_PREFIX) for t in clip.tracking.tracks):
            return clip
    return None


def track_task(project: str, points_doc: dict[str, Any], title: str) -> Any:
    """The engine service's ``track`` of POINTS.json ``points_doc`` in ``project``."""
    return service.task("track", {"project": project, "points": points_doc}, title)


def apply_track_result(job: jobs.Job, scene: Any) -> str:
    """A ``track`` request ended well: keep its TRACKS.json (Apply Corrections compares the
    markers with it) and put the tracks into the strip's Movie Clip, lined up with the strip."""
    d = job.context_data
    movie = next((s for s in strips.movie_strips(scene) if s.get(strips.MOVIE_ID) == d["movie_id"]), None) \
        if scene is not None else None
    if movie is None:
        return "Tracked, but the movie strip is gone"
    doc = job.state.result.get("tracks") or {}
    tracks = tracking.parse_tracks(doc)
    edit_stack.write_json_atomic(d["tracks"], doc)
    clip = bpy.data.movieclips.load(bpy.path.abspath(movie.filepath), check_existing=True)
    t: strips.StripTiming = d["timing"]
    # clip frame c shows at scene frame frame_start + c - 1: line the clip up with the strip
    clip.frame_start = int(round(t.frame_start)) - t.anim_offset
    names = tracking.apply_tracks(clip, tracks, d["size"])
    if jobs.interactive():
        bpy.ops.ed.undo_push(message="INVE Track")
    return f"{len(names)} track(s) in Movie Clip '{clip.name}'"


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
        target = strip_target(self, context, need_frame=True)
        if target is None:
            return None
        strip, info, frame = target.strip, target.info, target.frame
        found = collect_strokes(self, context, strip, s.stroke_source if self.source == "SETTINGS" else self.source)
        if found is None:
            return None
        centres = [(sum(p[0] for p in st.points) / len(st.points), sum(p[1] for p in st.points) / len(st.points))
                   for st in found]
        ws = workspace(context, strip)
        points = tracking.points_json(centres, frame)
        # kept: Apply Corrections tracks the same points again once the engine learned
        edit_stack.write_json_atomic(os.path.join(ws.tracks_dir, POINTS_FILE), points)
        strips.ensure_strip_ids(strips.sequencer_scene(context))
        title = f"Tracking {len(centres)} point(s)"
        return JobPlan(track_task(ws.project, points, title), title, track_data(context, strip, info, ws.tracks_dir))

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        return apply_track_result(job, scene)


def track_data(context: bpy.types.Context, strip: Any, info: dict[str, Any], tracks_dir: str) -> dict[str, Any]:
    """What applying a ``track`` result needs once the job ends (the strip by its id)."""
    return {"strip": strip.name, "movie_id": strip.get(strips.MOVIE_ID, ""),
            "tracks": os.path.join(tracks_dir, TRACKS_FILE),
            "size": tuple(info.get("source_size") or strips.strip_source_size(strip)),
            "timing": timing(context, strip)}


class INVE_OT_apply_corrections(EngineJobOperator, bpy.types.Operator):
    """Teach the engine the positions of the tracking markers you moved in the Movie Clip editor:
    it fine-tunes the project with them (in the background), tracks again and re-propagates"""

    bl_idname = "inve.apply_corrections"
    bl_label = "Apply Corrections"
    bl_options = {"REGISTER"}
    job_kind = "correct"
    cancelled_text = "Correction cancelled: the project is as it was"
    failed_text = "Correction failed"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not poll_movie_strip(cls, context):
            return False
        if tracked_clip(movie_strip(context)) is None:
            cls.poll_message_set("Track points first, then move their markers in the Movie Clip editor")
            return False
        return True

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        target = strip_target(self, context)
        if target is None:
            return None
        strip, spec, info = target.strip, target.spec, target.info
        ws = workspace(context, strip)
        tracks_path = os.path.join(ws.tracks_dir, TRACKS_FILE)
        points_path = os.path.join(ws.tracks_dir, POINTS_FILE)
        clip = tracked_clip(strip)
        try:
            with open(tracks_path, encoding="utf-8") as fh:
                engine_tracks = json.load(fh)
            with open(points_path, encoding="utf-8") as fh:
                points = json.load(fh)
            size = tuple(info.get("source_size") or strips.strip_source_size(strip))
            doc = corrections.corrections_from_markers(
                engine_tracks, corrections.read_markers(clip.tracking.tracks, tracking.TRACK_PREFIX), size)
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            self.report({"ERROR"}, f"Cannot read the tracks of '{strip.name}' ({exc}): Track Points again")
            return None
        if not doc["tracks"]:
            self.report({"ERROR"}, f"No marker of Movie Clip '{clip.name}' was moved: drag the markers where the "
                                   "point really is on the frames it slides, then Apply Corrections")
            return None
        path = os.path.join(ws.tracks_dir, CORRECTIONS_FILE)
        edit_stack.write_json_atomic(path, doc)
        n_keys = sum(len(t["keys"]) for t in doc["tracks"])
        minutes = settings(context).correct_minutes
        cmd = spec.command("correct", ws.project, "--corrections", path, "--minutes", f"{minutes:g}",
                           "--progress", "json")
        strips.ensure_strip_ids(strips.sequencer_scene(context))
        title = f"Correcting {len(doc['tracks'])} track(s)"
        item, _ = strip_project(context, strip)
        data = {**track_data(context, strip, info, ws.tracks_dir), "project": ws.project, "points": points,
                "corrections": path, "keys": n_keys, "spec": spec,
                "record": (item.fingerprint, item.frame_start, item.frame_end)}
        return JobPlan(Worker(cmd, env=spec.env(), title=title),
                       f"{title} with {n_keys} confirmed position(s), {minutes:g} min", data)

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        r = job.state.result
        job.then = _read_corrected
        before, after = r.get("error_before_px"), r.get("error_after_px")
        said = (f": the confirmed positions were {before:.2f} px off, now {after:.2f} px (median)"
                if isinstance(before, (int, float)) and isinstance(after, (int, float)) else "")
        return f"Corrected '{job.context_data['strip']}'{said}"


def _read_corrected(job: Job) -> Job:
    """After a correction: the engine's ``info`` of the project (new metrics for the panel;
    the service reopens the re-baked project), then :func:`_track_again`."""
    d = job.context_data
    nxt = engine_jobs.info_job(job.scene_name, d["record"], d["project"], d["spec"])
    nxt.context_data = dict(d)
    nxt.then = _track_again
    return nxt


def _track_again(job: Job) -> Job:
    """After a correction: the engine's tracks of the same points, into the clip (the moved
    markers now agree with it), then Propagate again so the edits follow."""
    d = dict(job.context_data)

    def done(j: Job) -> None:
        st = j.state
        prev = j.previous.outcome if j.previous is not None else ""
        scene = bpy.data.scenes.get(j.scene_name)
        if not st.ok:
            j.outcome = f"{prev}; tracking again failed: {st.error}"
            return
        j.outcome = f"{prev}; {apply_track_result(j, scene)}"
        j.then = _propagate_again

    return Job("track", track_task(d["project"], d["points"], "Tracking again"), scene_name=job.scene_name,
               on_done=done, context_data=d)


def _propagate_again(job: Job) -> None:
    """Re-propagate the corrected project's layers (when the strip is still the active one
    and has visible layers); the Propagate operator is the one place that knows how."""
    scene = bpy.data.scenes.get(job.scene_name)
    movie = strips.active_strip(scene) if scene is not None else None
    if movie is None or movie.get(strips.MOVIE_ID) != job.context_data["movie_id"]:
        job.outcome += "; Propagate to see the edits follow"
        return None
    item = active_project(bpy.context)
    if item is None or not any(it.visible for it in item.layers):
        return None
    try:
        bpy.ops.inve.propagate()
    except RuntimeError as exc:  # its poll said no (a job runs, ...): say so, nothing is lost
        job.outcome += f"; Propagate to see the edits follow ({str(exc).splitlines()[-1]})"
        return None
    started = jobs.last()
    if started is not None and started is not job:
        started.previous = job
        # blocking (background Blender): it ended already; the panel shows both ends
        started.outcome = f"{job.outcome}; {started.outcome}" if started.state.finished else job.outcome
    return None


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
        target = strip_target(self, context)
        if target is None:
            return None
        strip = target.strip
        ws = workspace(context, strip)
        task = service.task("atlas", {"project": ws.project, "output": ws.atlas}, "Writing atlas")
        # a segmented project: open the atlases of the segment under the playhead
        source = timing(context, strip).scene_to_source(strips.sequencer_scene(context).frame_current)
        return JobPlan(task, "Writing atlas", {"strip": strip.name, "folder": ws.atlas, "source_frame": source})

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        images = atlas_paint.open_atlas_images(bpy.data, job.context_data["folder"], job.context_data["strip"],
                                               job.context_data.get("source_frame"))
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
            segment = str(img.get(atlas_paint.SEGMENT_TAG) or "")  # one layer per painted segment atlas
            item = next((it for it in owner.layers if it.kind == "atlas" and it.attach == layer
                         and (not segment or os.path.normpath(it.image) == os.path.normpath(path))), None)
            if item is None:
                item = add_layer(context, "atlas", {"type": "atlas", "layer": layer},
                                 f"Atlas {layer} {segment}".strip(), image=path)
            item.image = path
            item.data = json.dumps({"layer": layer})
            done.append(layer)
        self.report({"INFO"}, f"Atlas layer(s) {', '.join(done)} saved: Propagate to see them")
        return {"FINISHED"}


CLASSES = (INVE_OT_track, INVE_OT_apply_corrections, INVE_OT_atlas_open, INVE_OT_atlas_apply)

"""Shared pieces of the operators: where a strip's project lives, engine checks, project info."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import bpy

from ..io import edit_stack, engine_env, projects, results
from ..io.preview import stack_key
from ..io.projects import Workspace
from . import engine_jobs, jobs
from . import sequencer as strips
from .preferences import engine_spec


def settings(context: bpy.types.Context) -> Any:
    return strips.sequencer_scene(context).inve


def source_key(context: bpy.types.Context, strip: Any, exact: bool = False,
               load: bool = True) -> tuple[str, tuple[int, int]]:
    """What identifies the strip's project: its source's content fingerprint and the source
    frames it shows. Raises OSError/ValueError (missing file, a strip that shows nothing).

    ``exact`` also handles a clip Blender retimed to another frame rate (it may load a Movie
    Clip to learn the file's length: not while drawing, ``load=False`` then uses what is
    known); lookups use the strip's own timing.
    """
    fp = projects.fingerprint(strips.abs_path(strip.filepath), engine_env.engine_root())
    t = timing(context, strip, load=load) if exact else strips.strip_timing(strip)
    return fp, t.visible_source_range()


def project_refs(s: Any) -> list[projects.ProjectRef]:
    return [projects.ProjectRef(p.fingerprint, p.frame_start, p.frame_end, p.path) for p in s.projects]


def strip_project(context: bpy.types.Context, strip: Any) -> tuple[Any, projects.Match | None]:
    """The .blend's project record for ``strip`` (or None) and how it matches."""
    if strip is None:
        return None, None
    s = settings(context)
    try:
        fp, frames = source_key(context, strip)
    except (OSError, ValueError):
        return None, None
    m = projects.find_project(project_refs(s), fp, frames)
    return (s.projects[m.index], m) if m is not None else (None, None)


def _has_project(folder: str) -> bool:
    return projects.is_project_folder(os.path.join(folder, "project"))


def project_folder(item: Any, update: bool = True) -> str | None:
    """The project record's workspace folder as it is now (None: moved away, use Relink).

    Found through the absolute path after a Save As into another folder: the stored path
    is then made relative to the new .blend again (not while drawing: ``update=False``).
    """
    found = projects.resolve_folder(item.path, item.abs_path, bpy.path.abspath, _has_project)
    if update and found is not None and os.path.normpath(bpy.path.abspath(item.path)) != found:
        set_folder(item, found)
    return found


def started_folder(item: Any, update: bool = True) -> str | None:
    """The recorded folder when it still exists, trained or not (a run cancelled before the
    engine wrote project.json resumes there); None when it is gone (moved: Relink).
    ``update=False`` while drawing (see :func:`project_folder`)."""
    found = project_folder(item, update=update)
    if found is not None:
        return found
    for cand in (bpy.path.abspath(item.path), item.abs_path):
        if cand and os.path.isdir(cand):
            return os.path.normpath(cand)
    return None


def set_folder(item: Any, folder: str) -> None:
    blend_dir = os.path.dirname(bpy.data.filepath) if bpy.data.is_saved else None
    folder = os.path.normpath(folder)
    item.path = projects.relative_to_blend(folder, blend_dir)
    item.abs_path = folder


def new_workspace_path(context: bpy.types.Context, strip: Any, fp: str, frames: tuple[int, int]) -> tuple[str, bool]:
    """Folder for a new project of ``strip`` and whether it is temporary (unsaved .blend)."""
    s = settings(context)
    name = projects.folder_name(strips.abs_path(strip.filepath), fp, frames)
    if s.project_dir.strip():
        return os.path.normpath(os.path.join(bpy.path.abspath(s.project_dir), name)), False
    if bpy.data.is_saved:
        return os.path.normpath(bpy.path.abspath(f"//inve/{name}")), False
    return os.path.join(tempfile.gettempdir(), "inve_unsaved", name), True


def workspace_path(context: bpy.types.Context, strip: Any, update: bool = True) -> tuple[str, bool]:
    """Absolute workspace folder for ``strip``'s project (existing, else where a new one goes)
    and whether it is a temporary one (unsaved .blend)."""
    item, _ = strip_project(context, strip)
    if item is not None:
        folder = project_folder(item, update=update)
        if folder is not None:
            return folder, folder.startswith(os.path.join(tempfile.gettempdir(), "inve_unsaved"))
    fp, frames = source_key(context, strip)
    return new_workspace_path(context, strip, fp, frames)


def workspace(context: bpy.types.Context, strip: Any) -> Workspace:
    return Workspace(workspace_path(context, strip)[0])


def record_project(context: bpy.types.Context, strip: Any, base: str, frames: tuple[int, int]) -> Any:
    """Create (or update) the .blend's record of the project in ``base`` trained on ``frames``."""
    s = settings(context)
    fp, _ = source_key(context, strip)
    item = next((p for p in s.projects if p.fingerprint == fp and (p.frame_start, p.frame_end) == tuple(frames)),
                None)
    if item is None:
        item = s.projects.add()
        item.fingerprint, item.frame_start, item.frame_end = fp, int(frames[0]), int(frames[1])
    item.source_name = os.path.basename(strips.abs_path(strip.filepath))
    set_folder(item, base)
    return item


def scene_strip_project(scene: Any, strip: Any) -> Any:
    """:func:`strip_project` from a scene alone (handlers): the strip's own timing, no retiming."""
    try:
        fp = projects.fingerprint(strips.abs_path(strip.filepath), engine_env.engine_root())
        frames = strips.strip_timing(strip).visible_source_range()
    except (OSError, ValueError):
        return None
    m = projects.find_project(project_refs(scene.inve), fp, frames)
    return scene.inve.projects[m.index] if m is not None else None


def propagated(scene: Any, movie: Any) -> tuple[str, list[int], bool] | None:
    """(frames folder, source frames, stale) of the movie's project once Propagate wrote into
    it; stale: the frames show another stack than the layer list (Undo, an unpropagated change)."""
    item = scene_strip_project(scene, movie)
    if item is None:
        return None
    folder = project_folder(item, update=False)
    if folder is None:
        return None
    ws = Workspace(folder)
    try:
        _, key = stack_of(item, ws)
    except (ValueError, FileNotFoundError):
        key = ""
    got = results.lookup(ws.frames, key)
    if got is None:
        return None
    return got.folder, list(range(item.frame_start, item.frame_end)), got.stale


def follow(scene: Any) -> list[str]:
    """Result strips follow their movie strips (move, trim, cut, duplicate)."""
    if scene is None or scene.sequence_editor is None:
        return []
    return strips.follow_movies(scene, lambda m: propagated(scene, m))


def active_project(context: bpy.types.Context) -> Any:
    """The project record of the active movie strip (whose layers the panel lists), or None."""
    scene = strips.sequencer_scene(context)
    if strips.movie_strip_problem(scene):
        return None
    return strip_project(context, strips.active_strip(scene))[0]


def movie_strip(context: bpy.types.Context) -> Any:
    scene = strips.sequencer_scene(context)
    return None if strips.movie_strip_problem(scene) else strips.active_strip(scene)


def poll_movie_strip(cls: Any, context: bpy.types.Context, need_idle: bool = True) -> bool:
    """poll(): a usable active movie strip (and no job running), else say why."""
    if need_idle and jobs.busy():
        cls.poll_message_set("An INVE job is running: wait for it or cancel it")
        return False
    problem = strips.movie_strip_problem(strips.sequencer_scene(context))
    if problem:
        cls.poll_message_set(problem)
        return False
    return True


#: frames per movie file (path, size, mtime): opening it as a Movie Clip costs tens of ms (more
#: at 1080p) and Propagate, the preview and the strip handlers ask again and again
_FRAME_COUNTS: dict[tuple, int] = {}


def content_frame_count(strip: Any, scene: Any, load: bool = True) -> int | None:
    """Frames in the strip's file after the hard trims, when Blender may have retimed it.

    Only needed when the clip's frame rate differs from the scene's: then a Movie Clip
    datablock tells the file's true length (and is removed again if we added it). Without
    ``load`` (a panel drawing, where data cannot be added) only a count already known is used.
    """
    if abs(float(strip.fps) - strips.scene_fps(scene)) < 1e-3 or strip.fps <= 0:
        return None
    path = bpy.path.abspath(strip.filepath)
    try:
        st = os.stat(path)
        key: tuple | None = (os.path.normcase(os.path.abspath(path)), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    n = _FRAME_COUNTS.get(key) if key is not None else None
    if n is None and not load:
        return None
    if n is None:
        existing = {c.name for c in bpy.data.movieclips}
        clip = bpy.data.movieclips.load(path, check_existing=True)
        n = int(clip.frame_duration)
        if clip.name not in existing and clip.users == 0:
            bpy.data.movieclips.remove(clip)
        if key is not None:
            _FRAME_COUNTS[key] = n
    ao = int(getattr(strip, "animation_offset_start", 0)) + int(getattr(strip, "animation_offset_end", 0))
    return max(n - ao, 0) or None


def timing(context: bpy.types.Context, strip: Any, load: bool = True) -> strips.StripTiming:
    scene = strips.sequencer_scene(context)
    return strips.strip_timing(strip, content_frame_count(strip, scene, load))


def engine_ready(op: Any, context: bpy.types.Context) -> engine_env.EngineSpec | None:
    """The engine spec if its Python is known to work; otherwise report why and None.

    Interactive Blender never waits here: an unchecked (or failed: the user may have fixed
    it) interpreter is checked by a background job, and the user presses again when the panel
    says it is ready. Background Blender (scripts, tests) checks right away.
    """
    spec = engine_spec(context)
    status = engine_env.cached_status()
    if status is not None and status.ok and status.spec == spec:
        return spec
    if not jobs.interactive():
        status = engine_env.check_cached(spec)
        if not status.ok:
            op.report({"ERROR"}, status.message)
            return None
        return spec
    if jobs.busy():
        op.report({"WARNING"}, "An INVE job is running: wait for it or cancel it")
        return None
    jobs.start(engine_jobs.check_job(spec))
    op.report({"INFO"}, "Checking the engine's Python first (a few seconds): press again when the panel "
                        "says it is ready")
    return None


def project_info(op: Any, context: bpy.types.Context, strip: Any, spec: engine_env.EngineSpec,
                 refresh: bool = False) -> dict[str, Any] | None:
    """What the engine says about the strip's project (``info``, cached in its record);
    reports and returns None when there is no trained project for it. The add-on never reads
    project files itself; when nothing is cached, interactive Blender asks the engine in a
    background job (press again when it answered), background Blender waits for it."""
    item, match = strip_project(context, strip)
    if item is None:
        op.report({"ERROR"}, f"No trained project for the source of '{strip.name}' (these frames) yet: "
                             "press Train first")
        return None
    folder = project_folder(item)
    if folder is None:
        op.report({"ERROR"}, f"The project folder of '{strip.name}' was moved or deleted ({item.abs_path}): "
                             "use Relink Project to point at its new place")
        return None
    if not refresh and item.info_json:
        try:
            info = json.loads(item.info_json)
            if info.get("trained"):
                return info
        except json.JSONDecodeError:
            pass
    if jobs.busy():
        op.report({"WARNING"}, "An INVE job is running: wait for it or cancel it")
        return None
    job = engine_jobs.info_job(strips.sequencer_scene(context).name,
                               (item.fingerprint, item.frame_start, item.frame_end), Workspace(folder).project, spec)
    jobs.start(job)
    if not job.state.finished:
        op.report({"INFO"}, "Reading the project (engine): press again in a moment")
        return None
    if not job.state.ok:
        op.report({"ERROR"}, job.outcome)
        return None
    info = json.loads(item.info_json)
    if not info.get("trained"):
        op.report({"ERROR"}, f"The project of '{strip.name}' is not trained yet (was training cancelled?): "
                             "press Train to continue")
        return None
    return info


def current_source_frame(op: Any, context: bpy.types.Context, strip: Any, info: dict[str, Any]) -> int | None:
    """Source frame under the playhead, checked against the project's frames."""
    scene = strips.sequencer_scene(context)
    src = timing(context, strip).scene_to_source(scene.frame_current)
    if src is None:
        op.report({"ERROR"}, f"The strip '{strip.name}' shows nothing at frame {scene.frame_current}: "
                             "move the playhead onto it")
        return None
    frames = info.get("frames") or []
    if frames and src not in frames:
        op.report({"ERROR"}, f"Frame {scene.frame_current} shows source frame {src}, outside the trained "
                             f"frames {frames[0]}..{frames[-1]}")
        return None
    return src


@dataclass
class StripTarget:
    """What an operator on the active strip's project works with (see :func:`strip_target`)."""

    strip: Any
    spec: engine_env.EngineSpec
    info: dict[str, Any] | None = None  # the engine's ``info`` of the strip's trained project
    frame: int | None = None  # the source frame under the playhead


def strip_target(op: Any, context: bpy.types.Context, need_info: bool = True,
                 need_frame: bool = False) -> StripTarget | None:
    """The prelude of every operator on the active strip: the strip, a working engine and, as
    asked, its trained project's info and the source frame under the playhead (one of the
    project's frames). None after reporting why not (each step says what to do)."""
    strip = movie_strip(context)
    spec = engine_ready(op, context)
    if spec is None:
        return None
    target = StripTarget(strip, spec)
    if need_info or need_frame:
        target.info = project_info(op, context, strip, spec)
        if target.info is None:
            return None
    if need_frame:
        target.frame = current_source_frame(op, context, strip, target.info)
        if target.frame is None:
            return None
    return target


LAYER_FIELDS = ("name", "kind", "visible", "data", "image", "attach")


def copy_layers(src: Any, dst: Any) -> None:
    """Copy the edit layers of one project record to another (a larger project of the same source)."""
    for it in src.layers:
        new = dst.layers.add()
        for name in LAYER_FIELDS:
            setattr(new, name, getattr(it, name))
    dst.active_layer = src.active_layer


def stack_of(item: Any, ws: Workspace) -> tuple[dict[str, Any], str]:
    doc = edit_stack.build_edits(item.layers, ws.edits_dir, abspath=bpy.path.abspath)
    return doc, stack_key(doc)


def is_stale(item: Any, ws: Workspace) -> bool:
    """The propagated frames show another stack than the layer list (or there are none)."""
    try:
        _, key = stack_of(item, ws)
    except (ValueError, FileNotFoundError):
        return True
    got = results.lookup(ws.frames, key)
    return got is None or got.stale

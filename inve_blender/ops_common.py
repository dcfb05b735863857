"""Shared pieces of the operators: where a strip's project lives, engine checks, project info."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import bpy

from . import engine_env, jobs, strips
from .preferences import engine_spec
from .worker import EngineCallError, run_json


def settings(context: bpy.types.Context) -> Any:
    return strips.sequencer_scene(context).inve


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "strip"


@dataclass(frozen=True)
class Workspace:
    """Folders of one movie strip's INVE work (the engine's project is one of them)."""

    base: str

    @property
    def project(self) -> str:
        return os.path.join(self.base, "project")

    @property
    def edits_file(self) -> str:
        return os.path.join(self.base, "edits", "EDITS.json")

    @property
    def edits_dir(self) -> str:
        return os.path.join(self.base, "edits")

    @property
    def frames(self) -> str:
        return os.path.join(self.base, "frames")

    @property
    def atlas(self) -> str:
        return os.path.join(self.base, "atlas")

    @property
    def tracks_dir(self) -> str:
        return os.path.join(self.base, "tracks")


def workspace_path(context: bpy.types.Context, strip: Any) -> tuple[str, bool]:
    """Absolute folder for ``strip`` and whether it is a temporary one (unsaved .blend)."""
    s = settings(context)
    if s.project_dir.strip():
        return os.path.normpath(bpy.path.abspath(s.project_dir)), False
    if bpy.data.is_saved:
        return os.path.normpath(bpy.path.abspath(f"//inve/{safe_name(strip.name)}")), False
    return os.path.join(tempfile.gettempdir(), "inve_unsaved", safe_name(strip.name)), True


def workspace(context: bpy.types.Context, strip: Any) -> Workspace:
    return Workspace(workspace_path(context, strip)[0])


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


def content_frame_count(strip: Any, scene: Any) -> int | None:
    """Frames in the strip's file after the hard trims, when Blender may have retimed it.

    Only needed when the clip's frame rate differs from the scene's: then a Movie Clip
    datablock tells the file's true length (and is removed again if we added it).
    """
    if abs(float(strip.fps) - strips.scene_fps(scene)) < 1e-3 or strip.fps <= 0:
        return None
    path = bpy.path.abspath(strip.filepath)
    existing = {c.name for c in bpy.data.movieclips}
    clip = bpy.data.movieclips.load(path, check_existing=True)
    n = int(clip.frame_duration)
    if clip.name not in existing and clip.users == 0:
        bpy.data.movieclips.remove(clip)
    ao = int(getattr(strip, "animation_offset_start", 0)) + int(getattr(strip, "animation_offset_end", 0))
    return max(n - ao, 0) or None


def timing(context: bpy.types.Context, strip: Any) -> strips.StripTiming:
    scene = strips.sequencer_scene(context)
    return strips.strip_timing(strip, content_frame_count(strip, scene))


def engine_ready(op: Any, context: bpy.types.Context) -> engine_env.EngineSpec | None:
    """The engine spec if its Python works; otherwise report why (no traceback) and None."""
    spec = engine_spec(context)
    status = engine_env.check_cached(spec)
    if not status.ok:
        op.report({"ERROR"}, status.message)
        return None
    return spec


def project_info(op: Any, context: bpy.types.Context, strip: Any, spec: engine_env.EngineSpec,
                 refresh: bool = False) -> dict[str, Any] | None:
    """``inve info`` of the strip's project (cached in the scene); reports and returns None when
    there is no trained project."""
    s = settings(context)
    ws = workspace(context, strip)
    if not refresh and s.info_json and s.info_strip == strip.name:
        try:
            info = json.loads(s.info_json)
            if info.get("trained") and os.path.isdir(ws.project):
                return info
        except json.JSONDecodeError:
            pass
    if not os.path.isfile(os.path.join(ws.project, "project.json")):
        op.report({"ERROR"}, f"No trained project for '{strip.name}' yet: press Train first ({ws.project})")
        return None
    try:
        info = run_json(spec.command("info", ws.project), env=spec.env(), timeout=120)
    except EngineCallError as exc:
        op.report({"ERROR"}, f"Cannot read the project: {exc}")
        return None
    s.info_json = json.dumps(info)
    s.info_strip = strip.name
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

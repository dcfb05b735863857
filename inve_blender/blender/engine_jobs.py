"""Background jobs that ask the engine something: is its Python usable, what is in a project.

Both take seconds (the check imports torch; ``info`` starts the engine or waits for the
service), so neither runs on Blender's UI thread: they are jobs the UI only polls, and their
answers land in caches the panel reads (the engine status; a project record's ``info_json``).
"""
from __future__ import annotations

import json
from typing import Any

import bpy

from ..io import engine_env
from ..io.jobs import Job, ThreadTask
from . import service


def check_job(spec: engine_env.EngineSpec) -> Job:
    def run() -> dict[str, Any]:
        status = engine_env.check(spec)
        engine_env.set_status(status)  # a plain variable: safe from the thread
        return {"ok": status.ok, "message": status.message}

    def done(job: Job) -> None:
        st = job.state
        job.outcome = st.result.get("message", "") if st.ok else f"Checking the engine failed: {st.error}"
        if st.ok and not st.result.get("ok"):
            st.ok, st.error = False, job.outcome

    return Job("check", ThreadTask(run, title="Checking the engine"), on_done=done)


def info_job(scene_name: str, key: tuple[str, int, int], project: str, spec: engine_env.EngineSpec) -> Job:
    """The engine service's ``info`` of ``project`` (which also opens it there, warm for the
    preview) into the record ``key`` = (fingerprint, start, end) of the scene."""
    def done(job: Job) -> None:
        st = job.state
        if not st.ok:
            job.outcome = f"Reading the project failed: {st.error}"
            return
        info = st.result
        store_info(scene_name, key, info)
        if info.get("trained"):
            service.request("open", project=project)  # warm in the service for preview and Propagate
        said = (f"project of {len(info.get('frames') or [])} frames, "
                + ("trained" if info.get("trained") else "not trained yet"))
        prev = job.previous.outcome if job.previous is not None else ""
        job.outcome = f"{prev}; {said}" if prev else said[:1].upper() + said[1:]

    task = service.task("info", {"project": project}, "Reading the project")
    return Job("info", task, scene_name=scene_name, on_done=done)


def store_info(scene_name: str, key: tuple[str, int, int], info: dict[str, Any]) -> None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    for item in scene.inve.projects:
        if (item.fingerprint, item.frame_start, item.frame_end) == tuple(key):
            item.info_json = json.dumps(info)

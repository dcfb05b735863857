"""Train All Strips: the visible movie strips as one ``inve batch`` (thin glue).

What is decided (shot names, SHOTS.json, the Ray/local choice, events -> per-strip states)
is in :mod:`inve_blender.io.batch`, tested without Blender. Here: which strips, where each
project goes (:func:`ops_train.train_target`, the single-strip Train's own rule), the worker
process through :class:`~.ops_base.EngineJobOperator`, and reading the trained projects back.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import bpy

from ..io import batch as batch_io
from ..io import engine_env
from ..io.jobs import Job, ThreadTask
from ..io.projects import Workspace
from ..io.worker import EngineCallError, run_json
from . import engine_jobs, jobs
from . import sequencer as strips
from .context import engine_ready, settings, source_key
from .ops_base import EngineJobOperator, JobPlan
from .ops_train import claim_record, clear_partial_project, train_target
from .preferences import prefs

_NOTICES: set[str] = set()  # said once per session (the local fallback without Ray)


def visible_movie_strips(scene: Any) -> list[Any]:
    """The sequencer's top-level movie strips that play: not muted, not on a muted channel;
    in time order."""
    se = scene.sequence_editor if scene is not None else None
    if se is None:
        return []
    channels = getattr(se, "channels", None)

    def channel_muted(n: int) -> bool:
        try:
            return bool(channels is not None and channels[n].mute)
        except (IndexError, KeyError, TypeError):
            return False

    found = [s for s in strips.strip_collection(scene) if s.type == "MOVIE" and not s.mute
             and not channel_muted(s.channel)]
    return sorted(found, key=lambda s: (s.frame_final_start, s.channel, s.name))


def _where(args: list[str]) -> str:
    if "--local" in args:
        return "one after another on this computer"
    if "--address" in args:
        return f"on the Ray cluster at {args[args.index('--address') + 1]}"
    return "on a local Ray cluster"


def _read_projects(job: Job) -> Job | None:
    """After the batch: what the engine says about every trained project (``inve info``), so
    preview, Propagate and the panel see them trained; in the background, like Train's read."""
    d = job.context_data
    tracker: batch_io.BatchTracker = job.worker.tracker
    todo = {n: d["projects"][n] for n, sh in tracker.shots.items() if sh.state == "done"}
    if not todo:
        return None
    spec: engine_env.EngineSpec = d["spec"]

    def run() -> dict[str, Any]:
        infos, errors = {}, []
        for name, (_, _, project) in todo.items():
            try:
                infos[name] = run_json(spec.command("info", project), env=spec.env())
            except EngineCallError as exc:
                errors.append(f"{name}: {exc}")
        return {"infos": infos, "errors": errors}

    def done(info_job: Job) -> None:
        st = info_job.state
        prev = info_job.previous.outcome if info_job.previous is not None else ""
        if not st.ok:
            info_job.outcome = f"{prev}; reading the projects failed: {st.error}"
            return
        for name, info in st.result.get("infos", {}).items():
            fp, frames, _ = todo[name]
            engine_jobs.store_info(job.scene_name, (fp, frames[0], frames[1]), info)
        errors = st.result.get("errors") or []
        info_job.outcome = prev + (f"; reading {errors[0]}" if errors else "")

    return Job("info", ThreadTask(run, title="Reading the trained projects"), scene_name=job.scene_name,
               on_done=done, context_data={"batch": job})


class INVE_OT_train_all(EngineJobOperator, bpy.types.Operator):
    """Train every visible (unmuted) movie strip as one batch: on Ray (a local cluster, or the one
    set in the add-on preferences), each strip's project where Train would put it"""

    bl_idname = "inve.train_all"
    bl_label = "Train All Strips"
    bl_options = {"REGISTER"}
    job_kind = "train_all"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if jobs.busy():
            cls.poll_message_set("An INVE job is running: wait for it or cancel it")
            return False
        if not visible_movie_strips(strips.sequencer_scene(context)):
            cls.poll_message_set("No visible (unmuted) movie strips in the sequencer")
            return False
        return True

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        scene = strips.sequencer_scene(context)
        candidates = visible_movie_strips(scene)
        spec = engine_ready(self, context)
        if spec is None:
            return None
        s = settings(context)
        shots: list[batch_io.StripShot] = []
        targets = []
        skipped: list[str] = []
        for strip in candidates:
            path = strips.abs_path(strip.filepath)
            if not os.path.isfile(path):
                skipped.append(f"'{strip.name}': its movie file is missing ({path})")
                continue
            try:
                fp, frames = source_key(context, strip, exact=True)
            except (OSError, ValueError) as exc:
                skipped.append(f"'{strip.name}': {exc}")
                continue
            # a strip whose trim was widened resumes its project with the wider range (as Train
            # New Frames does: the engine adds segments for the new frames), not a new project
            target = train_target(self, context, strip, fp, frames, extend=True)
            if target is None:  # reported (a moved project: Relink)
                skipped.append(f"'{strip.name}': its project folder was moved")
                continue
            base, frames, temporary, item, _ = target
            targets.append((strip, fp, base, tuple(frames), temporary, item))
            shots.append(batch_io.StripShot(strip.name, path, tuple(frames), Workspace(base).project))
        for line in skipped:
            self.report({"WARNING"}, f"Not trained: {line}")
        if not shots:
            self.report({"ERROR"}, "Nothing to train: " + "; ".join(skipped))
            return None
        plan = batch_io.plan(shots)
        projects: dict[str, tuple[str, tuple[int, int], str]] = {}
        for strip, fp, base, frames, temporary, item in targets:
            project = Workspace(base).project
            if clear_partial_project(project):
                self.report({"INFO"}, f"'{strip.name}': removed the unfinished project of a run cancelled before "
                                      "it saved anything")
            name = plan.shot_of(strip.name) or ""
            frames = plan.shots[plan.names.index(name)].frames if name else frames  # all its strips' frames
            record = claim_record(context, strip, base, frames, item)
            record.info_json = ""
            os.makedirs(base, exist_ok=True)
            projects.setdefault(name, (fp, tuple(frames), project))
        if any(t[4] for t in targets):
            self.report({"WARNING"}, "The .blend is not saved: projects go to a temporary folder; save the file "
                                     "first to keep them next to it")
        doc = batch_io.shots_doc(plan, s.working_side(), s.minutes, s.device, s.single_layer)
        fd, shots_file = tempfile.mkstemp(prefix="inve_train_all_", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        status = engine_env.cached_status()
        p = prefs(context)
        args, notice = batch_io.batch_args(shots_file, os.path.dirname(targets[0][2]),
                                           p.ray_address if p is not None else "", bool(status and status.ray))
        if notice and notice not in _NOTICES:
            _NOTICES.add(notice)
            self.report({"WARNING"}, notice)
        n = len(plan.names)
        worker = batch_io.BatchWorker(spec.command("batch", *args), plan.names, env=spec.env(),
                                      title=f"Training {n} project{'s' if n > 1 else ''}")
        return JobPlan(worker, f"Training {len(shots)} strip{'s' if len(shots) > 1 else ''} as one batch "
                               f"({n} project{'s' if n > 1 else ''}) {_where(args)}",
                       {"strips": plan.strips, "projects": projects, "spec": spec, "shots_file": shots_file})

    @classmethod
    def _done(cls, job: Job) -> None:
        job.outcome = batch_io.finished_line(job.worker.tracker, job.state)
        save_states(bpy.data.scenes.get(job.scene_name), job)
        job.then = _read_projects
        try:
            os.remove(job.context_data["shots_file"])
        except OSError:
            pass


def save_states(scene: Any, job: Job) -> None:
    """Keep each strip's end of the batch in the scene (saved with the .blend)."""
    if scene is None:
        return
    s = scene.inve
    s.batch_strips.clear()
    for strip, state, line in batch_io.strip_rows(job.worker.tracker, job.context_data.get("strips", {})):
        row = s.batch_strips.add()
        row.strip, row.state, row.line = strip, state, line
    s.batch_outcome = job.outcome


def batch_job() -> Job | None:
    """The latest Train All job (also while its projects are read back), for the panel."""
    job = jobs.last()
    while job is not None and job.kind != "train_all":
        job = job.previous
    return job


CLASSES = (INVE_OT_train_all,)

"""Operators: Train, Cancel, project info, engine check and dependency installer."""
from __future__ import annotations

import json
import os

import bpy
from bpy.props import BoolProperty

from . import engine_env, jobs, strips
from .ops_common import (engine_ready, movie_strip, poll_movie_strip, project_info, settings, timing,
                         workspace, workspace_path)
from .preferences import deps_dir, engine_spec
from .worker import EngineCallError, Worker, run_json


def train_args(video: str, project: str, frames: tuple[int, int], max_side: int, minutes: float,
               device: str, single_layer: bool, resume: bool) -> list[str]:
    """Arguments of ``inve train`` for a strip (the CLI contract of ARCHITECTURE.md)."""
    args = [video, "-o", project, "--frames", f"{frames[0]}:{frames[1]}", "--max-side", str(int(max_side)),
            "--minutes", f"{float(minutes):g}", "--device", device, "--progress", "json"]
    if single_layer:
        args.append("--single-layer")
    if resume:
        args.append("--resume")
    return args


def finished_training_minutes(project: str) -> float:
    """Training time of a project whose training finished (it has metrics.json), else 0.

    ``inve train --resume --minutes M`` trains up to M minutes in total. A run cancelled
    before it finished continues to the panel's budget; pressing Train on a finished
    project should train the panel's minutes *more*, so the add-on adds what was done.
    """
    try:
        with open(os.path.join(project, "metrics.json"), encoding="utf-8") as fh:
            return max(0.0, float(json.load(fh).get("train_seconds", 0.0)) / 60.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


# What the engine writes into a project folder before project.json exists (a run cancelled
# while loading or preprocessing); dot-files are its temporary files of atomic writes.
ENGINE_PARTIALS = {"cache", "frames.npy", "checkpoint.pt", "maps", "maps.npz", "metrics.json", "atlas_bg.png",
                   "atlas_fg.png"}


def clear_partial_project(path: str) -> bool:
    """Remove the add-on's own project folder when a cancelled run left only partial engine
    files (no project.json): the engine refuses such a folder, and nothing in it is resumable.
    Anything unexpected inside keeps the folder untouched."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "project.json")):
        return False
    entries = os.listdir(path)
    if not entries or any(e not in ENGINE_PARTIALS and not e.startswith(".") for e in entries):
        return False
    import shutil

    shutil.rmtree(path)
    return True


class INVE_OT_train(bpy.types.Operator):
    """Fit the neural atlases to the active movie strip's visible frames (runs in the background)"""

    bl_idname = "inve.train"
    bl_label = "Train"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = movie_strip(context)
        spec = engine_ready(self, context)
        if spec is None:
            return {"CANCELLED"}
        s = settings(context)
        base, temporary = workspace_path(context, strip)
        ws = workspace(context, strip)
        if temporary:
            self.report({"WARNING"}, f"The .blend is not saved: the project goes to a temporary folder ({base}); "
                                     "save the file first to keep it next to the .blend")
        try:
            frames = timing(context, strip).visible_source_range()
        except ValueError as exc:
            self.report({"ERROR"}, f"'{strip.name}': {exc}")
            return {"CANCELLED"}
        if clear_partial_project(ws.project):
            self.report({"INFO"}, "Removed the unfinished project of a run cancelled before it saved anything")
        resume = os.path.isfile(os.path.join(ws.project, "project.json"))
        minutes = s.minutes + (finished_training_minutes(ws.project) if resume else 0.0)
        args = train_args(strips.abs_path(strip.filepath), ws.project, frames, s.working_side(), minutes,
                          s.device, s.single_layer, resume)
        os.makedirs(base, exist_ok=True)
        scene_name = strips.sequencer_scene(context).name
        worker = Worker(spec.command("train", *args), env=spec.env(), title=f"Training '{strip.name}'")
        job = jobs.Job("train", worker, scene_name=scene_name, on_done=_train_done,
                       context_data={"strip": strip.name, "project": ws.project, "spec": spec})
        s.info_json = ""
        jobs.start(job)
        if job.state.finished:  # background mode: it already ran
            return _report_end(self, job)
        self.report({"INFO"}, f"Training '{strip.name}' frames {frames[0]}..{frames[1] - 1} "
                              f"({'resuming' if resume else 'new project'})")
        return {"FINISHED"}


def _train_done(job: jobs.Job) -> None:
    scene = bpy.data.scenes.get(job.scene_name)
    st = job.state
    if st.ok:
        spec = job.context_data["spec"]
        try:
            info = run_json(spec.command("info", job.context_data["project"]), env=spec.env())
        except EngineCallError as exc:
            job.outcome = f"Trained, but reading the project failed: {exc}"
            return
        if scene is not None:
            scene.inve.info_json = json.dumps(info)
            scene.inve.info_strip = job.context_data["strip"]
        psnr = (info.get("metrics") or {}).get("psnr")
        job.outcome = f"Trained '{job.context_data['strip']}'" + (f": PSNR {psnr:.2f} dB" if isinstance(psnr, (int, float)) else "")
    elif st.cancelled:
        job.outcome = "Training cancelled; the checkpoint is kept: Train again to continue"
    else:
        job.outcome = f"Training failed: {st.error}"


def _report_end(op: bpy.types.Operator, job: jobs.Job) -> set[str]:
    """Blocking mode: report the job's end like an operator would."""
    st = job.state
    if st.ok and job.state.error == "":
        op.report({"INFO"}, job.outcome or st.status_text())
        return {"FINISHED"}
    op.report({"WARNING"} if st.cancelled else {"ERROR"}, job.outcome or st.error or "failed")
    return {"CANCELLED"}


class INVE_OT_cancel(bpy.types.Operator):
    """Stop the running INVE job (training keeps a checkpoint to continue from)"""

    bl_idname = "inve.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not jobs.busy():
            cls.poll_message_set("Nothing is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        jobs.cancel()
        self.report({"INFO"}, "Cancelling: the engine saves its checkpoint and stops")
        return {"FINISHED"}


class INVE_OT_project_info(bpy.types.Operator):
    """Read the project's state and metrics again (inve info)"""

    bl_idname = "inve.project_info"
    bl_label = "Refresh Project Info"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = movie_strip(context)
        spec = engine_ready(self, context)
        if spec is None:
            return {"CANCELLED"}
        info = project_info(self, context, strip, spec, refresh=True)
        if info is None:
            return {"CANCELLED"}
        self.report({"INFO"}, f"Project of '{strip.name}': {len(info.get('frames', []))} frames")
        return {"FINISHED"}


class INVE_OT_check_engine(bpy.types.Operator):
    """Check that the engine's Python has torch and the other dependencies"""

    bl_idname = "inve.check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        status = engine_env.check(engine_spec(context))
        engine_env.set_status(status)
        self.report({"INFO"} if status.ok else {"WARNING"}, status.message)
        return {"FINISHED"}


class INVE_OT_install_dependencies(bpy.types.Operator):
    """Download the engine's Python dependencies (PyTorch etc., several GB) into the add-on's
    own folder, using Blender's Python"""

    bl_idname = "inve.install_dependencies"
    bl_label = "Install Dependencies"
    bl_options = {"REGISTER"}

    confirm: BoolProperty(default=True, options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if jobs.busy():
            cls.poll_message_set("An INVE job is running: wait for it or cancel it")
            return False
        if not bpy.app.online_access:
            cls.poll_message_set("Online access is disabled in Preferences > System > Network")
            return False
        return True

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event, message="Download PyTorch and the engine's "
                                                     "other dependencies (several GB) into the add-on's folder?")

    def execute(self, context: bpy.types.Context) -> set[str]:
        import sys

        python = sys.executable
        ok, why = engine_env.ensure_pip(python)
        if not ok:
            self.report({"ERROR"}, why)
            return {"CANCELLED"}
        try:
            reqs = engine_env.requirements()
        except FileNotFoundError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        target = deps_dir(create=True)
        worker = Worker(engine_env.install_command(python, target, reqs), title="Installing dependencies")
        job = jobs.Job("install", worker, on_done=_install_done)
        jobs.start(job)
        if job.state.finished:
            return _report_end(self, job)
        self.report({"INFO"}, f"Installing {len(reqs)} packages into {target}")
        return {"FINISHED"}


def _install_done(job: jobs.Job) -> None:
    st = job.state
    if st.ok:
        status = engine_env.check(engine_spec())
        engine_env.set_status(status)
        job.outcome = status.message
    elif st.cancelled:
        job.outcome = "Installation cancelled"
    else:
        job.outcome = f"Installation failed: {st.error}"


class INVE_OT_open_preferences(bpy.types.Operator):
    """Open the add-on's preferences to set the Engine Python"""

    bl_idname = "inve.open_preferences"
    bl_label = "Set Engine Python"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        from .preferences import ADDON_ID

        bpy.ops.screen.userpref_show("INVOKE_DEFAULT")
        context.preferences.active_section = "ADDONS"
        bpy.ops.preferences.addon_show(module=ADDON_ID)
        return {"FINISHED"}


CLASSES = (INVE_OT_train, INVE_OT_cancel, INVE_OT_project_info, INVE_OT_check_engine,
           INVE_OT_install_dependencies, INVE_OT_open_preferences)

"""Operators: Train, Cancel, project info, engine check and dependency installer."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import bpy
from bpy.props import BoolProperty, StringProperty

from ..io import engine_env, fg_hints
from ..io.worker import Worker
from . import engine_jobs, jobs
from . import sequencer as strips
from ..io import projects
from ..io.projects import Workspace
from .context import (copy_layers, engine_ready, movie_strip, new_workspace_path, poll_movie_strip, started_folder,
                      project_info, record_project, set_folder, settings, source_key, strip_project, strip_target)
from .ops_base import EngineJobOperator, JobPlan, start_job
from .preferences import ADDON_ID, deps_dir, engine_spec


def train_args(video: str, project: str, frames: tuple[int, int], max_side: int, minutes: float,
               device: str, single_layer: bool, resume: bool, fg_hint: str | None = None) -> list[str]:
    """Arguments of ``inve train`` for a strip (the CLI contract of ARCHITECTURE.md)."""
    args = [video, "-o", project, "--frames", f"{frames[0]}:{frames[1]}", "--max-side", str(int(max_side)),
            "--minutes", f"{float(minutes):g}", "--device", device, "--progress", "json"]
    if single_layer:
        args.append("--single-layer")
    if fg_hint:
        args += ["--fg-hint", fg_hint]
    if resume:
        args.append("--resume")
    return args


def finished_training_minutes(info: dict[str, Any] | None) -> float:
    """Training time of a project whose training finished (the engine's ``info`` has its
    metrics), else 0.

    ``inve train --resume --minutes M`` trains up to M minutes in total. A run cancelled
    before it finished continues to the panel's budget; pressing Train on a finished
    project should train the panel's minutes *more*, so the add-on adds what was done.
    """
    try:
        return max(0.0, float(((info or {}).get("metrics") or {}).get("train_seconds", 0.0)) / 60.0)
    except (ValueError, TypeError, AttributeError):
        return 0.0


# What the engine writes into a project folder before project.json exists (a run cancelled
# while loading or preprocessing); dot-files are its temporary files of atomic writes.
ENGINE_PARTIALS = {"cache", "frames.npy", "checkpoint.pt", "maps", "maps.npz", "metrics.json", "atlas_bg.png",
                   "atlas_fg.png"}


def _read_trained_project(job: jobs.Job) -> jobs.Job:
    d = job.context_data
    return engine_jobs.info_job(job.scene_name, (d["fingerprint"], d["frames"][0], d["frames"][1]), d["project"],
                                d["spec"])


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


def train_target(op: Any, context: bpy.types.Context, strip: Any, fp: str, frames: tuple[int, int],
                 extend: bool = False, update: bool = True) -> tuple[str, tuple[int, int], bool, Any, str] | None:
    """Where Train puts the strip's project and which source frames it trains:
    (workspace folder, frames, temporary?, the existing record or None, a note on new frames);
    None after reporting why not. Train All uses the same rule, so every strip's project is
    where the single-strip Train (and so preview, Propagate, Track) expects it.

    The strip shows frames its project lacks (its trim was extended): with ``extend`` (*Train
    New Frames*) the trained project resumes with the wider range, and the engine adds
    segments for the new frames (trained frames and the layers drawn on them stay as they
    are); without, a new project for all the frames is made (Train All's batch rule).
    """
    item, match = strip_project(context, strip)
    new_frames = ""
    if item is not None and match is not None and match.complete:
        base = started_folder(item, update)
        if base is None:
            op.report({"ERROR"}, f"The project folder of '{strip.name}' was moved or deleted "
                                 f"({item.abs_path}): use Relink Project first")
            return None
        frames = (item.frame_start, item.frame_end)
        temporary = base.startswith(os.path.join(tempfile.gettempdir(), "inve_unsaved"))
        return base, frames, temporary, item, new_frames
    if item is not None:  # the strip shows frames the project lacks
        frames = (min(frames[0], item.frame_start), max(frames[1], item.frame_end))
        base = started_folder(item, update) if extend else None
        if base is not None and projects.is_project_folder(Workspace(base).project):
            temporary = base.startswith(os.path.join(tempfile.gettempdir(), "inve_unsaved"))
            return base, frames, temporary, item, (f" (new frames: {frames[0]}..{frames[1] - 1} added to the "
                                                   f"project of {item.frame_start}..{item.frame_end - 1})")
        new_frames = f" (new frames: a project for {frames[0]}..{frames[1] - 1})"
    base, temporary = new_workspace_path(context, strip, fp, frames)
    return base, frames, temporary, item, new_frames


def claim_record(context: bpy.types.Context, strip: Any, base: str, frames: tuple[int, int], item: Any) -> Any:
    """The .blend's record of the project Train (or Train All) trains in ``base`` on ``frames``.

    Train New Frames (``item``'s own folder, a wider range): the same record (and its layers)
    now covers the wider range; a cancelled run leaves the engine's project claiming it too,
    and the next Train resumes. A new project of the same source: the layers drawn so far
    carry over to it."""
    if item is not None and started_folder(item) == base:
        wide = (min(int(frames[0]), item.frame_start), max(int(frames[1]), item.frame_end))
        if wide != (item.frame_start, item.frame_end):
            item.frame_start, item.frame_end = wide
        frames = wide
    record = record_project(context, strip, base, frames)
    if item is not None and record != item and not len(record.layers):
        copy_layers(item, record)
    return record


def train_workspace(op: Any, context: bpy.types.Context, strip: Any, extend: bool = True, load: bool = True
                    ) -> tuple[str, tuple[str, tuple[int, int], bool, Any, str]] | None:
    """The one rule for where the strip's work goes: (source fingerprint, :func:`train_target`).

    Train trains there, and Mark Foreground puts its HINTS.json there (and the panel looks for
    it there), so a hint is always where Train reads it: the source frames from the strip's
    exact timing (a clip Blender retimed to the scene's frame rate included; ``load=False``
    while drawing uses what is known and writes nothing), the project record's own folder
    when there is one (trained or only started, an unsaved file's temporary folder included),
    else the new project's folder. Raises OSError/ValueError (no movie file; a strip that shows nothing);
    None after reporting why not (a moved project: Relink).
    """
    fp, frames = source_key(context, strip, exact=True, load=load)
    target = train_target(op, context, strip, fp, frames, extend=extend, update=load)
    return None if target is None else (fp, target)


def unsaved_twin(base: str) -> str:
    """Where the workspace ``base`` was while the .blend was not saved yet (same folder name,
    in the temporary folder)."""
    return os.path.join(tempfile.gettempdir(), "inve_unsaved", os.path.basename(os.path.normpath(base)))


def hint_for(base: str) -> str | None:
    """The workspace's HINTS.json, or the one marked before the .blend was first saved (then
    it sat in the temporary folder; Train carries it over); None when neither exists."""
    for folder in (base, unsaved_twin(base)):
        path = fg_hints.hints_path(folder)
        if os.path.isfile(path):
            return path
    return None


def foreground_hint(op: Any, ws: Workspace, single_layer: bool, resume: bool) -> str | bool:
    """The workspace's HINTS.json for ``--fg-hint`` ("" when none or when resuming: the engine
    grew the project's masks when it was made); False after reporting a contradiction. A hint
    marked before the .blend was saved is moved next to the project first."""
    path = fg_hints.hints_path(ws.base)
    found = hint_for(ws.base)
    if found is None:
        return ""
    if single_layer:
        op.report({"ERROR"}, "A foreground hint is set but Background Only is on: turn Background Only off, or "
                             "Clear Foreground Hint")
        return False
    if resume:
        made = os.path.join(ws.project, "project.json")
        if os.path.getmtime(found) > os.path.getmtime(made):
            op.report({"WARNING"}, "The foreground hint was marked after this project was made: it is used when "
                                   "a project is trained anew (delete the project folder to start over)")
        return ""
    if found != path:  # marked while the .blend was unsaved: it goes with the project now
        try:
            doc = fg_hints.load(found)
        except ValueError as exc:
            op.report({"ERROR"}, f"{exc}: Clear Foreground Hint and mark it again")
            return False
        os.makedirs(ws.base, exist_ok=True)
        fg_hints.save(path, doc)
        fg_hints.clear(found)
    return path


class INVE_OT_train(EngineJobOperator, bpy.types.Operator):
    """Fit the neural atlases to the active movie strip's visible frames (runs in the background)"""

    bl_idname = "inve.train"
    bl_label = "Train"
    bl_options = {"REGISTER"}
    job_kind = "train"
    cancelled_text = "Training cancelled; the checkpoint is kept: Train again to continue"
    failed_text = "Training failed"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context)

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        target = strip_target(self, context, need_info=False)
        if target is None:
            return None
        strip, spec = target.strip, target.spec
        s = settings(context)
        try:
            got = train_workspace(self, context, strip)
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, f"'{strip.name}': {exc}")
            return None
        if got is None:
            return None
        fp, (base, frames, temporary, item, new_frames) = got
        ws = Workspace(base)
        if temporary:
            self.report({"WARNING"}, f"The .blend is not saved: the project goes to a temporary folder ({base}); "
                                     "save the file first to keep it next to the .blend")
        if clear_partial_project(ws.project):
            self.report({"INFO"}, "Removed the unfinished project of a run cancelled before it saved anything")
        resume = projects.is_project_folder(ws.project)
        hint = foreground_hint(self, ws, s.single_layer, resume)
        if hint is False:
            return None
        # (after every check that can still refuse, so a refused Train changes nothing)
        record = claim_record(context, strip, base, frames, item)
        done = finished_training_minutes(json.loads(record.info_json)) if resume and record.info_json else 0.0
        args = train_args(strips.abs_path(strip.filepath), ws.project, frames, s.working_side(), s.minutes + done,
                          s.device, s.single_layer, resume, fg_hint=hint or None)
        os.makedirs(base, exist_ok=True)
        worker = Worker(spec.command("train", *args), env=spec.env(), title=f"Training '{strip.name}'")
        record.info_json = ""
        return JobPlan(worker, f"Training '{strip.name}' frames {frames[0]}..{frames[1] - 1} "
                               f"({'resuming' if resume else 'new project'}){new_frames}",
                       {"strip": strip.name, "project": ws.project, "spec": spec, "fingerprint": fp,
                        "frames": list(frames)})

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        psnr = job.state.psnr
        job.then = _read_trained_project  # the engine tells what was trained (a background job too)
        return f"Trained '{job.context_data['strip']}'" + (f": PSNR {psnr:.2f} dB" if isinstance(psnr, (int, float))
                                                           else "")


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


class INVE_OT_relink_project(bpy.types.Operator):
    """Point the active strip's project at the folder it was moved to (asks for the folder once)"""

    bl_idname = "inve.relink_project"
    bl_label = "Relink Project"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not poll_movie_strip(cls, context):
            return False
        if strip_project(context, movie_strip(context))[0] is None:
            cls.poll_message_set("The active strip has no project to relink: Train it")
            return False
        return True

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = movie_strip(context)
        item, _ = strip_project(context, strip)
        folder = bpy.path.abspath(self.directory)
        if not os.path.isdir(folder):
            self.report({"ERROR"}, f"Not a folder: {folder or '(none chosen)'}")
            return {"CANCELLED"}
        found = projects.relink_candidates(folder, item.fingerprint, (item.frame_start, item.frame_end),
                                           lambda p: projects.is_project_folder(os.path.join(p, "project")))
        if len(found) != 1:
            what = "no project of this source and frames" if not found else f"{len(found)} candidates"
            self.report({"ERROR"}, f"{what} in {folder}: choose the project's own folder")
            return {"CANCELLED"}
        set_folder(item, found[0])
        item.info_json = ""
        self.report({"INFO"}, f"Project of '{strip.name}' relinked to {item.path}")
        return {"FINISHED"}


class INVE_OT_check_engine(bpy.types.Operator):
    """Check that the engine's Python has torch and the other dependencies (in the background)"""

    bl_idname = "inve.check_engine"
    bl_label = "Check Engine"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if jobs.busy():
            cls.poll_message_set("An INVE job is running: wait for it or cancel it")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return start_job(self, engine_jobs.check_job(engine_spec(context)), "Checking the engine's Python")


class INVE_OT_install_dependencies(EngineJobOperator, bpy.types.Operator):
    """Download the engine's Python dependencies (PyTorch etc., several GB) into the add-on's
    own folder, using Blender's Python"""

    bl_idname = "inve.install_dependencies"
    bl_label = "Install Dependencies"
    bl_options = {"REGISTER"}

    confirm: BoolProperty(default=True, options={"SKIP_SAVE", "HIDDEN"})
    job_kind = "install"
    cancelled_text = "Installation cancelled"
    failed_text = "Installation failed"

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

    def build(self, context: bpy.types.Context) -> JobPlan | None:
        import sys

        python = sys.executable
        ok, why = engine_env.ensure_pip(python)
        if not ok:
            self.report({"ERROR"}, why)
            return None
        try:
            reqs = engine_env.requirements()
        except FileNotFoundError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        target = deps_dir(create=True)
        worker = Worker(engine_env.install_command(python, target, reqs), title="Installing dependencies")
        return JobPlan(worker, f"Installing {len(reqs)} packages into {target}")

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        status = engine_env.check(engine_spec())
        engine_env.set_status(status)
        return status.message


class INVE_OT_open_preferences(bpy.types.Operator):
    """Open the add-on's preferences to set the Engine Python"""

    bl_idname = "inve.open_preferences"
    bl_label = "Set Engine Python"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        bpy.ops.screen.userpref_show("INVOKE_DEFAULT")
        context.preferences.active_section = "ADDONS"
        bpy.ops.preferences.addon_show(module=ADDON_ID)
        return {"FINISHED"}


CLASSES = (INVE_OT_train, INVE_OT_cancel, INVE_OT_project_info, INVE_OT_relink_project, INVE_OT_check_engine,
           INVE_OT_install_dependencies, INVE_OT_open_preferences)

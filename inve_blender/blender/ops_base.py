"""One base for the operators that run an engine job.

An operator subclass says how to build its task (:meth:`EngineJobOperator.build`) and what
success means (:meth:`EngineJobOperator.succeeded`); starting the job, the progress report,
and the end — success, cancel or failure — are handled here once. ``succeeded`` is a
classmethod: it runs when the job ends, long after the operator instance is gone.

The other pieces operators share live here too: starting any job and reporting its end
(:func:`start_job`, :func:`report_outcome`) and the image file browser of Add Sticker and
Add Paint (:class:`ImageFileOperator`); the strip + engine + project prelude is
:func:`.context.strip_target`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import bpy
from bpy.props import BoolProperty, StringProperty

from . import jobs
from .sequencer import sequencer_scene


@dataclass
class JobPlan:
    """What :meth:`EngineJobOperator.build` returns: the task and what its end needs."""

    task: Any
    title: str
    data: dict[str, Any] = field(default_factory=dict)


def report_outcome(op: bpy.types.Operator, ok: bool, cancelled: bool, message: str) -> set[str]:
    """Report the end of some work like an operator does (info / warning when cancelled / error)."""
    op.report({"INFO"} if ok else {"WARNING"} if cancelled else {"ERROR"}, message)
    return {"FINISHED"} if ok else {"CANCELLED"}


def report_end(op: bpy.types.Operator, job: jobs.Job) -> set[str]:
    """Blocking mode: report the job's end like an operator would."""
    st = job.state
    ok = st.ok and st.error == ""
    return report_outcome(op, ok, st.cancelled, job.outcome or (st.status_text() if ok else st.error or "failed"))


def start_job(op: bpy.types.Operator, job: jobs.Job, title: str) -> set[str]:
    """Start ``job``: in background Blender it has ended already (report how); interactive
    Blender reports ``title`` and the panel follows the job."""
    jobs.start(job)
    if job.state.finished:
        return report_end(op, job)
    op.report({"INFO"}, title)
    return {"FINISHED"}


class ImageFileOperator:
    """Mixin: an operator that asks for an image file in Blender's file browser on invoke
    (scripts and tests pass ``filepath``)."""

    filepath: StringProperty(subtype="FILE_PATH")
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class EngineJobOperator:
    """Mixin for ``bpy.types.Operator`` subclasses that run one engine job.

    A subclass defines ``build(self, context) -> JobPlan | None`` (the job to run, or None
    after reporting why not) and overrides :meth:`succeeded` / :meth:`cancelled` as needed.
    """

    job_kind: ClassVar[str] = "job"
    cancelled_text: ClassVar[str] = "Cancelled"
    failed_text: ClassVar[str] = "Failed"

    @classmethod
    def succeeded(cls, job: jobs.Job, scene: Any) -> str:
        """Apply the result (in Blender's main thread); returns the outcome line."""
        return job.state.status_text()

    @classmethod
    def cancelled(cls, job: jobs.Job, scene: Any) -> str:
        return cls.cancelled_text

    @classmethod
    def _done(cls, job: jobs.Job) -> None:
        st = job.state
        scene = bpy.data.scenes.get(job.scene_name) if job.scene_name else None
        if st.ok:
            job.outcome = cls.succeeded(job, scene)
        elif st.cancelled:
            job.outcome = cls.cancelled(job, scene)
        else:
            job.outcome = f"{cls.failed_text}: {st.error}"

    def execute(self, context: bpy.types.Context) -> set[str]:
        plan = self.build(context)
        if plan is None:
            return {"CANCELLED"}
        job = jobs.Job(self.job_kind, plan.task, scene_name=sequencer_scene(context).name,
                       on_done=type(self)._done, context_data=plan.data)
        return start_job(self, job, plan.title)

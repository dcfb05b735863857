"""One base for the operators that run an engine job.

An operator subclass says how to build its task (:meth:`EngineJobOperator.build`) and what
success means (:meth:`EngineJobOperator.succeeded`); starting the job, the progress report,
and the end — success, cancel or failure — are handled here once. ``succeeded`` is a
classmethod: it runs when the job ends, long after the operator instance is gone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import bpy

from . import jobs
from .sequencer import sequencer_scene


@dataclass
class JobPlan:
    """What :meth:`EngineJobOperator.build` returns: the task and what its end needs."""

    task: Any
    title: str
    data: dict[str, Any] = field(default_factory=dict)


def report_end(op: bpy.types.Operator, job: jobs.Job) -> set[str]:
    """Blocking mode: report the job's end like an operator would."""
    st = job.state
    if st.ok and st.error == "":
        op.report({"INFO"}, job.outcome or st.status_text())
        return {"FINISHED"}
    op.report({"WARNING"} if st.cancelled else {"ERROR"}, job.outcome or st.error or "failed")
    return {"CANCELLED"}


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
        jobs.start(job)
        if job.state.finished:  # background mode: it already ran
            return report_end(self, job)
        self.report({"INFO"}, plan.title)
        return {"FINISHED"}

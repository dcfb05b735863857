"""The one running engine job: what it is, who runs it, how it ends (no bpy).

A job wraps a *task*: anything with ``start()``, ``poll() -> ProgressState``, ``cancel()``,
``run_to_completion()`` and ``state`` — a :class:`~inve_blender.io.worker.Worker` process
or a request to the engine service (:mod:`inve_blender.io.service`). :class:`JobSlot`
holds at most one running job and calls its ``on_done`` exactly once when it ends,
whatever happens in it. The Blender glue (``blender/jobs.py``) only adds a timer and the
progress bar; everything decided here is tested without Blender.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .worker import ProgressState


class Task(Protocol):
    state: ProgressState

    def start(self) -> Any: ...

    def poll(self) -> ProgressState: ...

    def cancel(self) -> None: ...

    def run_to_completion(self, timeout: float | None = None, interval: float = 0.05) -> ProgressState: ...


@dataclass
class Job:
    kind: str  # 'train' | 'edit' | 'track' | 'atlas' | 'install' | 'check' | 'info' | ...
    worker: Task
    scene_name: str = ""
    on_done: Callable[["Job"], None] | None = None
    context_data: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""  # the last report, for the panel
    then: Callable[["Job"], "Job | None"] | None = None  # the job to run next (e.g. read the new project)
    previous: "Job | None" = None  # the job whose ``then`` started this one

    @property
    def state(self) -> ProgressState:
        return self.worker.state


class JobSlot:
    """At most one running job; the last one stays visible (its outcome) until the next."""

    def __init__(self) -> None:
        self.current: Job | None = None
        self.last_job: Job | None = None
        self._blocking = False

    def last(self) -> Job | None:
        return self.current or self.last_job

    def busy(self) -> bool:
        return self.current is not None and not self.current.state.finished

    def start(self, job: Job, blocking: bool) -> ProgressState:
        """Start ``job``; with ``blocking`` run it to its end (and finish it) right here."""
        if self.busy():
            raise RuntimeError("another INVE job is running; cancel it or wait")
        self._blocking = blocking
        self.current = job
        job.worker.start()
        if blocking:
            job.worker.run_to_completion()
            self.finish(job)
        return job.state

    def tick(self) -> bool:
        """Poll the running job; finish it when it ended. True while it (or the job its end
        started: ``then``, or an operator its ``on_done`` ran) still runs, so the UI timer
        keeps polling a chain of jobs to its end."""
        job = self.current
        if job is None:
            return False
        if not job.worker.poll().finished:
            return True
        self.finish(job)
        return self.busy()

    def cancel(self) -> bool:
        if self.current is None or self.current.state.finished:
            return False
        self.current.worker.cancel()
        return True

    def finish(self, job: Job) -> None:
        try:
            if job.on_done is not None:
                job.on_done(job)
        except Exception as exc:  # noqa: BLE001 - a failure here must reach the user, not the console only
            job.outcome = f"{job.kind} finished, but applying its result failed: {exc}"
            job.state.ok = False
            job.state.error = job.outcome
        finally:
            self.last_job = job
            if self.current is job:
                self.current = None
        nxt = job.then(job) if job.then is not None else None
        if nxt is not None:
            nxt.previous = job
            if not nxt.outcome:
                nxt.outcome = job.outcome  # shown while the next one runs
            self.start(nxt, blocking=self._blocking)

    def shutdown(self) -> None:
        if self.current is not None and not self.current.state.finished:
            self.current.worker.cancel()
        self.current = None


class ThreadTask:
    """A plain function as a job task, run on a thread (e.g. checking the engine's Python,
    which imports torch for seconds): the UI only polls. Its return value is ``state.result``;
    an exception is the job's error."""

    def __init__(self, fn: Callable[[], dict[str, Any]], title: str = "") -> None:
        import threading

        self.fn = fn
        self.state = ProgressState(title=title)
        self._thread = threading.Thread(target=self._run, name="inve-task", daemon=True)
        self._out: dict[str, Any] | None = None
        self._error: str = ""
        self._cancelled = False

    def _run(self) -> None:
        try:
            self._out = dict(self.fn() or {})
        except Exception as exc:  # noqa: BLE001 - becomes the job's error line
            self._error = str(exc) or type(exc).__name__

    def start(self) -> "ThreadTask":
        self._thread.start()
        return self

    def poll(self) -> ProgressState:
        st = self.state
        if not st.finished and not self._thread.is_alive():
            st.finished = True
            if self._cancelled:
                st.ok, st.cancelled, st.error = False, True, "cancelled"
            elif self._error:
                st.ok, st.error = False, self._error
            else:
                st.ok, st.result = True, self._out or {}
        return st

    def cancel(self) -> None:
        """The function runs to its end; its result is dropped."""
        self._cancelled = True

    def run_to_completion(self, timeout: float | None = None, interval: float = 0.02) -> ProgressState:
        if not self._thread.is_alive() and not self.state.finished and self._out is None and not self._error:
            if self._thread.ident is None:
                self.start()
        self._thread.join(timeout)
        return self.poll()

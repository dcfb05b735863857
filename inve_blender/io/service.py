"""The add-on's side of the persistent engine service (``inve serve``), without bpy.

One engine process per Blender session keeps the trained projects warm, so a preview frame
or a Propagate costs the rendering only, not a torch import and a checkpoint load.
:class:`ServiceManager` owns that process (through svc's
:class:`~inve_blender.io.engine_client.EngineClient`): started on first need with the Engine
Python and the bundled engine on its PYTHONPATH, replaced when the user picks another
interpreter, restarted by the client when it died (the panel says so once), stopped on
unregister. :class:`ServiceTask` makes one request look like a worker process to the job
slot (``start``/``poll``/``cancel``/``run_to_completion``), so the same job glue, progress
bar and cancel button serve both.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from .worker import ProgressState

ClientFactory = Callable[[list[str], "dict[str, str] | None"], Any]


def _default_factory(argv: list[str], env: dict[str, str] | None) -> Any:
    from .engine_client import EngineClient  # svc's pure client; imported on first use

    return EngineClient(argv, env)


def is_cancelled_error(exc: BaseException) -> bool:
    """An ``EngineError`` that reports a cancelled request (``"cancelled": true``)."""
    if getattr(exc, "cancelled", False):
        return True
    reply = getattr(exc, "reply", None) or getattr(exc, "event", None)
    return isinstance(reply, Mapping) and bool(reply.get("cancelled"))


class ServiceManager:
    """The one engine service of this Blender session."""

    def __init__(self, factory: ClientFactory | None = None) -> None:
        self._factory = factory or _default_factory
        self._client: Any = None
        self._key: tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None = None
        self._seen_restarts = 0
        self.notice = ""  # one line for the panel, shown once (e.g. "the engine restarted")

    @property
    def client(self) -> Any:
        return self._client

    @property
    def running(self) -> bool:
        return self._client is not None and bool(getattr(self._client, "alive", False))

    def get(self, argv: Sequence[str], env: Mapping[str, str] | None) -> Any:
        """The client for ``argv``/``env``; starts it (or a new one for another interpreter)."""
        key = (tuple(argv), tuple(sorted((env or {}).items())))
        if self._client is not None and key != self._key:
            self.stop()
        if self._client is None:
            self._client = self._factory(list(argv), dict(env) if env is not None else None)
            self._key = key
            self._seen_restarts = int(getattr(self._client, "restarts", 0))
        self.check_restarts()
        return self._client

    def check_restarts(self) -> str:
        """Notice a restart the client made by itself; returns the one-time notice (or "")."""
        c = self._client
        if c is None:
            return ""
        n = int(getattr(c, "restarts", 0))
        if n > self._seen_restarts:
            self._seen_restarts = n
            self.notice = ("The engine service stopped unexpectedly and was restarted; "
                           "requests that were running then failed: run them again")
        return self.notice

    def take_notice(self) -> str:
        """The pending notice, once: the next call returns "" until something new happens."""
        self.check_restarts()
        text, self.notice = self.notice, ""
        return text

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the service down (on unregister, exit, or a change of interpreter)."""
        c, self._client, self._key = self._client, None, None
        if c is not None:
            try:
                c.shutdown(timeout)
            except Exception:  # noqa: BLE001 - stopping must never raise into Blender's exit
                pass


def _error_of(req: Any) -> BaseException | None:
    """The exception a finished request raises (None on success)."""
    try:
        req.result(timeout=0)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


class ServiceTask:
    """One service request as a job task (see :class:`inve_blender.io.jobs.Task`).

    ``frame`` events (streaming Propagate) are collected in :attr:`frames` and handed to
    ``on_frame`` as they arrive, so the UI can show each written frame at once.
    """

    def __init__(self, manager: ServiceManager, argv: Sequence[str], env: Mapping[str, str] | None,
                 op: str, fields: Mapping[str, Any], title: str = "",
                 on_frame: Callable[[dict[str, Any]], None] | None = None,
                 pre: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> None:
        self.manager, self.argv, self.env = manager, list(argv), env
        self.op, self.fields = op, dict(fields)
        self.pre = [(o, dict(f)) for o, f in pre]  # sent first (the service runs requests in order)
        self.pre_requests: list[Any] = []
        self.state = ProgressState(title=title)
        self.on_frame = on_frame
        self.frames: list[dict[str, Any]] = []
        self.request: Any = None
        self._cancel_requested = False

    def start(self) -> "ServiceTask":
        try:
            client = self.manager.get(self.argv, self.env)
            self.pre_requests = [client.request(o, **f) for o, f in self.pre]
            self.request = client.request(self.op, **self.fields)
        except Exception as exc:  # noqa: BLE001 - a service that cannot start is the job's failure
            self.state.error = f"cannot start the engine service: {exc}"
            self.state.ok, self.state.finished = False, True
        return self

    def poll(self) -> ProgressState:
        st = self.state
        if st.finished or self.request is None:
            return st
        for ev in self.request.poll_events():
            if ev.get("event") == "frame":
                self.frames.append(ev)
                if self.on_frame is not None:
                    self.on_frame(ev)
            else:
                st.apply(ev)
        failed_pre = next((r for r in self.pre_requests if r.done() and _error_of(r) is not None), None)
        if failed_pre is not None and not self.request.done():
            self.request.cancel()  # it would run without what was meant to come first
        if self.request.done():
            for ev in self.request.poll_events():  # the last events before `done`
                if ev.get("event") == "frame":
                    self.frames.append(ev)
                    if self.on_frame is not None:
                        self.on_frame(ev)
            try:
                if failed_pre is not None:
                    raise _error_of(failed_pre)
                result = self.request.result(timeout=0)
            except Exception as exc:  # noqa: BLE001 - EngineError (svc's), or the client's own
                st.ok = False
                st.cancelled = (is_cancelled_error(exc) or self._cancel_requested) and failed_pre is None
                st.error = "cancelled" if st.cancelled else str(exc)
            else:
                st.ok, st.error = True, ""
                st.result = dict(result or {})
                self.manager.notice = ""  # a request went through: the restart notice has been seen
            st.finished = True
            self.manager.check_restarts()
        return st

    def cancel(self) -> None:
        self._cancel_requested = True
        if self.request is not None and not self.state.finished:
            self.request.cancel()

    def run_to_completion(self, timeout: float | None = None, interval: float = 0.005) -> ProgressState:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.request is None and not self.state.finished:
            self.start()
        while not self.poll().finished:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval)
        return self.state

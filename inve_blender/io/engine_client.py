"""Client of the persistent engine service (``inve serve``): plain Python, no bpy, no torch.

Why a separate process and this client: the engine imports torch and holds projects in
memory; Blender's UI thread must never wait on it. :class:`EngineClient` starts the service,
sends requests without blocking, and a reader thread files every reply line under its request,
so the add-on polls (``Request.done()``, ``poll_events()``) from a timer and only a caller that
chooses to wait calls ``result()``. If the engine process dies, pending requests fail with a
clear message and the client starts a new process by itself (``restarts`` counts them; the new
process knows no open projects or edit stacks, so send ``set_edits`` again).

Only threads and blocking reads are used on the pipes (no ``select``), so it works on Windows.
The protocol is documented in the project's README (section *Engine service*).
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

#: restarts allowed within RESTART_WINDOW seconds before the client gives up (a crashing engine)
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


class EngineError(RuntimeError):
    """The engine answered a request with ``error`` (or died before answering)."""

    def __init__(self, message: str, cancelled: bool = False, reply: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cancelled = cancelled
        self.reply = reply or {}


class Request:
    """One request in flight; filled by the client's reader thread."""

    def __init__(self, client: "EngineClient", rid: int, op: str, fields: dict[str, Any]) -> None:
        self.client = client
        self.id = rid
        self.op = op
        self.fields = fields
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._events: list[dict] = []
        self._reply: dict | None = None
        self._error: EngineError | None = None

    # -- filled by the reader thread ---------------------------------------------------------
    def _add(self, msg: dict) -> None:
        kind = msg.get("event")
        body = {k: v for k, v in msg.items() if k != "id"}
        if kind == "done":
            self._finish(reply={k: v for k, v in body.items() if k != "event"})
        elif kind == "error":
            self._finish(error=EngineError(str(msg.get("message", "engine error")), bool(msg.get("cancelled")),
                                           body))
        else:
            with self._lock:
                self._events.append(body)

    def _finish(self, reply: dict | None = None, error: EngineError | None = None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._reply, self._error = reply, error
        self._event.set()

    # -- the caller's side -------------------------------------------------------------------
    def done(self) -> bool:
        """True once the engine answered ``done`` or ``error`` (or the request failed)."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> dict:
        """Wait for the answer: the ``done`` fields, or raise :class:`EngineError` (TimeoutError on timeout)."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"engine request {self.op} #{self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply

    @property
    def error(self) -> EngineError | None:
        """The failure once done (None while running or on success); never raises."""
        return self._error if self._event.is_set() else None

    def poll_events(self) -> list[dict]:
        """``progress`` / ``frame`` events that arrived since the last poll (oldest first)."""
        with self._lock:
            out, self._events = self._events, []
        return out

    def cancel(self) -> None:
        """Ask the engine to stop this request (it ends with an error whose ``cancelled`` is True)."""
        if not self.done():
            self.client.request("cancel", target=self.id)


class EngineClient:
    """One engine service process, started on first use and restarted if it dies.

    ``argv`` runs the service, e.g. ``[python, "-m", "core", "serve"]``; ``env`` its environment
    (None: inherit). stderr of the engine is kept (last lines) for error messages.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 start: bool = True) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.restarts = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.stray: collections.deque[dict] = collections.deque(maxlen=100)  # replies with id null
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._pending: dict[int, Request] = {}
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._restart_times: collections.deque[float] = collections.deque(maxlen=MAX_RESTARTS)
        if start:
            with self._lock:
                try:
                    self._start()
                except OSError:
                    self._proc = None  # reported by the first request, as an EngineError

    # -- process -----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        env = self.env if self.env is not None else dict(os.environ)
        env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=self.cwd, bufsize=0, **kwargs)
        self._proc = proc
        threading.Thread(target=self._read_stdout, args=(proc,), name="inve-engine-reader", daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc,), name="inve-engine-stderr", daemon=True).start()

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            try:
                msg = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self.stderr_tail.append("unreadable engine line: " + raw[:200].decode("utf-8", "replace"))
                continue
            if not isinstance(msg, dict):
                continue
            rid = msg.get("id")
            with self._lock:
                req = self._pending.get(rid) if isinstance(rid, int) else None
                if req is not None and msg.get("event") in ("done", "error"):
                    del self._pending[rid]
            if req is None:
                self.stray.append(msg)
            else:
                req._add(msg)
        code = proc.wait()
        self._on_exit(proc, code)

    def _on_exit(self, proc: subprocess.Popen, code: int) -> None:
        """The process ended: fail what it left unanswered, and restart unless we closed it."""
        with self._lock:
            if proc is not self._proc:
                return
            pending, self._pending = list(self._pending.values()), {}
            closing = self._closed
            last = self.stderr_tail[-1] if self.stderr_tail else ""
            if not closing:
                now = time.monotonic()
                recent = [t for t in self._restart_times if now - t < RESTART_WINDOW]
                can_restart = len(recent) < MAX_RESTARTS
            else:
                can_restart = False
            if can_restart:
                self._restart_times.append(time.monotonic())
                self.restarts += 1
                try:
                    self._start()
                    state = "it was restarted; send the request again (open projects and edit stacks were lost)"
                except OSError as exc:
                    self._proc = None
                    state = f"restarting it failed: {exc}"
            elif closing:
                state = "the client shut it down"
            else:
                self._proc = None
                state = (f"it stopped {MAX_RESTARTS} times within {RESTART_WINDOW:.0f} s, so it is not restarted "
                         "automatically (the next request starts it again); check the engine environment")
        detail = f" (last message: {last})" if last else ""
        for req in pending:
            req._finish(error=EngineError(f"the engine process exited with code {code} before answering "
                                          f"{req.op}{detail}; {state}"))

    # -- requests ------------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Request:
        """Send a request; returns at once. Failures to send end the request with an error."""
        rid = next(self._ids)
        req = Request(self, rid, op, fields)
        line = (json.dumps({"id": rid, "op": op, **fields}) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                req._finish(error=EngineError("the engine client was shut down"))
                return req
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is None:  # not started yet, or given up on: try (again) now
                    try:
                        self._start()
                    except OSError as exc:
                        req._finish(error=EngineError(f"cannot start the engine ({self.argv[0]}): {exc}"))
                        return req
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            self._pending[rid] = req
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the process is gone: the reader's exit handling fails the request
        return req

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> dict:
        """``request(op, ...).result(timeout)``: for worker threads and tests, never the UI thread."""
        return self.request(op, **fields).result(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the engine: ``shutdown`` request, then stdin closed, then killed after ``timeout`` s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(b'{"id": 0, "op": "shutdown"}\n')
                proc.stdin.flush()
                proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

"""The engine as a worker process: start it, read its JSON-lines progress, cancel it.

Why a process: training takes minutes and needs torch, which Blender's own Python lacks;
running ``python -m core ... --progress json`` outside Blender keeps the UI responsive and
lets the engine live in any Python environment. Everything here is plain Python (no bpy), so
the tests drive it directly: a reader thread parses stdout into events, the UI timer (or
:meth:`Worker.run_to_completion` in background mode and tests) folds them into a
:class:`ProgressState`.
"""
from __future__ import annotations

import codecs
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

EXIT_CANCELLED = 130
STDERR_KEEP = 40  # last lines of stderr kept for error messages


class JsonLinesParser:
    """Splits a byte/text stream into JSON events, tolerating partial lines and noise.

    Chunks may end in the middle of a line (pipes deliver what they have); the tail is kept
    until its newline arrives. A line that is not a JSON object (a stray print from a
    library) becomes a ``message`` event instead of an exception, so a chatty dependency can
    never break the progress display.
    """

    def __init__(self) -> None:
        self._buf = ""
        # a multi-byte character may be split between two reads
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: str | bytes) -> list[dict[str, Any]]:
        if isinstance(chunk, bytes):
            chunk = self._decoder.decode(chunk)
        self._buf += chunk
        *lines, self._buf = self._buf.split("\n")
        return [ev for ev in (parse_line(line) for line in lines) if ev is not None]

    def flush(self) -> list[dict[str, Any]]:
        """Events from a last line that had no newline (the process ended)."""
        rest, self._buf = self._buf + self._decoder.decode(b"", final=True), ""
        ev = parse_line(rest)
        return [ev] if ev is not None else []


def parse_line(line: str) -> dict[str, Any] | None:
    """One stdout line -> an event dict (``None`` for a blank line)."""
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return {"event": "message", "message": text}
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return {"event": "message", "message": text}
    return obj


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class ProgressState:
    """What the panel and the status bar show about one running job."""

    title: str = ""
    stage: str = ""
    step: int = 0
    total: int = 0
    eta: float | None = None
    elapsed: float | None = None
    psnr: float | None = None
    message: str = ""
    finished: bool = False
    ok: bool = False
    cancelled: bool = False
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.step / self.total)) if self.total > 0 else 0.0

    def apply(self, ev: Mapping[str, Any]) -> None:
        """Fold one engine event into the state (unknown events are ignored)."""
        kind = ev.get("event")
        if kind == "progress":
            stage = str(ev.get("stage", ""))
            self.stage = stage
            step, total = _number(ev.get("step")), _number(ev.get("total"))
            self.step = int(step) if step is not None else 0
            self.total = int(total) if total is not None else 0
            self.eta = _number(ev.get("eta"))
            self.elapsed = _number(ev.get("elapsed"))
            psnr = _number(ev.get("psnr"))
            if psnr is not None:
                self.psnr = psnr
        elif kind == "message":
            self.message = str(ev.get("message", ""))
        elif kind == "done":
            # `finished` waits for the process to exit (Worker._finish): only then is the
            # result complete and the exit status known (130 = cancelled).
            self.ok = True
            self.result = {k: v for k, v in ev.items() if k != "event"}
            psnr = _number(ev.get("psnr"))
            if psnr is not None:
                self.psnr = psnr
        elif kind == "error":
            self.ok = False
            self.error = str(ev.get("message", "the engine failed"))

    def status_text(self) -> str:
        """One line for the status bar and the panel."""
        if self.finished:
            if self.ok:
                return f"{self.title}: done" + (f" (PSNR {self.psnr:.2f} dB)" if self.psnr is not None else "")
            if self.cancelled:
                return f"{self.title}: cancelled"
            return f"{self.title}: {self.error}"
        parts = [self.title]
        if self.stage:
            parts.append(f"{self.stage} {self.step}/{self.total}" if self.total else self.stage)
        elif self.message:  # a process without progress events (pip): its latest line
            parts.append(self.message if len(self.message) <= 60 else self.message[:57] + "...")
        if self.psnr is not None:
            parts.append(f"PSNR {self.psnr:.2f} dB")
        if self.eta is not None:
            parts.append(f"{format_seconds(self.eta)} left")
        return " | ".join(p for p in parts if p)


def engine_command(python: str, subcommand: str, *args: str) -> list[str]:
    """``python -m core SUBCOMMAND ARGS`` (the CLI contract of ARCHITECTURE.md)."""
    return [python, "-m", "core", subcommand, *args]


def engine_env(pythonpath: Sequence[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the worker: the engine (and any installed deps) first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in pythonpath if p]
    # Blender's Python may set PYTHONHOME/PYTHONPATH for itself; the engine gets only ours.
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    return env


class Worker:
    """One engine process with a reader thread feeding an event queue.

    ``poll()`` (from a Blender timer) drains the queue into :attr:`state` without blocking;
    ``run_to_completion()`` blocks until the end (background mode, tests, the blocking fallback).
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, title: str = "",
                 cwd: str | None = None) -> None:
        self.cmd = list(cmd)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.state = ProgressState(title=title)
        self.returncode: int | None = None
        self.stderr_tail: list[str] = []
        self._events: "queue.Queue[dict[str, Any] | None]" = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._cancel_requested = False
        self._stdout_done = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Worker":
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            # CTRL_BREAK_EVENT reaches only a process in its own group (and not Blender itself).
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
                                       | subprocess.CREATE_NO_WINDOW)  # type: ignore[attr-defined]
        try:
            self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, **kwargs)
        except OSError as exc:
            self.state.apply({"event": "error", "message": f"cannot start the engine ({self.cmd[0]}): {exc}"})
            self.returncode = -1
            self.state.finished = True
            return self
        out = threading.Thread(target=self._read_stdout, name="inve-worker-stdout", daemon=True)
        err = threading.Thread(target=self._read_stderr, name="inve-worker-stderr", daemon=True)
        self._threads = [out, err]
        out.start()
        err.start()
        return self

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        parser = JsonLinesParser()
        stream = self._proc.stdout
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            for ev in parser.feed(chunk):
                self._events.put(ev)
        for ev in parser.flush():
            self._events.put(ev)
        self._stdout_done.set()

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                del self.stderr_tail[:-STDERR_KEEP]

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None

    def cancel(self) -> None:
        """Ask the engine to stop: it saves a checkpoint and exits with status 130."""
        self._cancel_requested = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if sys.platform == "win32":
                proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                proc.send_signal(signal.SIGTERM)
        except OSError:
            pass

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    # -- reading -----------------------------------------------------------------------------
    def poll(self) -> ProgressState:
        """Apply the events that arrived so far; notice the end of the process."""
        self._drain()
        proc = self._proc
        if proc is not None and self.returncode is None and proc.poll() is not None:
            # the process ended: wait for the reader to hand over the last lines
            self._stdout_done.wait(timeout=5.0)
            for t in self._threads:
                t.join(timeout=5.0)
            self._drain()
            self.returncode = proc.returncode
            self._finish()
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if ev is not None:
                self.state.apply(ev)

    def _finish(self) -> None:
        """The process exited: its status decides (events only describe the way there)."""
        st = self.state
        rc = self.returncode
        st.finished = True
        if rc == EXIT_CANCELLED or (self._cancel_requested and rc != 0):
            st.ok, st.cancelled = False, True
            st.error = st.error or "cancelled"
        elif rc == 0:
            st.ok, st.error = True, ""
        else:
            st.ok = False
            if not st.error:
                st.error = self.stderr_tail[-1] if self.stderr_tail else f"the engine exited with status {rc}"

    def run_to_completion(self, timeout: float | None = None, interval: float = 0.05) -> ProgressState:
        """Block until the process ends (or ``timeout`` seconds pass, then cancel it)."""
        if self._proc is None and self.returncode is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and self._proc is not None:
            self.poll()
            if self.returncode is not None:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill()
                deadline = None
            time.sleep(interval)
        return self.state


class EngineCallError(Exception):
    """A short engine command failed; the message is the engine's own one-line error."""


def run_json(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0) -> Any:
    """Run a short engine command that prints one JSON document (``inve info``) and parse it."""
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
    try:
        proc = subprocess.run(list(cmd), capture_output=True, env=None if env is None else dict(env),
                              timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineCallError(f"cannot run the engine ({cmd[0]}): {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        raise EngineCallError(lines[-1] if lines else f"the engine exited with status {proc.returncode}")
    try:
        return json.loads(proc.stdout.decode("utf-8", "replace"))
    except json.JSONDecodeError as exc:
        raise EngineCallError(f"the engine printed no valid JSON: {exc}") from None

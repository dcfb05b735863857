"""Progress reporting and cooperative cancellation.

Two audiences read progress: a person at a terminal (a bar on stderr) and the Blender
add-on's worker reader (``--progress json``: one JSON object per line on stdout, as fixed in
ARCHITECTURE.md). Long loops call :meth:`Progress.update`, which also raises
:class:`~core.errors.Cancelled` once SIGINT/SIGTERM arrived, so every stage can stop cleanly
at a safe point (the trainer saves a checkpoint first).
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from typing import Any, TextIO

from core.errors import Cancelled


class CancelToken:
    """A flag set by a signal handler (or a test, or a thread) and polled by work loops."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def install_signal_handlers(self) -> None:
        """Turn the first SIGINT/SIGTERM into a cancel request; a second SIGINT kills as usual."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
            if self._event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._event.set()

        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGTERM"):
            signal.signal(signal.SIGTERM, handler)
        if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT from the add-on
            signal.signal(signal.SIGBREAK, handler)  # type: ignore[attr-defined]


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: report them as strings instead of emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Progress:
    """Reports stages of work as a terminal bar or as JSON lines.

    ``mode`` is ``"bar"`` (stderr, human), ``"json"`` (stdout, machine) or ``"none"``.
    """

    def __init__(self, mode: str = "bar", cancel: CancelToken | None = None,
                 stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.cancel = cancel or CancelToken()
        self._stream = stream
        self._min_interval = min_interval
        self._last_emit = 0.0
        self._stage: str | None = None
        self._stage_start = time.monotonic()
        self._bar_open = False

    @property
    def stream(self) -> TextIO:
        if self._stream is not None:
            return self._stream
        return sys.stdout if self.mode == "json" else sys.stderr

    def _emit_json(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(_clean(obj)) + "\n")
        self.stream.flush()

    def update(self, stage: str, step: int, total: int, force: bool = False, **extra: Any) -> None:
        """Report ``step`` of ``total`` in ``stage``; raises Cancelled if a cancel was requested."""
        self.cancel.raise_if_cancelled()
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_start, force = stage, now, True
        if not force and step < total and now - self._last_emit < self._min_interval:
            return
        self._last_emit = now
        elapsed = now - self._stage_start
        eta = elapsed / step * (total - step) if step > 0 and total > 0 else None
        if self.mode == "json":
            self._emit_json({"event": "progress", "stage": stage, "step": int(step), "total": int(total),
                             "elapsed": round(elapsed, 3), "eta": None if eta is None else round(eta, 1), **extra})
        elif self.mode == "bar":
            width = 28
            frac = min(1.0, step / total) if total else 0.0
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            info = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
            eta_s = f" eta {eta:5.0f}s" if eta is not None else ""
            self.stream.write(f"\r{stage:>10} [{bar}] {step}/{total}{eta_s} {info}\x1b[K")
            self._bar_open = True
            if step >= total:
                self.stream.write("\n")
                self._bar_open = False
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of information for people (JSON: a 'message' event)."""
        if self.mode == "json":
            self._emit_json({"event": "message", "message": text})
        elif self.mode == "bar":
            if self._bar_open:
                self.stream.write("\n")
                self._bar_open = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def done(self, **result: Any) -> None:
        if self.mode == "json":
            self._emit_json({"event": "done", **result})
        elif self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    def error(self, message: str) -> None:
        if self.mode == "json":
            self._emit_json({"event": "error", "message": message})
        elif self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

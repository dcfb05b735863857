"""One writer per project folder: the project lock.

Why: two ``inve train`` runs into one folder (or a train and a ``correct``, or a Ray retry
while the first attempt still runs) would interleave checkpoints, maps and metrics from
different runs. Whoever writes a project's trained state holds ``PROJECT/.inve.lock``.

The lock is a file created with ``O_EXCL`` holding who took it (pid, host, purpose, time),
so a refusal can name the holder. A holder refreshes the file's modification time every few
seconds from a daemon thread (a heartbeat). A lock is *stale*, and is taken over, when its
holder is gone: a dead pid on this host, or no heartbeat for :data:`STALE_SECONDS` (a holder
on another machine of a cluster, or a process killed with ``kill -9`` whose pid was reused).
Readers (``edit``, ``track``, ``info``) do not take the lock: every file a writer replaces is
replaced atomically, and what belongs together is checked by identity, not by timing.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from core.errors import InveError

LOCK_NAME = ".inve.lock"
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts as alive).

    The one probe of a pid in the engine (the project lock, temporary files of a writer,
    seam packages of a pass). Why not ``os.kill(pid, 0)`` everywhere: on Windows signal 0
    is ``CTRL_C_EVENT``, so the "probe" would send the process Ctrl-C; there the process
    is opened for a query and its exit code read instead.
    """
    if pid <= 0:
        return False
    if os.name == "nt":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _pid_alive_windows(pid: int) -> bool:
    import ctypes  # noqa: PLC0415

    query, still_active, access_denied = 0x1000, 259, 5  # PROCESS_QUERY_LIMITED_INFORMATION
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(query, False, pid)
    if not handle:  # no such process, or one we may not open (it exists)
        return ctypes.get_last_error() == access_denied  # type: ignore[attr-defined]
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def read_holder(project_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds the project's lock (``None`` when nobody does)."""
    path = Path(project_dir) / LOCK_NAME
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InveError(f"cannot read the project lock {path}: {exc.strerror or exc}") from None
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {}  # half-written by a holder that died while taking it
    holder["heartbeat_age"] = age
    return holder


def is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("heartbeat_age", 0.0) > STALE_SECONDS:
        return True
    if holder.get("host") == socket.gethostname():
        try:
            return not pid_alive(int(holder.get("pid", -1)))
        except (TypeError, ValueError):
            return True
    return False


def describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {when})"


class ProjectLock:
    """Exclusive right to write a project folder; use as a context manager.

    ``ProjectLock(dir, "train")`` refuses with an :class:`InveError` naming the holder when
    a live process holds the folder; a stale lock (see module docstring) is taken over.
    """

    def __init__(self, project_dir: str | os.PathLike, purpose: str) -> None:
        self.project_dir = Path(project_dir)
        self.path = self.project_dir / LOCK_NAME
        self.purpose = purpose
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    # -- taking and releasing -----------------------------------------------------------
    def acquire(self) -> "ProjectLock":
        try:
            self.project_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InveError(f"cannot create the project folder {self.project_dir}: {exc.strerror or exc}") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose, "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.project_dir)
                if holder is None:
                    continue  # released between our open and our read: try again
                if not is_stale(holder):
                    raise InveError(
                        f"{self.project_dir} is in use by {describe(holder)}; wait for it to finish or stop it "
                        f"(if no such process is running, delete {self.path})")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its holder is gone
                continue
            except OSError as exc:
                raise InveError(f"cannot write to the project folder {self.project_dir}: "
                                f"{exc.strerror or exc}") from None
            try:
                os.write(fd, (json.dumps(me) + "\n").encode())
            finally:
                os.close(fd)
            self._held = True
            self._thread = threading.Thread(target=self._beat, name="inve-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise InveError(f"could not take the project lock {self.path}: another process keeps taking it")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS + 1)
        self._held = False
        holder = None
        with contextlib.suppress(InveError):
            holder = read_holder(self.project_dir)
        # never remove a lock someone else took over (ours went stale while we were stopped)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> "ProjectLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def project_lock(project_dir: str | os.PathLike, purpose: str) -> Iterator[ProjectLock]:
    with ProjectLock(project_dir, purpose) as lock:
        yield lock

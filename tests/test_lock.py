"""The project lock: one writer at a time, a crashed writer does not lock the project forever."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import lock as L
from core.errors import InveError

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from core.lock import ProjectLock
lk = ProjectLock(sys.argv[1], "train").acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(InveError) as err:
            L.ProjectLock(tmp_path, "correct").acquire()
        msg = str(err.value)
        assert "in use by train" in msg and f"pid {proc.pid}" in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_writer_is_taken_over(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / L.LOCK_NAME).is_file(), "kill -9 leaves the lock file behind"
    with L.project_lock(tmp_path, "train") as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / L.LOCK_NAME).exists(), "released on exit"


def test_lock_without_heartbeat_is_stale_even_from_another_host(tmp_path: Path) -> None:
    path = tmp_path / L.LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "render-node-7", "purpose": "train", "started": 0}))
    with pytest.raises(InveError, match="render-node-7"):
        L.ProjectLock(tmp_path, "train").acquire()  # fresh heartbeat: respected
    old = time.time() - L.STALE_SECONDS - 5
    os.utime(path, (old, old))
    with L.project_lock(tmp_path, "train"):
        pass


def test_heartbeat_keeps_a_live_lock_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "HEARTBEAT_SECONDS", 0.05)
    with L.project_lock(tmp_path, "train") as lk:
        old = time.time() - 1000
        os.utime(lk.path, (old, old))
        time.sleep(0.3)
        holder = L.read_holder(tmp_path)
        assert holder is not None and holder["heartbeat_age"] < 5 and not L.is_stale(holder)


def test_one_pid_probe_for_the_engine_and_it_tells_the_living_from_the_gone() -> None:
    """The lock, a writer's temporary files and a pass's seam packages all ask core.lock.pid_alive
    (on Windows ``os.kill(pid, 0)`` would send the process Ctrl-C, so there is one probe to get right)."""
    from core import fsutil, segments

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert L.pid_alive(os.getpid()) and not L.pid_alive(child.pid) and not L.pid_alive(0)
    assert fsutil.pid_alive is L.pid_alive and segments.pid_alive is L.pid_alive

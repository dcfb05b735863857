"""`inve batch`: SHOTS.json checks, the no-Ray path, and a Ray batch that loses a worker mid-shot."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import batch
from core.cli import main
from core.project import Project

REPO = Path(__file__).resolve().parents[1]


def _clips(folder: Path, n: int, T: int = 4, size: tuple[int, int] = (48, 32)) -> list[Path]:
    from tests.synth import make_clip, write_clip

    return [write_clip(make_clip(T=T, size=size, camera="pan", seed=10 + i), folder / f"clip{i}") for i in range(n)]


def _write_shots(path: Path, shots: list[dict]) -> Path:
    path.write_text(json.dumps({"shots": shots}))
    return path


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_shots_json_problems_are_reported_together_before_anything_starts(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    shots = _write_shots(tmp_path / "SHOTS.json", [
        {"name": "ok", "video": "clip"},
        {"name": "../evil", "video": "clip"},
        {"name": "nofile", "video": "missing.mp4"},
        {"name": "OK", "video": "clip"},
        {"name": "badframes", "video": "clip", "frames": [5, 2]},
        {"name": "badbudget", "video": "clip", "iters": 0, "minutes": -1, "device": "tpu"},
        {"name": "typo", "video": "clip", "iter": 10},
        {"video": "clip"},
    ])
    root = tmp_path / "root"
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "none"]) != 0
    lines = _error_lines(capsys)
    assert "9 problems" in lines[0]
    expected = ["'../evil'", "folder name", "missing.mp4", "used twice", "'badframes'", "\"iters\"",
                "\"minutes\"", "\"device\"", "unknown field 'iter'", "shots[7]"]
    for needle in expected:
        assert any(needle in line for line in lines[1:]), (needle, lines)
    assert len(lines) == 10  # the headline and one line per problem
    assert not root.exists()  # nothing started

    # not JSON / wrong shape: one line
    bad = tmp_path / "BAD.json"
    bad.write_text("{\"shots\": ")
    assert main(["batch", str(bad), "-o", str(root), "--local", "--progress", "none"]) != 0
    assert len(_error_lines(capsys)) == 1
    bad.write_text("{\"shots\": []}")
    assert main(["batch", str(bad), "-o", str(root), "--local", "--progress", "none"]) != 0
    assert "empty" in _error_lines(capsys)[0]


def test_a_folder_that_is_not_the_shots_project_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "0000.png").write_bytes(b"")
    shots = _write_shots(tmp_path / "SHOTS.json", [{"name": "a", "video": "clip"}])
    mine = tmp_path / "root" / "a" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("user file")
    assert main(["batch", str(shots), "-o", str(tmp_path / "root"), "--local", "--progress", "none"]) != 0
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "not an inve project" in lines[0]
    assert sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"] and mine.read_text() == "user file"


def test_without_ray_it_says_how_to_get_it_and_local_runs_the_shots_in_turn(tmp_path, capsys, monkeypatch):
    clips = _clips(tmp_path, 2, T=3, size=(32, 24))
    shots = _write_shots(tmp_path / "SHOTS.json", [
        {"name": "one", "video": str(clips[0].relative_to(tmp_path)), "iters": 4, "max_side": 32},
        {"name": "two", "video": str(clips[1]), "frames": [1, 3], "iters": 5, "max_side": 32, "single_layer": True},
    ])
    root = tmp_path / "root"
    monkeypatch.setattr(batch, "ray_available", lambda: False)
    assert main(["batch", str(shots), "-o", str(root), "--progress", "none"]) != 0
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "pip install" in lines[0] and "[batch]" in lines[0] and "--local" in lines[0]
    assert not root.exists()

    capsys.readouterr()
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["shots"] == {"one": "done", "two": "done"}
    assert {e["shot"] for e in events if e["event"] == "progress"} == {"one", "two"}
    for name, iters, frames in (("one", 4, [0, 1, 2]), ("two", 5, [1, 2])):
        project = Project.open(root / name)
        assert project.is_trained and project.info.frames == frames
        assert project.metrics()["iterations"] == iters
        assert not (root / name / ".inve.lock").exists()
    stamps = {n: (root / n / Project.CHECKPOINT).stat().st_mtime_ns for n in ("one", "two")}

    # the same command again: nothing to do
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["shots"] == {"one": "skipped", "two": "skipped"}
    assert not any(e["event"] == "progress" for e in events)
    assert stamps == {n: (root / n / Project.CHECKPOINT).stat().st_mtime_ns for n in ("one", "two")}

    # a larger budget for one shot: that shot resumes from its checkpoint, the other is skipped
    doc = json.loads(shots.read_text())
    doc["shots"][0]["iters"] = 7
    shots.write_text(json.dumps(doc))
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["shots"] == {"one": "done", "two": "skipped"}
    running = [e for e in events if e.get("state") == "running"]
    assert [(e["shot"], e["resumed_from"]) for e in running] == [("one", 4)]
    assert Project.open(root / "one").metrics()["iterations"] == 7


def test_a_shot_whose_frames_grew_adds_them_to_its_project(tmp_path, capsys):
    """A strip whose trim was widened after Train All: the shot's frames contain its project's;
    the batch resumes that project with the wider range (new segments, as ``inve train --resume
    --frames A:B``), keeping what was trained, instead of refusing or starting over."""
    clips = _clips(tmp_path, 1, T=6, size=(32, 24))
    project = tmp_path / "ws" / "project"
    shot = {"name": "a", "video": str(clips[0]), "frames": [1, 4], "iters": 4, "max_side": 32, "single_layer": True,
            "project": str(project)}
    shots = _write_shots(tmp_path / "SHOTS.json", [shot])
    root = tmp_path / "root"
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "none"]) == 0
    assert Project.open(project).info.frames == [1, 2, 3]
    trained = (project / Project.CHECKPOINT).read_bytes()

    _write_shots(shots, [{**shot, "frames": [0, 6]}])
    capsys.readouterr()
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["shots"] == {"a": "done"}
    queued = [e for e in events if e.get("event") == "shot" and e.get("state") == "queued"]
    assert queued and queued[0]["message"] == "resumes"
    p = Project.open(project)
    assert p.info.frames == list(range(6)) and p.is_segmented and p.is_trained
    segs = {tuple(s["frames"]): s["name"] for s in p.info.segments}
    assert (1, 4) in segs and min(a for a, _ in segs) == 0 and max(b for _, b in segs) == 6, segs
    kept = next(sub for sub in p.segments() if sub.info.frames == [1, 2, 3])
    assert (kept.path / Project.CHECKPOINT).read_bytes() == trained, "the trained frames keep their training"

    # frames that do not contain the project's are still refused, naming both ranges
    _write_shots(shots, [{**shot, "frames": [2, 6]}])
    capsys.readouterr()
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "none"]) != 0
    (line,) = _error_lines(capsys)
    assert "holds frames 0:6" in line and "not 2:6" in line, line


def test_a_shot_with_its_own_project_folder_trains_there_and_two_shots_never_share_one(tmp_path, capsys):
    """The Blender add-on's layout: every strip's project is ``<workspace>/project``, not ROOT/<name>."""
    clips = _clips(tmp_path, 1, T=3, size=(32, 24))
    own = tmp_path / "blend" / "inve" / "clip0_ab_0-3" / "project"
    shots = _write_shots(tmp_path / "SHOTS.json", [
        {"name": "a", "video": str(clips[0]), "iters": 3, "max_side": 32, "project": str(own)},
        {"name": "b", "video": str(clips[0]), "iters": 3, "max_side": 32, "project": "blend/inve/clip0_ab_0-3/project"},
    ])
    root = tmp_path / "root"
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "none"]) != 0
    lines = _error_lines(capsys)
    assert any("'b'" in line and "'a'" in line and "project folder" in line for line in lines), lines
    assert not own.exists()

    shots = _write_shots(tmp_path / "SHOTS.json", json.loads(shots.read_text())["shots"][:1])
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["shots"] == {"a": "done"}
    assert Project.open(own).metrics()["iterations"] == 3 and not (root / "a").exists()
    assert main(["batch", str(shots), "-o", str(root), "--local", "--progress", "json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["shots"] == {"a": "skipped"}


class _Driver:
    """`inve batch --progress json` in a subprocess; events read as they come, with arrival times."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen([sys.executable, "-m", "core", "batch", *args, "--progress", "json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.junk: list[str] = []  # stdout lines that are not JSON: the protocol allows none
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.junk.append(line)
        self.events.put(None)

    def next(self, deadline: float) -> dict | None:
        e = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
        if e is not None:
            self.seen.append(e)
        return e

    def finish(self, deadline: float) -> list[dict]:
        while self.next(deadline) is not None:
            pass
        self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return self.seen

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ray_batch_survives_a_killed_worker_and_a_rerun_does_nothing(tmp_path):
    pytest.importorskip("ray")
    clips = _clips(tmp_path, 3)
    ckpt_s, iters = 1.0, 70
    shots = _write_shots(tmp_path / "SHOTS.json", [
        {"name": n, "video": f"clip{i}", "iters": iters, "max_side": 48, "checkpoint_seconds": ckpt_s}
        for i, n in enumerate(("a", "b", "c"))])
    root = tmp_path / "root"
    t0 = time.monotonic()
    driver = _Driver([str(shots), "-o", str(root), "--cpus", "2"])  # a local cluster: two workers
    deadline = time.monotonic() + 240
    try:
        # wait until shot "a" has trained for a few checkpoint intervals, then kill its worker
        pid = train_start = None
        while True:
            e = driver.next(deadline)
            assert e is not None, driver.proc.stderr.read()
            if e.get("shot") != "a":
                continue
            if e["event"] == "shot" and e["state"] == "running":
                pid = e["pid"]
            if e["event"] == "progress" and e["stage"] == "train":
                train_start = train_start or e["time"]
                if e["time"] - train_start > 3 * ckpt_s and e["iteration"] >= 10:
                    killed_at_iteration = e["iteration"]
                    break
        os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        events = driver.finish(deadline)
    finally:
        driver.kill()
    assert driver.proc.returncode == 0, driver.proc.stderr.read()
    assert not driver.junk, driver.junk
    assert events[-1]["event"] == "done" and events[-1]["shots"] == {"a": "done", "b": "done", "c": "done"}
    wall = time.monotonic() - t0

    # Ray retried shot "a" in a new worker, which resumed from a's last checkpoint
    runs = [e for e in events if e["event"] == "shot" and e["shot"] == "a" and e["state"] == "running"]
    assert len(runs) == 2 and runs[1]["attempt"] == 2 and runs[1]["pid"] != pid
    resumed = runs[1]["resumed_from"]
    # the checkpoint is at most one interval old: at least the iteration reported one interval
    # (plus a step and a save) before the kill
    before = [e["iteration"] for e in events if e.get("shot") == "a" and e["event"] == "progress"
              and e["stage"] == "train" and e["time"] <= t_kill - ckpt_s - 1.0 and e["time"] < runs[1]["time"]]
    assert resumed is not None and resumed >= max(before, default=1) and resumed > 0
    lost = killed_at_iteration - resumed
    print(f"\nshot a: killed at iteration >= {killed_at_iteration}, resumed from {resumed} "
          f"(lost {lost} iterations, checkpoint every {ckpt_s} s); batch wall {wall:.1f} s")
    for name in ("a", "b", "c"):
        project = Project.open(root / name)
        assert project.is_trained and project.metrics()["iterations"] == iters
        assert not (root / name / ".inve.lock").exists()

    # rerunning the same command does nothing (no Ray cluster is even started)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    t1 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "core", "batch", str(shots), "-o", str(root), "--cpus", "2",
                           "--progress", "json"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.splitlines()[-1])
    assert done["shots"] == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    print(f"rerun: {time.monotonic() - t1:.1f} s, all skipped")

"""Train All Strips without Blender: strips -> SHOTS.json and shot names, engine events ->
per-strip states (``inve_blender/io/batch.py``), and the batch as the add-on's worker process
against the real engine (``inve batch --local``)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from core import batch as engine_batch
from core.project import Project
from inve_blender.io import batch
from inve_blender.io.worker import engine_command, engine_env

REPO = Path(__file__).resolve().parents[1]


def _clips(folder: Path, n: int, T: int = 3, size: tuple[int, int] = (32, 24)) -> list[Path]:
    from tests.synth import make_clip, write_clip

    return [write_clip(make_clip(T=T, size=size, camera="pan", seed=20 + i), folder / f"clip{i}") for i in range(n)]


def test_shot_names_are_unique_ignoring_case_and_usable_as_folders():
    texts = ["pan.mp4", "Pan.mp4", "pan.mp4", "../../etc", "  ", "con", "COM3.001", "é clip/β", "x" * 90,
             "x" * 90, ".hidden", "a:b*c?"]
    names = batch.unique_names(texts)
    assert len({n.lower() for n in names}) == len(names)
    for n in names:
        assert engine_batch.NAME_RE.match(n), n  # the engine's own rule
        assert n.lower().split(".")[0] not in engine_batch._RESERVED, n
        assert "/" not in n and "\\" not in n and ".." not in n.split("/")
    assert names[:3] == ["pan.mp4", "Pan.mp4-2", "pan.mp4-3"]
    assert names[4] == "strip" and names[5] == "strip_con" and names[6].startswith("strip_")
    assert len(names[8]) == 64 and len(names[9]) == 64 and names[9].endswith("-2")


def test_strips_of_one_project_share_a_shot_and_the_doc_passes_the_engines_checks(tmp_path):
    clips = _clips(tmp_path, 2)
    ws = tmp_path / "inve"
    strips = [
        batch.StripShot("pan", str(clips[0]), (0, 3), str(ws / "clip0_aa_0-3" / "project")),
        batch.StripShot("pan.001", str(clips[0]), (1, 3), str(ws / "clip0_aa_0-3" / "project")),  # a blade cut's half
        batch.StripShot("PAN", str(clips[1]), (1, 3), str(ws / "clip1_bb_1-3" / "project")),
        batch.StripShot("con", str(clips[1]), (0, 2), str(ws / "clip1_bb_0-2" / "project")),
    ]
    p = batch.plan(strips)
    assert p.names == ["pan", "PAN-2", "strip_con"]
    assert p.strips == {"pan": ["pan", "pan.001"], "PAN-2": ["PAN"], "strip_con": ["con"]}
    assert p.shot_of("pan.001") == "pan" and p.shot_of("nope") is None
    doc = batch.shots_doc(p, max_side=32, minutes=0.5, device="cpu", single_layer=True)
    shots_file = tmp_path / "elsewhere" / "SHOTS.json"
    shots_file.parent.mkdir()
    shots_file.write_text(json.dumps(doc))
    loaded = engine_batch.load_shots(shots_file)  # the engine accepts it as written
    assert [s.name for s in loaded] == p.names
    got = {s.name: (s.video, s.frames, s.project, s.max_side, s.minutes, s.device, s.single_layer) for s in loaded}
    assert got["pan"] == (clips[0].resolve(), (0, 3), (ws / "clip0_aa_0-3" / "project").resolve(), 32, 0.5, "cpu",
                          True)
    assert got["PAN-2"][1] == (1, 3) and got["strip_con"][1] == (0, 2)


def test_a_shot_trains_every_frame_its_strips_show():
    """A strip whose trim was widened after training, next to a duplicate that was not: their
    shared project's shot takes the wider range (the engine then adds the new frames to it)."""
    proj = "/w/clip0_aa_2-6/project"
    p = batch.plan([batch.StripShot("dup", "/c.mp4", (2, 6), proj),
                    batch.StripShot("widened", "/c.mp4", (0, 8), proj),
                    batch.StripShot("other", "/c.mp4", (8, 9), "/w/clip0_aa_8-9/project")])
    assert [s.frames for s in p.shots] == [(0, 8), (8, 9)]
    assert p.strips == {"dup": ["dup", "widened"], "other": ["other"]}


def test_ray_address_local_fallback_and_notice():
    args, note = batch.batch_args("S.json", "/r", "", ray_installed=True)
    assert args == ["S.json", "-o", "/r", "--progress", "json"] and note == ""
    args, note = batch.batch_args("S.json", "/r", " 10.0.0.5:6379 ", ray_installed=True)
    assert args[-2:] == ["--address", "10.0.0.5:6379"] and note == ""
    args, note = batch.batch_args("S.json", "/r", "10.0.0.5:6379", ray_installed=False)
    assert "--local" in args and "--address" not in args and "Ray is not installed" in note


def test_events_become_one_state_per_shot():
    t = batch.BatchTracker(["a", "b", "c"])
    assert [s.line() for s in t.shots.values()] == ["queued"] * 3
    assert not t.apply({"event": "progress", "shot": "zzz", "stage": "train", "step": 1, "total": 2})
    assert not t.apply({"event": "done", "shots": {}})
    t.apply({"event": "shot", "shot": "b", "state": "queued", "message": "resumes"})
    t.apply({"event": "shot", "shot": "a", "state": "running", "attempt": 1, "resumed_from": None})
    t.apply({"event": "progress", "shot": "a", "stage": "train", "step": 450, "total": 1000, "psnr": 28.1})
    assert t.shots["a"].line() == "training train 45% | PSNR 28.10 dB"
    assert t.shots["b"].line() == "queued | resumes"
    # a worker died: Ray retries the shot, which resumes from its checkpoint
    t.apply({"event": "shot", "shot": "a", "state": "running", "attempt": 2, "resumed_from": 300})
    t.apply({"event": "progress", "shot": "a", "stage": "train", "step": 500, "total": 1000})
    assert t.shots["a"].line() == "training train 50% | PSNR 28.10 dB | attempt 2, from iteration 300"
    assert t.shots["a"].resumed_from == 300
    t.apply({"event": "shot", "shot": "a", "state": "done", "metrics": {"psnr": 31.234}})
    t.apply({"event": "progress", "shot": "a", "stage": "train", "step": 1, "total": 1000})  # late: ignored
    assert t.shots["a"].line() == "done | PSNR 31.23 dB" and t.shots["a"].fraction == 1.0
    t.apply({"event": "shot", "shot": "b", "state": "failed", "message": "cannot read x.mp4: bad\nTraceback..."})
    assert t.shots["b"].line() == "failed: cannot read x.mp4: bad"
    t.apply({"event": "shot", "shot": "c", "state": "skipped", "message": "already trained"})
    assert t.shots["c"].line() == "done | already trained"
    assert t.summary() == "2 done, 1 failed" and t.fraction == pytest.approx(2 / 3)
    # what the .blend keeps: every strip of every shot, in the batch's order
    rows = batch.strip_rows(t, {"a": ["shot a", "shot a.001"], "b": ["b"], "gone": ["x"], "c": ["c"]})
    assert rows == [("shot a", "done", "done | PSNR 31.23 dB"), ("shot a.001", "done", "done | PSNR 31.23 dB"),
                    ("b", "failed", "failed: cannot read x.mp4: bad"), ("c", "done", "done | already trained")]


def test_a_cancelled_or_broken_batch_ends_every_open_shot():
    t = batch.BatchTracker(["a", "b", "c"])
    t.apply({"event": "shot", "shot": "a", "state": "done"})
    t.apply({"event": "progress", "shot": "b", "stage": "train", "step": 10, "total": 1000})
    t.end(cancelled=True, error="cancelled")
    assert [s.state for s in t.shots.values()] == ["done", "cancelled", "cancelled"]
    assert "checkpoint is kept" in t.shots["b"].message and t.shots["c"].message == "not started"
    t = batch.BatchTracker(["a"])
    t.end(cancelled=False, error="cannot connect to the Ray cluster at x: refused\nmore")
    assert t.shots["a"].line() == "failed: cannot connect to the Ray cluster at x: refused"


def _worker(shots_file: Path, root: Path, names: list[str]) -> batch.BatchWorker:
    args, _ = batch.batch_args(str(shots_file), str(root), "", ray_installed=False)
    env = engine_env([str(REPO)])
    env["OMP_NUM_THREADS"] = "1"
    # the engine's Python (the Blender 4.5 / 5.2 suites run in a bpy venv without torch)
    engine = os.environ.get("INVE_TEST_ENGINE_PYTHON") or sys.executable
    return batch.BatchWorker(engine_command(engine, "batch", *args), names, env=env, title="Train All")


def test_the_batch_worker_trains_each_strip_into_its_own_project_cancel_and_resume(tmp_path):
    """The engine for real (``--local``): per-shot states from its events, projects where
    Train would put them; cancel keeps the checkpoint and Train All again resumes it."""
    # reads checkpoints in this process: runs in .venv's suite, not in the bpy-only venvs
    pytest.importorskip("torch")
    clips = _clips(tmp_path, 2)
    ws = tmp_path / "inve"
    strips = [batch.StripShot("pan", str(clips[0]), (0, 3), str(ws / "a_0-3" / "project")),
              batch.StripShot("pan.001", str(clips[1]), (1, 3), str(ws / "b_1-3" / "project"))]
    p = batch.plan(strips)
    doc = batch.shots_doc(p, max_side=32, minutes=5.0, device="cpu", single_layer=False)
    doc["shots"][0]["iters"] = 20000  # long enough to be cancelled while training
    doc["shots"][0]["checkpoint_seconds"] = 0.5
    doc["shots"][1]["iters"] = 6
    shots_file = tmp_path / "SHOTS.json"
    shots_file.write_text(json.dumps(doc))
    for s in strips:
        os.makedirs(os.path.dirname(s.project), exist_ok=True)

    w = _worker(shots_file, tmp_path / "root", p.names).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        w.poll()
        sh = w.tracker.shots["pan"]
        if sh.stage == "train" and sh.step > 0:
            break
        assert not w.state.finished, (w.state, w.stderr_tail)
        time.sleep(0.05)
    time.sleep(1.0)  # past one checkpoint interval
    w.cancel()
    st = w.run_to_completion(timeout=120)
    assert st.finished and st.cancelled, (st, w.stderr_tail)
    lines = {n: s.line() for n, s in w.tracker.shots.items()}
    assert lines["pan"].startswith("cancelled") and "checkpoint" in lines["pan"] and lines["pan.001"] == "cancelled: not started", lines
    assert "Train All again resumes" in batch.finished_line(w.tracker, st)
    step = engine_batch.checkpoint_step(Path(strips[0].project))
    assert step is not None and step > 0

    # Train All again (a smaller budget to finish quickly): the first shot resumes, both finish
    doc["shots"][0]["iters"] = step + 5
    shots_file.write_text(json.dumps(doc))
    w = _worker(shots_file, tmp_path / "root", p.names)
    st = w.run_to_completion(timeout=300)
    assert st.ok, (st, w.stderr_tail)
    assert w.tracker.counts() == {"done": 2}
    for s, iters, frames in ((strips[0], step + 5, [0, 1, 2]), (strips[1], 6, [1, 2])):
        project = Project.open(s.project)
        assert project.is_trained and project.info.frames == frames and project.metrics()["iterations"] == iters
        assert w.tracker.shots[p.shot_of(s.strip)].psnr == pytest.approx(project.metrics()["psnr"], abs=0.01)
    assert not (tmp_path / "root" / "pan").exists()
    assert batch.finished_line(w.tracker, st) == "Train All: 2 of 2 done"
    assert st.fraction == 1.0 and st.status_text() == "Train All: done"

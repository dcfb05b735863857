"""`inve train` / `info` / `atlas`: errors a user can make, and what a finished project holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.project import Project

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from tests.synth import make_clip, write_clip

    clip = make_clip(T=6, size=(64, 48), camera="pan", seed=3)
    return write_clip(clip, tmp_path_factory.mktemp("clip") / "frames")


def test_missing_video(tmp_path):
    proc = run_cli("train", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "proj"))
    assert_one_line_error(proc, "nope.mp4")
    assert not (tmp_path / "proj").exists()


def test_unreadable_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a movie")
    proc = run_cli("train", str(bad), "-o", str(tmp_path / "proj"))
    assert_one_line_error(proc, "bad.mp4")
    assert not (tmp_path / "proj").exists()


def test_zero_frame_video(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("train", str(empty), "-o", str(tmp_path / "proj"))
    assert_one_line_error(proc)
    assert not (tmp_path / "proj").exists()


@pytest.mark.parametrize("frames", ["5", "a:b", "4:2", "-1:3", "100:200"])
def test_bad_frame_range(tmp_path, tiny_clip, frames):
    proc = run_cli("train", str(tiny_clip), "-o", str(tmp_path / "proj"), "--frames", frames)
    assert_one_line_error(proc, "frames" if frames != "100:200" else "100")
    assert not (tmp_path / "proj").exists()


def test_refuses_a_folder_holding_other_files(tmp_path, tiny_clip):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    proc = run_cli("train", str(tiny_clip), "-o", str(out), "--iters", "2")
    assert_one_line_error(proc, "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_train_resume_info_atlas_and_refusal(tmp_path, tiny_clip, capsys):
    proj = tmp_path / "proj"
    assert main(["train", str(tiny_clip), "-o", str(proj), "--iters", "6", "--progress", "none"]) == 0
    project = Project.open(proj)
    assert project.is_trained
    info = project.info
    assert info.frames == list(range(6)) and info.source_size == (64, 48)
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and np.isfinite(metrics["psnr"]) and metrics["train_seconds"] > 0
    maps = project.maps()
    assert maps.alpha.shape == (6, 48, 64)
    assert all(maps.uv[layer].shape == (6, 48, 64, 2) for layer in maps.layers)
    assert project.frames().shape == (6, 48, 64, 3)

    # a second train into the same project refuses without --resume and changes nothing
    before = (proj / "checkpoint.pt").stat().st_mtime_ns
    proc = run_cli("train", str(tiny_clip), "-o", str(proj), "--iters", "8")
    assert_one_line_error(proc, "--resume")
    assert (proj / "checkpoint.pt").stat().st_mtime_ns == before

    # --resume continues to the new total budget
    capsys.readouterr()
    assert main(["train", str(tiny_clip), "-o", str(proj), "--iters", "9", "--resume", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["iterations"] == 9
    assert any(e["event"] == "progress" and e["stage"] == "train" for e in events)

    assert main(["info", str(proj)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["trained"] and shown["metrics"]["iterations"] == 9 and shown["frames"] == list(range(6))
    # the per-frame confidence read-out: one entry per frame, flagged frames among them
    conf = shown["confidence"]
    assert conf["frames"] == list(range(6)) and len(conf["psnr"]) == 6 and len(conf["cycle_error_px"]) == 6
    assert set(conf["check_frames"]) <= set(range(6)) and conf["summary"]
    assert abs(shown["metrics"]["atlas_psnr"] - shown["metrics"]["psnr"]) < 3.0

    out = tmp_path / "atlases"
    assert main(["atlas", str(proj), "-o", str(out)]) == 0
    import imageio.v3 as iio

    for layer in maps.layers:
        img = iio.imread(out / f"atlas_{layer}.png")
        assert img.shape[:2] == maps.atlas[layer].shape[:2]


def test_seeded_cpu_training_is_deterministic(tmp_path, tiny_clip):
    import torch

    for name in ("a", "b"):
        assert main(["train", str(tiny_clip), "-o", str(tmp_path / name), "--iters", "4", "--seed", "7",
                     "--progress", "none"]) == 0
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path, tiny_clip, monkeypatch, capsys):
    import torch

    import core.losses as losses

    proj = tmp_path / "proj"
    assert main(["train", str(tiny_clip), "-o", str(proj), "--iters", "3", "--progress", "none"]) == 0
    good = torch.load(proj / "checkpoint.pt", weights_only=False)
    monkeypatch.setattr(losses, "rgb_loss", lambda pred, target: torch.tensor(float("nan")) + pred.sum() * 0)
    capsys.readouterr()
    assert main(["train", str(tiny_clip), "-o", str(proj), "--iters", "6", "--resume", "--progress", "none"]) != 0
    err = capsys.readouterr().err
    assert "diverged" in err and "non-finite" in err
    kept = torch.load(proj / "checkpoint.pt", weights_only=False)
    assert kept["step"] == good["step"] == 3


def test_cancel_saves_a_resumable_checkpoint(tmp_path, tiny_clip):
    from core.errors import Cancelled
    from core.progress import Progress
    from core.train import TrainConfig, train_project

    progress = Progress("none")
    calls = {"n": 0}
    original = progress.update

    def cancel_after_some_steps(stage, step, total, **kw):
        if stage == "train":
            calls["n"] += 1
            if calls["n"] == 4:
                progress.cancel.cancel()
        original(stage, step, total, **kw)

    progress.update = cancel_after_some_steps  # type: ignore[method-assign]
    proj = tmp_path / "proj"
    with pytest.raises(Cancelled):
        train_project(tiny_clip, proj, TrainConfig(iters=50), progress)
    import torch

    state = torch.load(proj / "checkpoint.pt", weights_only=False)
    assert 3 <= state["step"] < 50
    assert not (proj / "maps").exists() and not (proj / "maps.npz").exists()
    assert main(["train", str(tiny_clip), "-o", str(proj), "--resume", "--iters", str(state["step"] + 2),
                 "--progress", "none"]) == 0
    assert Project.open(proj).metrics()["iterations"] == state["step"] + 2


def test_cancel_while_loading_leaves_a_resumable_project(tmp_path, tiny_clip):
    from core.errors import Cancelled
    from core.progress import Progress
    from core.train import TrainConfig, train_project

    progress = Progress("none")
    original = progress.update

    def cancel_in_load(stage, step, total, **kw):
        if stage == "load" and step >= 2:
            progress.cancel.cancel()
        original(stage, step, total, **kw)

    progress.update = cancel_in_load  # type: ignore[method-assign]
    proj = tmp_path / "proj"
    with pytest.raises(Cancelled):
        train_project(tiny_clip, proj, TrainConfig(iters=3), progress)
    assert (proj / "project.json").is_file() and not (proj / "cache" / "frames" / "meta.json").exists()
    proc = run_cli("train", str(tiny_clip), "-o", str(proj), "--iters", "3")
    assert_one_line_error(proc, "--resume")
    assert main(["train", str(tiny_clip), "-o", str(proj), "--resume", "--progress", "none"]) == 0
    assert Project.open(proj).metrics()["iterations"] == 3

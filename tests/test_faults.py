"""Fault injection: every fault ends in one clear line (and an ``error`` event under
``--progress json``) or a correct result, and nothing a user made is changed.

Cases (README "Reliability" lists them): read-only and full destinations (a real tmpfs where
this process may mount one, else an injected EROFS/ENOSPC), kill -9 at each stage, two
writers into one project, foreign and damaged checkpoints/maps/project files, extreme edit
values, bad command-line values. Projects are tiny (6 frames of 64x48, a few iterations).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core import fsutil
from core.cli import main
from core.project import Project

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def popen(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "core", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def in_process(capsys, *args: str) -> tuple[int, str, list[dict]]:
    """Run the CLI in this process (fast); returns (status, stderr, json events)."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    return rc, err, events


def digest_tree(folder: Path) -> dict[str, str]:
    """Checksums of the files a person sees (inve's hidden markers may record a refusal)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".inve")}


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m", readonly: bool = False):
    """A real tmpfs (read-only or tiny) at ``where``; ``None`` where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from tests.synth import make_clip, write_clip

    c = make_clip(T=6, size=(64, 48), camera="pan", seed=3)
    return write_clip(c, tmp_path_factory.mktemp("clip") / "frames")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clip) -> Path:
    proj = tmp_path_factory.mktemp("trained") / "proj"
    assert main(["train", str(clip), "-o", str(proj), "--iters", "8", "--max-side", "64", "--progress", "none"]) == 0
    return proj


@pytest.fixture()
def project(tmp_path, trained) -> Path:
    p = tmp_path / "proj"
    shutil.copytree(trained, p, symlinks=True)
    return p


@pytest.fixture()
def edits(tmp_path) -> Path:
    e = tmp_path / "edits" / "EDITS.json"
    e.parent.mkdir()
    e.write_text(json.dumps({"version": 1, "layers": [
        {"type": "sketch", "frame": 0, "strokes": [{"points": [[10, 10], [50, 30]], "color": [1, 0, 0, 1],
                                                    "width": 3}]}]}))
    return e


# -- the output rule ------------------------------------------------------------------------

def test_painted_atlas_is_never_overwritten(tmp_path, project, capsys):
    out = tmp_path / "atlas"
    assert in_process(capsys, "atlas", str(project), "-o", str(out))[0] == 0
    assert in_process(capsys, "atlas", str(project), "-o", str(out))[0] == 0  # unchanged: replaced
    painted = out / "atlas_bg.png"
    painted.write_bytes(painted.read_bytes() + b"painted")
    before = digest_tree(out)
    rc, err, _ = in_process(capsys, "atlas", str(project), "-o", str(out))
    assert rc != 0 and "changed after inve wrote it" in err and len(err.strip().splitlines()) == 1
    assert digest_tree(out) == before  # nothing touched, not even the other atlases


def test_outputs_that_are_refused_before_any_work(tmp_path, project, edits, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    cases = [
        (str(tmp_path / "out.webm"), "not supported"),
        (str(project), "project folder"),
        (str(user), "did not write"),
        (str(project / "x.mp4"), "inside an inve project"),
    ]
    for out, needle in cases:
        rc, err, events = in_process(capsys, "edit", str(project), "--edits", str(edits), "-o", out,
                                     "--progress", "json")
        assert rc != 0 and needle in err and len(err.strip().splitlines()) == 1, (out, err)
        assert events[-1]["event"] == "error"
    assert not (tmp_path / "out.webm").exists()
    assert digest_tree(user) == {"holiday.jpg": hashlib.sha256(b"precious").hexdigest()}
    # a user's TRACKS.json is not replaced, even with --overwrite
    pts = tmp_path / "POINTS.json"
    pts.write_text(json.dumps({"points": [{"id": "p", "frame": 0, "x": 20.0, "y": 20.0}]}))
    mine = tmp_path / "TRACKS.json"
    mine.write_text("my own tracks")
    rc, err, _ = in_process(capsys, "track", str(project), "--points", str(pts), "-o", str(mine), "--overwrite")
    assert rc != 0 and "inve did not write" in err and mine.read_text() == "my own tracks"


def test_read_only_destination(tmp_path, project, edits, clip, capsys, monkeypatch):
    ro = tmp_path / "ro"
    with tmpfs(ro, readonly=True) as mounted:
        if mounted is None:  # no mount permitted: inject the error every write would get
            ro.mkdir(exist_ok=True)
            real = os.open

            def deny(path, flags, *a, **k):
                if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    raise OSError(errno.EROFS, "Read-only file system", str(path))
                return real(path, flags, *a, **k)

            monkeypatch.setattr(os, "open", deny)
        for args in (["atlas", str(project), "-o", str(ro / "atlas")],
                     ["edit", str(project), "--edits", str(edits), "-o", str(ro / "pngs"), "--progress", "json"],
                     ["edit", str(project), "--edits", str(edits), "-o", str(ro / "m.mp4"), "--progress", "json"],
                     ["track", str(project), "--points", str(_points(tmp_path)), "-o", str(ro / "t.json")],
                     ["train", str(clip), "-o", str(ro / "p"), "--iters", "2", "--progress", "json"]):
            t0 = time.monotonic()
            rc, err, events = in_process(capsys, *args)
            assert rc != 0 and "read-only" in err and len(err.strip().splitlines()) == 1, (args, err)
            assert time.monotonic() - t0 < 20  # refused up front, not after rendering
            if "--progress" in args:
                assert events and events[-1]["event"] == "error"


def _points(tmp_path: Path) -> Path:
    p = tmp_path / "POINTS.json"
    if not p.exists():
        p.write_text(json.dumps({"points": [{"id": "p", "frame": 0, "x": 20.0, "y": 20.0}]}))
    return p


def test_disk_full_mid_sequence(tmp_path, project, edits, capsys, monkeypatch):
    full = tmp_path / "full"
    with tmpfs(full, size="24k") as mounted:
        out = full / "pngs"
        if mounted is None:  # inject ENOSPC on the third frame
            calls = {"n": 0}
            real = os.replace

            def replace(src, dst, *a, **k):
                if str(dst).startswith(str(full)) and str(dst).endswith(".png"):
                    calls["n"] += 1
                    if calls["n"] >= 3:
                        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
                return real(src, dst, *a, **k)

            monkeypatch.setattr(os, "replace", replace)
        rc, err, events = in_process(capsys, "edit", str(project), "--edits", str(edits), "-o", str(out),
                                     "--progress", "json")
        assert rc != 0 and "disk is full" in err and len(err.strip().splitlines()) == 1, err
        assert events[-1]["event"] == "error"
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if fsutil.TMP_TAG in n]  # nothing half-written
        state = fsutil.output_dir_state(out)
        assert state is not None and state["complete"] is False  # marked incomplete
        written = [n for n in names if n.endswith(".png")]
        assert len(written) < 6 and set(written) <= set(state["files"])


def test_interrupted_sequence_is_marked_and_the_next_run_replaces_it(tmp_path):
    from core.video import write_png_sequence

    out = tmp_path / "seq"
    img = np.full((8, 8, 3), 7, np.uint8)
    script = (f"import time, numpy as np\nfrom core.video import write_png_sequence\n"
              f"def gen():\n    for i in range(50):\n        yield i, np.full((8, 8, 3), i, np.uint8)\n"
              f"        time.sleep(0.05)\nwrite_png_sequence({str(out)!r}, gen())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 30
    while len(list(out.glob("*.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = fsutil.output_dir_state(out)
    assert state["complete"] is False and len(state["files"]) >= 4  # says so, and which frames
    # leftovers of the killed run (its pid, or names from before pids) go; a frame another run
    # still writing there wrote ahead under a temporary name stays for it to move into place
    from core.video import PNGFrameWriter

    live = PNGFrameWriter(out)(img)  # (this process: alive)
    dead = [out / f".0009{fsutil.TMP_TAG}{proc.pid}-x1.png", out / f".0008{fsutil.TMP_TAG}old1.png"]
    for p in dead:
        p.write_bytes(b"left over")
    paths = write_png_sequence(out, [(i, img) for i in range(3)])
    assert Path(live.path).is_file() and not any(p.exists() for p in dead)
    live.discard()
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png"]
    assert fsutil.output_dir_state(out)["complete"] is True


# -- the project: lock, identity, damage ----------------------------------------------------

def test_two_trains_into_one_folder(tmp_path, clip):
    proj = tmp_path / "proj"
    a = popen("train", str(clip), "-o", str(proj), "--iters", "100000", "--max-side", "64", "--progress", "none")
    try:
        deadline = time.monotonic() + 60
        while not (proj / ".inve.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        b = cli("train", str(clip), "-o", str(proj), "--iters", "2", "--progress", "none")
        one_line(b, "in use by train")
        c = cli("train", str(clip), "-o", str(proj), "--resume", "--iters", "2", "--progress", "none")
        one_line(c, "in use by train")
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    # the first run was killed -9: its lock is stale (dead pid) and a resume takes over
    if (proj / Project.INFO).exists():
        r = cli("train", str(clip), "-o", str(proj), "--resume", "--iters", "3", "--progress", "none")
        assert r.returncode == 0, r.stderr
        assert json.loads(cli("info", str(proj)).stdout)["state"] == "trained"


def test_killed_resume_leaves_needs_bake_and_resume_rebakes(tmp_path, project, clip, edits, capsys):
    """kill -9 after a checkpoint, before the bake: simulated by writing that checkpoint."""
    import torch

    from core.checkpoint import save_checkpoint

    proj = Project.open(project)
    state = torch.load(project / Project.CHECKPOINT, weights_only=False)
    state["step"] += 5
    save_checkpoint(project / Project.CHECKPOINT, state, proj.info)
    info = json.loads(cli("info", str(project)).stdout)
    assert info["state"] == "needs bake" and info["trained"] is False and "--resume" in info["next_step"]
    rc, err, _ = in_process(capsys, "edit", str(project), "--edits", str(edits), "-o", str(tmp_path / "o"))
    assert rc != 0 and "--resume" in err and len(err.strip().splitlines()) == 1
    # the budget (8 iterations) is already spent: --resume only re-bakes
    assert in_process(capsys, "train", str(clip), "-o", str(project), "--resume", "--progress", "none")[0] == 0
    assert json.loads(cli("info", str(project)).stdout)["state"] == "trained"
    assert in_process(capsys, "edit", str(project), "--edits", str(edits), "-o", str(tmp_path / "o"))[0] == 0


def test_foreign_checkpoint_is_refused(tmp_path, project, clip, edits, capsys):
    other = tmp_path / "other"
    assert main(["train", str(clip), "-o", str(other), "--frames", "0:4", "--iters", "3", "--max-side", "64",
                 "--progress", "none", "--single-layer"]) == 0
    shutil.copy2(other / Project.CHECKPOINT, project / Project.CHECKPOINT)
    for args in (["edit", str(project), "--edits", str(edits), "-o", str(tmp_path / "o")],
                 ["track", str(project), "--points", str(_points(tmp_path)), "-o", str(tmp_path / "t.json")],
                 ["train", str(clip), "-o", str(project), "--resume", "--progress", "none"]):
        rc, err, _ = in_process(capsys, *args)
        assert rc != 0 and len(err.strip().splitlines()) == 1, err
        assert "another" in err, err
    assert not (tmp_path / "t.json").exists()


def test_resume_with_other_settings_names_each_difference(tmp_path, project, clip, capsys):
    other = tmp_path / "other.mp4"
    from core.video import write_movie

    write_movie(other, [np.full((48, 64, 3), 9 * i, np.uint8) for i in range(6)], fps=24)
    before = digest_tree(project)
    rc, err, _ = in_process(capsys, "train", str(other), "-o", str(project), "--resume", "--frames", "1:5",
                            "--max-side", "32")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    for needle in ("--frames 1:5", "--max-side 32", "VIDEO"):
        assert needle in err, err
    assert digest_tree(project) == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_damaged_checkpoint(tmp_path, project, clip, damage, capsys):
    ck = project / Project.CHECKPOINT
    data = ck.read_bytes()
    ck.write_bytes({"empty": b"", "truncated": data[: len(data) // 3],
                    "random": np.random.default_rng(0).bytes(4096)}[damage])
    for args in (["track", str(project), "--points", str(_points(tmp_path)), "-o", str(tmp_path / "t.json")],
                 ["train", str(clip), "-o", str(project), "--resume", "--progress", "json"]):
        rc, err, events = in_process(capsys, *args)
        assert rc != 0 and len(err.strip().splitlines()) == 1 and "checkpoint" in err, err
        assert "Traceback" not in err
    info = json.loads(cli("info", str(project)).stdout)
    assert info["state"] != "trained"


def test_damaged_maps_and_project_files(tmp_path, project, edits, capsys):
    maps = project / Project.MAPS
    uv = maps / "uv_bg.npy"
    uv.write_bytes(uv.read_bytes()[:200])
    rc, err, _ = in_process(capsys, "edit", str(project), "--edits", str(edits), "-o", str(tmp_path / "o"))
    assert rc != 0 and "baked maps" in err and len(err.strip().splitlines()) == 1, err
    rc, err, _ = in_process(capsys, "atlas", str(project), "-o", str(tmp_path / "a"))
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    good = (project / Project.INFO).read_text()
    for bad in ("[1, 2]", json.dumps({**json.loads(good), "frames": []}), "\x00\x01garbage", ""):
        (project / Project.INFO).write_text(bad)
        p = cli("info", str(project))
        one_line(p, "project.json")


# -- validation at the edge -----------------------------------------------------------------

def test_bad_command_line_values(tmp_path, clip, capsys):
    out = tmp_path / "p"
    for args, needle in ((["--frames", "-1:3"], "--frames"), (["--minutes", "inf"], "finite"),
                         (["--minutes", "nan"], "finite"), (["--masks", str(tmp_path / "nope")], "--masks"),
                         (["--masks", str(clip / "0000.png")], "--masks")):
        with contextlib.suppress(SystemExit):
            rc, err, _ = in_process(capsys, "train", str(clip), "-o", str(out), *args)
            assert rc != 0 and needle in err, err
            continue
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()  # nothing decoded into a project


def test_masks_of_another_aspect_are_refused(tmp_path, clip, capsys):
    import imageio.v3 as iio

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        iio.imwrite(masks / f"{i:04d}.png", np.zeros((500, 10), np.uint8))
    rc, err, _ = in_process(capsys, "train", str(clip), "-o", str(tmp_path / "p"), "--masks", str(masks),
                            "--iters", "2", "--progress", "none")
    assert rc != 0 and "aspect" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("layer, outcome", [
    ({"type": "sketch", "frame": 0, "strokes": [{"points": [[1e300, 5]], "width": 2}]}, "far outside"),
    ({"type": "sketch", "frame": 0, "strokes": [{"points": [[0, 0], [1e7, 1e7]], "width": 2}]}, "far outside"),
    ({"type": "sketch", "frame": 0, "strokes": [{"points": [[5, 5], [40, 30]], "width": 1e9}]}, "ok"),
    ({"type": "adjust", "frame": 0, "region": {"polygon": [[5, 5], [40, 5], [20, 30]]}, "feather": 1e9,
      "brightness": 0.3}, "ok"),
    ({"type": "sticker", "frame": 0, "image": "s.png", "center": [30, 20], "scale": 1e6}, "smaller scale"),
    ({"type": "sticker", "frame": 0, "image": "s.png", "center": [30, 20], "scale": 1e-6}, "nothing visible"),
])
def test_extreme_edit_values(tmp_path, project, layer, outcome, capsys):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "s.png", np.full((16, 16, 4), 200, np.uint8))
    e = tmp_path / "EDITS.json"
    e.write_text(json.dumps({"version": 1, "layers": [layer]}))
    t0 = time.monotonic()
    rc, err, _ = in_process(capsys, "edit", str(project), "--edits", str(e), "-o", str(tmp_path / "o"))
    assert time.monotonic() - t0 < 30
    if outcome == "ok":
        assert rc == 0, err
        assert len(list((tmp_path / "o").glob("*.png"))) == 6
    else:
        assert rc != 0 and outcome in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()

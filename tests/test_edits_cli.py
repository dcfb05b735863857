"""`inve edit` through the real command line: outputs, names, and refusals that write nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synth import make_clip, make_gt_project
from core import cli, fsutil
from core.project import Project

W, H, T, FIRST = 64, 48, 6, 100


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=5)
    folder = tmp_path_factory.mktemp("cliproj")
    project = make_gt_project(clip, folder / "proj", atlas_size=128, work_scale=0.5, first_frame=FIRST)
    assets = folder / "assets"
    assets.mkdir()
    paint = np.zeros((H, W, 4), np.float32)
    paint[5:15, 40:55] = (0, 0, 1, 1)
    fsutil.write_png(assets / "paint.png", paint)
    fsutil.write_png(assets / "small.png", np.ones((10, 10, 4), np.float32))
    fsutil.write_png(assets / "logo.png", np.ones((6, 12, 4), np.float32))
    fsutil.write_png(assets / "atlas_wrong.png", np.ones((64, 64, 3), np.float32))
    return clip, project, assets


@pytest.fixture
def gt_mapping(monkeypatch, proj):
    """Projects opened by the CLI use the analytic mapping instead of trained networks."""
    clip = proj[0]
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)


GOOD = [
    {"type": "sketch", "frame": FIRST + 1, "strokes": [{"points": [[40, 8], [60, 20]], "color": [1, 0, 0, 1], "width": 2}]},
    {"type": "paint", "frame": FIRST, "image": "paint.png"},
    {"type": "sticker", "frame": FIRST, "image": "logo.png", "center": [50, 40], "scale": 1.0, "rotation": 0.2},
    {"type": "adjust", "frame": FIRST, "region": {"polygon": [[2, 2], [20, 2], [20, 14]]}, "hue": 0.2},
]


def write_edits(folder: Path, layers, name="EDITS.json") -> Path:
    p = folder / name
    p.write_text(json.dumps({"version": 1, "layers": layers}))
    return p


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_png_folder_named_by_source_frame_from_original_frames(proj, gt_mapping, tmp_path, capsys):
    clip, project, assets = proj
    edits = write_edits(assets, GOOD, "good.json")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(out),
                              "--progress", "json")
    assert rc == 0, err
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{FIRST + t:04d}.png" for t in range(T)]
    events = [json.loads(line) for line in stdout.splitlines()]
    assert any(e.get("stage") == "render" and e.get("step") == T for e in events)
    assert events[-1]["event"] == "done" and events[-1]["frames"] == T
    import imageio.v3 as iio

    changed = []
    for t in range(T):
        img = iio.imread(out / f"{FIRST + t:04d}.png")
        assert img.shape == (H, W, 3)  # source resolution although the maps are at half size
        diff = np.abs(img.astype(int) - clip.frames[t]).max(-1)
        assert (diff > 0).mean() < 0.5 and diff[30:, :20].max() == 0  # untouched pixels are the originals
        changed.append(int((diff > 16).sum()))
    # the edits were applied: clearly changed pixels in every frame (not just re-encoded originals)
    assert min(changed) > 20, changed
    # a second run into the folder inve wrote is allowed
    rc, _, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(out), "--progress", "none")
    assert rc == 0, err


def test_movie_output_and_overwrite_rule(proj, gt_mapping, tmp_path, capsys):
    clip, project, assets = proj
    edits = write_edits(assets, GOOD[:2], "two.json")
    movie = tmp_path / "edited.mp4"
    rc, out, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(movie), "--progress", "none")
    assert rc == 0, err
    assert "wrote 6 frame(s)" in out
    from core.video import probe

    info = probe(movie)
    assert (info.n_frames, info.width, info.height) == (T, W, H)
    stamp = movie.stat().st_mtime_ns
    rc, _, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(movie), "--progress", "none")
    assert rc == 2 and "--overwrite" in err and movie.stat().st_mtime_ns == stamp
    rc, _, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(movie),
                         "--overwrite", "--progress", "none")
    assert rc == 0, err


def test_refuses_a_folder_with_foreign_files(proj, gt_mapping, tmp_path, capsys):
    _, project, assets = proj
    edits = write_edits(assets, GOOD[:1], "one.json")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"precious")
    rc, _, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(out), "--progress", "none")
    assert rc == 2 and "did not write" in err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.png"]
    assert (out / "holiday.png").read_bytes() == b"precious"


BAD = [
    ({"version": 1}, "missing field 'layers'"),
    ({"layers": [{"type": "sketch", "strokes": []}]}, "layers[0] (sketch): missing field 'frame'"),
    ({"layers": [{"type": "blur", "frame": FIRST}]}, "layers[0]: unknown type \"blur\""),
    ({"layers": [GOOD[0], {"type": "paint", "frame": FIRST + 50, "image": "paint.png"}]},
     "layers[1] (paint): frame 150 is outside the project's frames 100..105"),
    ({"layers": [{"type": "paint", "frame": 3, "image": "paint.png"}]}, "frame 3 is outside"),
    ({"layers": [{"type": "paint", "frame": FIRST, "image": "small.png"}]},
     "image 'small.png' is 10x10, it must be 64x48"),
    ({"layers": [GOOD[1], {"type": "sticker", "frame": FIRST, "image": "nope.png", "center": [1, 1]}]},
     "layers[1] (sticker): image 'nope.png' not found"),
    ({"layers": [{"type": "sketch", "frame": FIRST, "strokes": [{"points": [[1, 2]], "color": [1, 0]}]}]}, "'color' must be"),
    ({"layers": [{"type": "sketch", "frame": FIRST, "strokes": [{"points": [[1, 2]], "color": [2, 0, 0]}]}]}, "in 0..1"),
    ({"layers": [{"type": "sketch", "frame": FIRST, "strokes": [{"points": [[1, 2]], "width": "thick"}]}]},
     "'width' must be a number"),
    ({"layers": [{"type": "sketch", "frame": "first", "strokes": []}]}, "must be an integer source frame index"),
    ({"layers": [{"type": "sticker", "frame": FIRST, "image": "logo.png", "center": [1, 1], "mode": "wobbly"}]}, "'mode'"),
    ({"layers": [{"type": "adjust", "frame": FIRST, "region": {"polygon": [[1, 1], [2, 2]]}}]}, "at least 3"),
    ({"layers": [{"type": "atlas", "layer": "bg", "image": "atlas_wrong.png"}]}, "it must be 128x128"),
    ({"layers": [{"type": "paint", "frame": FIRST, "image": "paint.png", "layer": "middle"}]}, "'layer' must be"),
    ({"layers": [{"type": "paint", "frame": FIRST, "image": "paint.png", "visible": "yes"}]}, "'visible'"),
    ({"version": 7, "layers": []}, "version 7 is newer"),
]


@pytest.mark.parametrize("doc,message", BAD, ids=[m[:30] for _, m in BAD])
def test_malformed_edits_fail_with_one_line_and_write_nothing(proj, tmp_path, capsys, doc, message):
    _, project, assets = proj
    edits = assets / "bad.json"
    edits.write_text(json.dumps(doc))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "edit", str(project.path), "--edits", str(edits), "-o", str(out), "--progress", "none")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and message in lines[0], err
    assert not out.exists()


def test_real_command_line_reports_invalid_json(proj, tmp_path):
    _, project, assets = proj
    edits = assets / "broken.json"
    edits.write_text('{"layers": [')
    out = tmp_path / "movie.mp4"
    r = subprocess.run([sys.executable, "-m", "core", "edit", str(project.path), "--edits", str(edits),
                        "-o", str(out)], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "not valid JSON" in r.stderr
    assert not out.exists()

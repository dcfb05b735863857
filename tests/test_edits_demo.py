"""`inve demo` plumbing on a ground-truth project (the real fit is exercised by the engine's tests
and by running the demo): the sample stack is valid, every output is written, the contact sheet
shows before/after."""
from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from synth import make_clip, make_gt_project
import core.train
from core import cli
from core.edits import parse_edits
from core.project import Project


@pytest.fixture
def fake_fit(monkeypatch):
    """train_project -> a ground-truth project of a synthetic clip; mapping -> the analytic one."""
    clip = make_clip(T=10, size=(160, 90), camera="pan_zoom", seed=11)
    calls = []

    def train_project(video, project_dir, cfg, progress, resume=False):
        calls.append(cfg)
        proj = make_gt_project(clip, project_dir, atlas_size=256)
        (proj.path / Project.CHECKPOINT).write_bytes(b"synthetic")
        return Project.open(project_dir)

    monkeypatch.setattr(core.train, "train_project", train_project)
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)
    return clip, calls


def test_demo_writes_movie_contact_sheet_and_a_valid_stack(fake_fit, tmp_path, capsys):
    clip, calls = fake_fit
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--minutes", "0.5", "--progress", "none"]) == 0
    assert calls and calls[0].minutes == 0.5
    printed = capsys.readouterr().out
    for name in ("edited.mp4", "contact_sheet.png", "atlases.png", "TRACKS.json", "EDITS.json"):
        assert name in printed
        assert next(out.rglob(name)).stat().st_size > 0
    doc = json.loads((out / "edits" / "EDITS.json").read_text())
    proj = Project.open(out / "project")
    layers = parse_edits(doc, out / "edits", proj.info)
    assert sorted({l.type for l in layers}) == ["adjust", "atlas", "paint", "sketch", "sticker"]
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.shape[0] > 2 * 90 and sheet.shape[1] > 5 * 160 * 0.9
    from core.video import probe

    assert probe(out / "edited.mp4").n_frames == 10
    tracks = json.loads((out / "TRACKS.json").read_text())
    assert len(tracks["tracks"]) >= 4 and all(len(t["xy"]) == 10 for t in tracks["tracks"])
    # the fg loop stroke attached to the foreground, the wave to the background
    from core.edits.context import RenderContext
    from core.edits.sketch import carry_stroke

    sketch = next(l for l in layers if l.type == "sketch")
    assert len(sketch.strokes) == 2
    ctx = RenderContext(proj, mapping=clip.gt)
    assert carry_stroke(ctx, sketch.strokes[0], sketch.t, sketch.layer).layer == "bg"
    assert carry_stroke(ctx, sketch.strokes[1], sketch.t, sketch.layer).layer == "fg"
    # a second demo run into the same folder re-uses the project instead of training again
    assert cli.main(["demo", "-o", str(out), "--progress", "none"]) == 0
    assert len(calls) == 1


def test_demo_refuses_a_foreign_folder(fake_fit, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert cli.main(["demo", "-o", str(out), "--progress", "none"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

"""`inve correct`: hand-confirmed positions teach the mappings, then the maps are re-baked.

A small synthetic clip is fitted briefly; the user "moves a marker": a background point of
frame 0 is confirmed 2.5 px away from where the fit carries it on the last frame. After a
short fine-tune the point is carried there (within 1 px on the corrected frames), points
far from it move much less than it did, and the reconstruction stays as good.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.cli import main
from core.edits.context import RenderContext
from core.project import Project

pytestmark = pytest.mark.slow

OFFSET = np.array([2.5, -1.0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from core.progress import Progress
    from core.train import TrainConfig, train_project
    from tests.synth import make_clip, write_clip, write_masks

    clip = make_clip(T=8, size=(96, 64), camera="pan_zoom", seed=2)
    root = tmp_path_factory.mktemp("correct")
    video = write_clip(clip, root / "frames")
    masks = write_masks(clip, root / "masks")
    train_project(video, root / "project", TrainConfig(iters=150, masks=str(masks), seed=0), Progress("none"))
    return clip, root


def _carry(project_dir, xy, t0=0):
    project = Project.open(project_dir)
    ctx = RenderContext(project, mapping=project.mapping())
    _, out, _ = ctx.propagate("bg", np.asarray(xy, np.float64), t0, refine=False)
    return out  # [T, N, 2]


def test_correction_moves_the_track_where_the_user_put_it(trained, tmp_path):
    clip, root = trained
    proj = root / "project"
    T = clip.n_frames
    p0 = np.array([[72.0, 16.0]])  # background, above the disc's path, in view on every frame
    far = np.array([[88.0, 56.0], [60.0, 54.0], [40.0, 10.0]])
    before = _carry(proj, np.concatenate([p0, far]))
    target = before[T - 1, 0] + OFFSET
    doc = {"tracks": [{"id": "p0", "keys": [{"frame": 0, "x": float(p0[0, 0]), "y": float(p0[0, 1])},
                                            {"frame": T - 1, "x": float(target[0]), "y": float(target[1])}]}]}
    path = tmp_path / "corrections.json"
    path.write_text(json.dumps(doc))
    psnr_before = json.loads((proj / "metrics.json").read_text())["psnr"]
    assert main(["correct", str(proj), "--corrections", str(path), "--minutes", "0.25", "--progress", "none"]) == 0
    after = _carry(proj, np.concatenate([p0, far]))
    # on the corrected frames: within 1 px of the confirmed positions
    assert np.linalg.norm(after[T - 1, 0] - target) < 1.0, (after[T - 1, 0], target)
    assert np.linalg.norm(after[0, 0] - p0[0]) < 1.0
    # elsewhere the mapping moves much less than at the correction
    moved_far = np.linalg.norm(after[:, 1:] - before[:, 1:], axis=-1)
    assert np.median(moved_far) < 0.5 * np.linalg.norm(OFFSET), moved_far
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["psnr"] > psnr_before - 1.0
    assert metrics["corrections"][-1]["error_after_px"] < 1.0
    # the corrected checkpoint and maps carry the project's identity like a trained one
    from core import checkpoint

    project = Project.open(proj)
    meta = project.maps().meta
    assert meta["checkpoint"]["step"] == metrics["iterations"]
    assert checkpoint.maps_state(meta, project.info, proj / Project.CHECKPOINT)[0] == "ok"
    state = checkpoint.read_checkpoint(proj / Project.CHECKPOINT)
    assert state["identity"] == checkpoint.identity(project.info)


def test_bad_corrections_are_refused_with_one_line(trained, tmp_path, capsys):
    clip, root = trained
    proj = root / "project"
    before = (proj / "checkpoint.pt").read_bytes()
    cases = [({"tracks": []}, "empty"),
             ({"tracks": [{"id": "a", "keys": [{"frame": 0, "x": 1, "y": 1}]}]}, "two keys"),
             ({"tracks": [{"id": "a", "keys": [{"frame": 0, "x": 1, "y": 1}, {"frame": 99, "x": 1, "y": 1}]}]},
              "outside"),
             ({"tracks": [{"id": "a", "keys": [{"frame": 0, "x": 1, "y": 1}, {"frame": 1, "x": 1e6, "y": 1}]}]},
              "outside the")]
    for doc, words in cases:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(doc))
        capsys.readouterr()
        assert main(["correct", str(proj), "--corrections", str(path), "--progress", "none"]) != 0
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert (proj / "checkpoint.pt").read_bytes() == before


def _track(project_dir, xy, keys: bool = True):
    """Refined tracks (as ``inve track`` computes them) of points drawn on frame 0: [T, N, 2]."""
    from core.track import PointSpec, track_points

    project = Project.open(project_dir)
    ctx = RenderContext(project, mapping=project.mapping())
    assert ctx.refine_enabled
    if not keys:
        ctx.confirmed = {}
    pts = [PointSpec(f"q{i}", 0, 0, (float(x), float(y)), "bg") for i, (x, y) in enumerate(xy)]
    return np.stack([tr.xy for tr in track_points(ctx, pts)], axis=1), ctx


def test_confirmed_keys_win_over_refinement(trained, tmp_path):
    """With photometric refinement on (the default), the re-tracked point lands where the user
    put it on the corrected frames; a point far from every key is tracked as without keys."""
    import shutil

    clip, root = trained
    proj = tmp_path / "project"
    shutil.copytree(root / "project", proj)
    T = clip.n_frames
    p0 = np.array([[30.0, 14.0]])  # background, textured, in view on every frame
    far = np.array([[84.0, 54.0]])
    before, _ = _track(proj, np.concatenate([p0, far]))
    moved = (T // 2, T - 1)
    targets = {t: before[t, 0] + OFFSET for t in moved}
    doc = {"tracks": [{"id": "k0", "keys": [{"frame": 0, "x": float(p0[0, 0]), "y": float(p0[0, 1])}]
                       + [{"frame": t, "x": float(xy[0]), "y": float(xy[1])} for t, xy in targets.items()]}]}
    path = tmp_path / "corrections.json"
    path.write_text(json.dumps(doc))
    assert main(["correct", str(proj), "--corrections", str(path), "--minutes", "0.25", "--progress", "none"]) == 0
    after, ctx = _track(proj, np.concatenate([p0, far]))
    for t, xy in targets.items():
        assert np.linalg.norm(after[t, 0] - xy) < 1.0, (t, after[t, 0], xy, before[t, 0])
    # far from every key: exactly what refinement gives without the key file
    without, _ = _track(proj, np.concatenate([p0, far]), keys=False)
    assert np.allclose(after[:, 1], without[:, 1], atol=1e-6)
    # the kept keys belong to the corrected checkpoint; after a retrain (another checkpoint) they are ignored
    assert all(("bg", t) in ctx.confirmed for t in moved)
    keys_file = proj / "confirmed_keys.json"
    kept = json.loads(keys_file.read_text())
    assert kept["checkpoint"]["step"] == json.loads((proj / "metrics.json").read_text())["iterations"]
    keys_file.write_text(json.dumps({**kept, "checkpoint": {**kept["checkpoint"], "sha256": "0" * 64}}))
    assert RenderContext(Project.open(proj)).confirmed == {}

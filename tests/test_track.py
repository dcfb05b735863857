"""`inve track` on a ground-truth project: positions and visibility against the truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from synth import make_clip, make_gt_project
from core import cli
from core.edits.context import RenderContext
from core.project import Project
from core.track import PointSpec as PointSpecT, draw_tracks, parse_points, track_points

T, W, H = 24, 128, 96


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=7)
    proj = make_gt_project(clip, tmp_path_factory.mktemp("trk") / "proj", work_scale=0.5)
    return clip, proj


def truth(clip, layer, xy, f):
    g = clip.gt
    uv = g.forward(layer, np.asarray(xy, float).reshape(1, 2), f)
    xs = np.concatenate([g.inverse(layer, uv, t) for t in range(T)])
    inside = (xs >= 0).all(1) & (xs <= [W, H]).all(1)
    a = np.array([g.alpha(x, t)[0] for t, x in enumerate(xs)])
    vis = inside & ((a > 0.5) if layer == "fg" else (a <= 0.5))
    return xs, vis


def test_tracks_match_truth_and_visibility(gt):
    clip, proj = gt
    rng = np.random.default_rng(1)
    pts = [{"id": f"p{i}", "frame": int(f), "x": float(x), "y": float(y)}
           for i, (f, x, y) in enumerate(zip(rng.integers(0, T, 40), rng.uniform(2, W - 2, 40), rng.uniform(2, H - 2, 40)))]
    # a bg point the disc passes over mid-clip, and a point on the disc
    tm = T // 2
    q, _ = clip.gt.object_params(np.array([float(tm)]))
    p_hidden = clip.gt.inverse("bg", clip.gt.forward("bg", q, tm), 0)[0]
    pts.append({"id": "hidden", "frame": 0, "x": float(p_hidden[0]), "y": float(p_hidden[1])})
    q0, _ = clip.gt.object_params(np.array([3.0]))
    pts.append({"id": "fg", "frame": 3, "x": float(q0[0, 0] + 5), "y": float(q0[0, 1] - 4)})
    specs = parse_points({"points": pts}, proj.info)
    tracks = track_points(RenderContext(proj, mapping=clip.gt), specs)
    errs, agree, n = [], 0, 0
    for p, tr in zip(pts, tracks):
        layer = "fg" if clip.gt.alpha(np.array([[p["x"], p["y"]]]), p["frame"])[0] > 0.5 else "bg"
        assert tr.layer == layer
        xs, vis = truth(clip, layer, [p["x"], p["y"]], p["frame"])
        errs.extend(np.linalg.norm(tr.xy - xs, axis=1)[vis])
        near_edge = np.abs(np.array([clip.gt.alpha(x, t)[0] for t, x in enumerate(xs)]) - 0.5) < 0.45
        agree += int((tr.visible == vis)[~near_edge].sum())
        n += int((~near_edge).sum())
    assert np.median(errs) < 1.0
    assert agree / n > 0.99  # exact away from the disc's one-pixel anti-aliased rim
    hidden = tracks[-2]
    assert hidden.id == "hidden" and not hidden.visible[tm]
    first_hidden = int(np.argmin(hidden.visible))
    assert hidden.visible[0] and hidden.visible[-1] and first_hidden < tm
    fg = tracks[-1]
    assert fg.layer == "fg" and fg.visible.all()


def test_outside_the_frame_is_not_visible(gt):
    clip, proj = gt
    # the camera pans right and zooms in: a point at the left edge of frame 0 leaves the picture
    g = clip.gt
    for y in np.linspace(5, H - 5, 20):
        xs, vis = truth(clip, "bg", [1.0, y], 0)
        if not ((xs >= 0).all(1) & (xs <= [W, H]).all(1)).all():
            break
    else:
        pytest.skip("no leaving point")
    specs = parse_points({"points": [{"id": "edge", "frame": 0, "x": 1.0, "y": float(y)}]}, proj.info)
    tr = track_points(RenderContext(proj, mapping=g), specs)[0]
    out = ~((xs >= 0).all(1) & (xs <= [W, H]).all(1))
    assert out.any() and not tr.visible[out].any()


def test_track_command_writes_the_documented_format(gt, tmp_path, monkeypatch, capsys):
    clip, proj = gt
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)
    points = tmp_path / "POINTS.json"
    points.write_text(json.dumps({"points": [{"id": "a", "frame": 2, "x": 100.5, "y": 20.25},
                                             {"id": "b", "frame": 0, "x": 10.0, "y": 80.0}]}))
    out = tmp_path / "TRACKS.json"
    assert cli.main(["track", str(proj.path), "--points", str(points), "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["frames"] == list(range(T))
    assert [t["id"] for t in doc["tracks"]] == ["a", "b"]
    a = doc["tracks"][0]
    assert len(a["xy"]) == T and len(a["visible"]) == T
    assert a["xy"][2] == pytest.approx([100.5, 20.25], abs=0.01)
    assert "tracked 2 point(s)" in capsys.readouterr().out
    # refuses to overwrite without --overwrite
    assert cli.main(["track", str(proj.path), "--points", str(points), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("points,message", [
    ({"pts": []}, "'points' list"),
    ({"points": [{"id": "a", "frame": 0, "x": 1}]}, "points[0]: missing field 'y'"),
    ({"points": [{"id": "a", "frame": 99, "x": 1, "y": 1}]}, "frame 99 is outside"),
    ({"points": [{"id": "a", "frame": 0, "x": "left", "y": 1}]}, "'x' must be a number"),
    ({"points": [{"id": "a", "frame": 0, "x": 1, "y": 1}, {"id": "a", "frame": 0, "x": 2, "y": 1}]}, "duplicate id"),
    ({"points": [{"id": "a", "frame": 0, "x": 500, "y": 1}]}, "outside the 128x96 frame"),
])
def test_malformed_points_fail_with_one_line_and_write_nothing(gt, tmp_path, capsys, points, message):
    _, proj = gt
    p = tmp_path / "POINTS.json"
    p.write_text(json.dumps(points))
    out = tmp_path / "TRACKS.json"
    assert cli.main(["track", str(proj.path), "--points", str(p), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "POINTS.json" in err[0] and message in err[0], err
    assert not out.exists()


def test_draw_tracks_marks_the_positions(gt):
    clip, proj = gt
    specs = parse_points({"points": [{"id": "a", "frame": 0, "x": 100.0, "y": 15.0}]}, proj.info)
    tr = track_points(RenderContext(proj, mapping=clip.gt), specs)
    t = T - 1
    img = draw_tracks(clip.frames[t], tr, t)
    x, y = np.floor(tr[0].xy[t]).astype(int)
    assert tr[0].visible[t]
    assert (img[y, x] != clip.frames[t][y, x]).any()
    far = np.ones((H, W), bool)
    far[max(0, y - 20):y + 20, max(0, x - 30):x + 30] = False
    assert (img[far] == clip.frames[t][far]).all()


def test_occlusion_accuracy_where_the_alpha_edge_lags(tmp_path):
    """Issue #9 goal: occlusion accuracy >= 0.99, where a fit's soft alpha edge lags the
    object's by a pixel and its mapping drifts by up to 1.5 px (an analytic stand-in for a
    fitted project: the benchmark's misses were points under the lagging edge and points by
    the frame border).

    A grid of points on both layers drawn on the last frame, tracked through every frame:
    visible must agree with the truth (inside the frame, and shown by the true alpha) at
    >= 0.99 of positions. On alpha alone (the pixels' evidence switched off) the same tracks
    miss more: the test sees what the evidence adds."""
    import cv2

    from core.project import BakedMaps
    from tests.test_refine import DriftingMapping

    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=7)
    proj = make_gt_project(clip, tmp_path / "proj")
    m = proj.maps()
    # the fitted alpha's edge a pixel inside the object's, and soft
    lag = np.stack([cv2.GaussianBlur(cv2.erode(np.asarray(a, np.float32), np.ones((3, 3), np.uint8)), (0, 0), 1.0)
                    for a in m.alpha])
    maps = BakedMaps(uv={L: np.asarray(u) for L, u in m.uv.items()}, alpha=lag, atlas=m.atlas,
                     atlas_used=m.atlas_used)
    mapping = DriftingMapping(clip.gt, amount=1.0)
    g, t0 = clip.gt, T - 1
    xy = np.stack(np.meshgrid((np.arange(16) + 0.5) * W / 16, (np.arange(12) + 0.5) * H / 12), -1).reshape(-1, 2)
    a0 = g.alpha(xy, np.full(len(xy), float(t0)))
    keep = (a0 > 0.99) | (a0 < 0.01)
    specs = [PointSpecT(str(i), t0, t0, (float(p[0]), float(p[1])), "fg" if a > 0.5 else "bg")
             for i, (p, a) in enumerate(zip(xy[keep], a0[keep]))]

    def accuracy(ctx):
        hits, n, errs = 0, 0, []
        for tr, p in zip(track_points(ctx, specs), specs):
            xs, vis = truth(clip, tr.layer, p.xy, t0)
            hits += int((tr.visible == vis).sum())
            n += len(vis)
            errs.extend(np.linalg.norm(tr.xy - xs, axis=1)[vis])
        return hits / n, float(np.median(errs))

    acc, med = accuracy(RenderContext(proj, mapping=mapping, maps=maps))
    blind = RenderContext(proj, mapping=mapping, maps=maps)
    blind.EVIDENCE_CAP = 0.0
    acc_alpha, _ = accuracy(blind)
    assert acc >= 0.99 and med < 0.2, (acc, med)  # measured 0.991, median 0.03 px
    assert acc > acc_alpha + 0.01, (acc, acc_alpha)  # measured 0.970 on alpha alone

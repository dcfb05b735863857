"""Drift-free propagation: positions refined against the drawing frame land on the truth.

A ground-truth project whose mapping drifts (every frame's inverse mapping is off by a
smooth, growing similarity: up to ~2 px, like a fit 20-48 frames from the drawing frame)
is tracked with and without refinement (core/refine.py through RenderContext.propagate);
positions are compared with the analytic truth. No training: seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.edits.context import RenderContext
from core.track import PointSpec, track_points


class DriftingMapping:
    """The analytic mapping with a smooth per-frame error: x' = c + (1 + e(t)) (x - c) + a(t)."""

    def __init__(self, gt, amount: float = 2.0) -> None:
        self.gt, self.layers = gt, gt.layers
        self.c = np.array(gt.size, np.float64) / 2
        self.amount = amount

    def _drift(self, layer, t):
        u = np.asarray(t, np.float64) / max(1, self.gt.n_frames - 1)
        sign = 1.0 if layer == "bg" else -1.0
        a = self.amount * np.stack([np.sin(2.5 * u + 0.3) * sign, np.cos(1.7 * u) - 0.5], -1)
        e = 0.012 * np.sin(3.0 * u) * sign
        return a, e

    def forward(self, layer, xy, t):
        xy, t = self.gt._prep(xy, t)
        a, e = self._drift(layer, t)
        x = self.c + (xy - a - self.c) / (1 + e[:, None])
        return self.gt.forward(layer, x, t)

    def inverse(self, layer, uv, t):
        uv, t = self.gt._prep(uv, t)
        a, e = self._drift(layer, t)
        x = np.asarray(self.gt.inverse(layer, uv, t), np.float64)
        return (self.c + (1 + e[:, None]) * (x - self.c) + a).astype(np.float32)

    def alpha(self, xy, t):
        return self.gt.alpha(xy, t)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    from tests.synth import make_clip, make_gt_project

    clip = make_clip(T=48, size=(160, 112), camera="pan_zoom", seed=3)
    project = make_gt_project(clip, tmp_path_factory.mktemp("refine") / "p")
    return clip, project


def _errors(clip, project, refine: bool, t0: int = 0):
    gt = clip.gt
    rng = np.random.default_rng(5)
    xy = rng.uniform([12, 12], [148, 100], (60, 2))
    a = gt.alpha(xy, np.full(len(xy), t0))
    layers = np.where(a > 0.5, "fg", "bg")
    ctx = RenderContext(project, mapping=DriftingMapping(gt))
    ctx.refine_enabled = refine
    pts = [PointSpec(str(i), t0, t0, tuple(p), str(L)) for i, (p, L) in enumerate(zip(xy, layers))]
    tracks = track_points(ctx, pts)
    errs = []  # (distance from t0, error px) where the truth shows the point
    for tr, p in zip(tracks, pts):
        ts = np.arange(gt.n_frames, dtype=np.float64)
        truth = gt.inverse(tr.layer, np.repeat(gt.forward(tr.layer, np.array([p.xy]), [t0]), len(ts), 0), ts)
        ta = gt.alpha(truth, ts)
        seen = ((ta > 0.5) if tr.layer == "fg" else (ta < 0.5)) & (truth >= 2).all(1) & (truth[:, 0] < 158) & (truth[:, 1] < 110)
        for t in np.flatnonzero(seen & tr.visible):
            errs.append((abs(t - t0), float(np.linalg.norm(tr.xy[t] - truth[t]))))
    return np.array(errs)


def test_refinement_removes_drift_far_from_the_drawing_frame(drifting):
    clip, project = drifting
    raw = _errors(clip, project, refine=False)
    ref = _errors(clip, project, refine=True)
    far_raw = np.median(raw[raw[:, 0] >= 20, 1])
    far = ref[ref[:, 0] >= 20, 1]
    assert far_raw > 1.0  # the drift this test is about
    assert np.median(far) <= 0.5, (np.median(far), far_raw)
    assert np.mean(ref[:, 1] < 1.0) > 0.9


def test_tracks_report_their_own_error(drifting):
    """TRACKS.json's error_px: small where the track is right, large where it is not."""
    clip, project = drifting
    gt = clip.gt
    ctx = RenderContext(project, mapping=DriftingMapping(gt, amount=3.0))
    xy = np.array([[30.0, 20.0], [130.0, 25.0], [40.0, 95.0], [120.0, 90.0]])
    pts = [PointSpec(str(i), 0, 0, tuple(p), "bg") for i, p in enumerate(xy)]
    # refined: estimates are small and cover the true error
    tracks = track_points(ctx, pts)
    ts = np.arange(gt.n_frames, dtype=np.float64)
    true_err, est = [], []
    for tr, p in zip(tracks, pts):
        truth = gt.inverse("bg", np.repeat(gt.forward("bg", np.array([p.xy]), [0.0]), len(ts), 0), ts)
        ok = tr.visible & (gt.alpha(truth, ts) < 0.5)
        true_err.append(np.linalg.norm(tr.xy - truth, axis=1)[ok])
        est.append(tr.error_px[ok])
        assert len(tr.to_json()["error_px"]) == gt.n_frames
    true_err, est = np.concatenate(true_err), np.concatenate(est)
    assert np.mean(true_err <= est + 0.25) > 0.9
    assert np.median(est) < 0.6
    # where refinement is not allowed to act, the mapping's drift shows in the estimate
    ctx.refine_cfg.min_ncc = 2.0  # nothing is accepted: every position is the mapping's
    tracks = track_points(ctx, pts)
    far = np.concatenate([tr.error_px[30:] for tr in tracks])
    assert np.median(far) > 1.0


def test_frames_matched_in_one_batch_are_each_matched_as_alone(drifting):
    """Rendering refines one frame at a time, and any batching of frames (a block, a chain
    depth) must not change a frame's result: a preview, the serial and the parallel pass must
    agree bit for bit. One ``independent`` call over several frames (on both layers, flat and
    textured points, some near the border) equals one call per frame, exactly."""
    clip, project = drifting
    gt = clip.gt
    ctx = RenderContext(project, mapping=DriftingMapping(gt, amount=3.0))
    rng = np.random.default_rng(11)
    xy0 = np.vstack([rng.uniform([3, 3], [157, 109], (30, 2)), [[1.0, 50.0], [158.0, 5.0]]])
    frames = np.array([3, 9, 26, 40, 47])
    accepted = 0
    for layer in ("bg", "fg"):
        _, xy, ok = ctx.propagate(layer, xy0, 0, frames=frames, refine=False)
        batch = ctx.refine(layer, xy0, 0, frames, xy, ok, independent=True)
        for i, t in enumerate(frames):
            # templates built afresh for this side: a wrong template key (kept templates of
            # another point set or layer) would then give the two sides different numbers
            ctx.levels()[0].templates.clear()
            one = ctx.refine(layer, xy0, 0, np.array([t]), xy[i:i + 1], ok[i:i + 1])
            for k in ("xy", "accepted", "ncc", "shift"):
                assert np.array_equal(getattr(batch, k)[i], getattr(one, k)[0], equal_nan=True), (layer, t, k)
        accepted += int(batch.accepted.sum())
        assert not batch.accepted.all()  # some points are rejected (hidden, flat or cut by the border)
    assert accepted >= 40  # and most are matched: the comparison is about real matches


def test_dense_stroke_vertices_are_corrected_by_their_matched_neighbours(drifting):
    """Many points in one call (a stroke's vertices): matched on a subset, all corrected."""
    clip, project = drifting
    gt = clip.gt
    ctx = RenderContext(project, mapping=DriftingMapping(gt))
    s = np.linspace(0, 1, 120)
    xy0 = np.stack([15 + 130 * s, 12 + 8 * np.sin(6 * s)], -1)  # along the top, background only
    assert len(xy0) > ctx.REFINE_MAX_POINTS
    _, raw, ok = ctx.propagate("bg", xy0, 0, refine=False)
    _, ref, _ = ctx.propagate("bg", xy0, 0)
    ts = np.arange(20, gt.n_frames, dtype=np.float64)
    truth = np.stack([gt.inverse("bg", np.repeat(gt.forward("bg", p[None], [0.0]), len(ts), 0), ts) for p in xy0], 1)
    inside = (truth[..., 0] > 2) & (truth[..., 0] < 158) & (truth[..., 1] > 2) & (truth[..., 1] < 110)
    inside &= gt.alpha(truth.reshape(-1, 2), np.repeat(ts, len(xy0))).reshape(inside.shape) < 0.5
    e_raw = np.linalg.norm(raw[20:] - truth, axis=-1)[inside]
    e_ref = np.linalg.norm(ref[20:] - truth, axis=-1)[inside]
    assert np.median(e_raw) > 1.0 and np.median(e_ref) < 0.5, (np.median(e_raw), np.median(e_ref))


# ---------------------------------------------------------------------------------------
# raster edits (paint, adjust, atlas): the baked uv maps drift, the anchors' correction does not
@pytest.fixture(scope="module")
def drifting_maps(tmp_path_factory):
    """(clip, project whose *baked maps* drift like DriftingMapping, exact project, folder).

    Raster edits look textures up at the baked uv maps, so the drift they must undo has to
    be in the maps (the drifting fixture above bakes the exact ones).
    """
    import dataclasses

    from tests.synth import make_clip, make_gt_project

    clip = make_clip(T=48, size=(160, 112), camera="pan_zoom", seed=3)
    dm = DriftingMapping(clip.gt)
    dm.camera = clip.gt.camera
    folder = tmp_path_factory.mktemp("drift_maps")
    proj = make_gt_project(dataclasses.replace(clip, gt=dm), folder / "drift")
    exact = make_gt_project(clip, folder / "exact")
    return clip, proj, exact, folder


def _paint_doc(clip, folder, t0=0):
    """A red blob on the disc, a striped blue blob on the wall and an adjusted square beside it."""
    import cv2

    from core import fsutil

    W, H = clip.size
    q, _ = clip.gt.object_params(np.array([float(t0)]))
    cx, cy, r = float(q[0, 0]), float(q[0, 1]), clip.gt.radius
    img = np.zeros((H, W, 4), np.float32)
    cv2.ellipse(img, (int(cx), int(cy)), (int(0.5 * r), int(0.3 * r)), 20, 0, 360, (1, .1, .1, 1), -1, cv2.LINE_AA)
    bx, by = (0.2 * W, 0.25 * H) if cx > W / 2 else (0.8 * W, 0.25 * H)
    cv2.ellipse(img, (int(bx), int(by)), (int(0.12 * W), int(0.08 * H)), -10, 0, 360, (.1, .3, 1, 1), -1, cv2.LINE_AA)
    for k in range(6):
        x = int(bx - 0.1 * W + k * 0.04 * W)
        cv2.line(img, (x, int(by - 0.06 * H)), (x, int(by + 0.06 * H)), (1, 1, .2, 1), 1, cv2.LINE_AA)
    fsutil.write_png(folder / "paint.png", img)
    square = [[bx - 15, by + 15], [bx + 15, by + 15], [bx + 15, by + 30], [bx - 15, by + 30]]
    return [{"type": "paint", "frame": t0, "image": "paint.png"},
            {"type": "adjust", "frame": t0, "region": {"polygon": square}, "hue": 0.3, "saturation": 1.5}]


def _render(project, mapping, doc, folder, frames, refine=True, cfg=None):
    from core.edits import EditSession, parse_edits

    s = EditSession(project, parse_edits({"version": 1, "layers": doc}, folder, project.info), mapping=mapping)
    s.ctx.refine_enabled = refine
    if cfg is not None:
        s.ctx.refine_cfg = cfg
    return np.stack([s.render_frame(int(t), cache=False) for t in frames])


def _scores(edited, truth, original):
    mse = np.mean((edited.astype(np.float64) - truth) ** 2) / 255.0 ** 2
    reg_e = np.abs(edited.astype(np.int16) - original).max(-1) > 24
    reg_t = np.abs(truth.astype(np.int16) - original).max(-1) > 24
    return 10 * np.log10(1.0 / mse), (reg_e & reg_t).sum() / max(1, (reg_e | reg_t).sum())


def test_paint_and_adjust_land_on_the_surface_where_the_baked_maps_drift(drifting_maps):
    """Issue #9's edit goals (PSNR >= 38.5 dB, region IoU >= 0.90) 20-47 frames away, on
    maps drifting by ~2 px there; the same maps without the correction miss both by far."""
    clip, proj, exact, folder = drifting_maps
    doc = _paint_doc(clip, folder)
    frames = np.arange(20, 48)
    truth = _render(exact, clip.gt, doc, folder, frames, refine=False)
    raw = _scores(_render(proj, proj._mapping, doc, folder, frames, refine=False), truth, clip.frames[frames])
    ref = _scores(_render(proj, proj._mapping, doc, folder, frames), truth, clip.frames[frames])
    assert raw[0] < 30.0 and raw[1] < 0.85, raw  # the drift this test is about
    assert ref[0] >= 38.5 and ref[1] >= 0.90, (ref, raw)


def test_rejected_anchors_fall_back_to_the_mapping(drifting_maps):
    """Where no anchor is accepted the render is exactly the unrefined one (never a guess)."""
    from core.refine import RefineConfig

    clip, proj, _, folder = drifting_maps
    doc = _paint_doc(clip, folder)[:1]
    frames = [30, 40]
    raw = _render(proj, proj._mapping, doc, folder, frames, refine=False)
    none = _render(proj, proj._mapping, doc, folder, frames, cfg=RefineConfig(min_ncc=2.0))
    assert (raw == none).all()
    assert (raw != _render(proj, proj._mapping, doc, folder, frames)).any()


def test_atlas_paint_stays_where_its_reference_frame_shows_it(drifting_maps):
    """A texture painted on the atlas has no drawing frame: the frame showing most of it is
    the reference, and every other frame puts the paint where the *surface* carries it from
    there (the truth), instead of where the drifting maps do."""
    from core import fsutil
    from core.edits import EditSession, parse_edits
    from core.edits.atlas_edit import reference_frame

    clip, proj, exact, folder = drifting_maps
    A = proj.maps().atlas["bg"].shape[0]
    rgba = np.zeros((A, A, 4), np.float32)
    rng = np.random.default_rng(2)
    i0, i1 = int(A * 0.40), int(A * 0.55)
    rgba[i0:i1, i0:i1] = (0.1, 0.2, 1.0, 1.0)
    rgba[i0:i1, i0:i1, 0] = rng.uniform(0, 1, (i1 - i0, i1 - i0)) > 0.5  # a pattern whose slide shows
    fsutil.write_png(folder / "atlas_paint.png", rgba)
    doc = [{"type": "atlas", "layer": "bg", "image": "atlas_paint.png"}]
    s = EditSession(proj, parse_edits({"version": 1, "layers": doc}, folder, proj.info), mapping=proj._mapping)
    r = s.renderer(s.layers[0])
    t_ref = reference_frame(s.ctx, r.textures[0])
    assert t_ref is not None
    # the truth: what the reference frame shows, carried by the exact mapping
    ov = s.render_frame(t_ref, overlay=True).astype(np.float32) / 255.0
    fsutil.write_png(folder / "atlas_ref.png", ov)
    frames = [t for t in (0, 8, 16, 24, 32, 40, 47) if abs(t - t_ref) >= 12]
    truth = _render(exact, clip.gt, [{"type": "paint", "frame": t_ref, "image": "atlas_ref.png", "layer": "bg"}],
                    folder, frames, refine=False)
    raw = _scores(_render(proj, proj._mapping, doc, folder, frames, refine=False), truth, clip.frames[frames])
    ref = _scores(_render(proj, proj._mapping, doc, folder, frames), truth, clip.frames[frames])
    assert ref[0] > raw[0] + 6.0 and ref[1] > 0.9, (ref, raw)


def test_fit_correction_is_robust_and_exactly_invertible():
    from core.refine import fit_correction

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 100, (20, 2))
    A = np.array([[0.01, -0.02], [0.015, 0.005]])
    d = (y - 50) @ A.T + [1.5, -0.7] + rng.normal(0, 0.03, (20, 2))
    d[:3] = [[-3.0, 2.0], [0.0, 0.0], [4.0, 4.0]]  # matches on look-alike patches
    c = fit_correction(y, d)
    assert c is not None and c.n == 17
    truth = (y - 50) @ A.T + [1.5, -0.7]
    assert np.abs(c.at(y) - truth).max() < 0.1
    p = y + c.at(y)
    assert np.abs(c.source_of(p) - y).max() < 1e-9
    assert fit_correction(y[:0], d[:0]) is None
    two = fit_correction(y[:2] + 5, np.array([[1.0, 0.0], [1.2, 0.0]]))
    assert np.allclose(two.A, 0) and np.allclose(two.b, [1.1, 0.0])


# ---------------------------------------------------------------------------------------
# a turning object whose fit lags: far beyond one search range and rotated against the template
class LaggingMapping(DriftingMapping):
    """The disc's fitted mapping turns it only a fifth as far as it really turns and slides
    up to 8 px off over the clip (what a short fit did to the benchmark's disc: 5-10 px and
    ~20 degrees 20-47 frames from the drawing frame); the background is exact."""

    LAG, SLIDE = 0.8, 8.0

    def _lag(self, t):
        u = np.asarray(t, np.float64) / max(1, self.gt.n_frames - 1)
        q, th = self.gt.object_params(t)
        _, th0 = self.gt.object_params(np.zeros_like(t))
        a = self.SLIDE * u[:, None] * np.array([0.8, 0.6])
        return q, -self.LAG * (th - th0), a

    @staticmethod
    def _rot(phi):
        c, s = np.cos(phi), np.sin(phi)
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)

    def forward(self, layer, xy, t):
        if layer == "bg":
            return self.gt.forward(layer, xy, t)
        xy, t = self.gt._prep(xy, t)
        q, phi, a = self._lag(t)
        x = q + np.einsum("nij,nj->ni", self._rot(-phi), xy - a - q)
        return self.gt.forward(layer, x, t)

    def inverse(self, layer, uv, t):
        if layer == "bg":
            return self.gt.inverse(layer, uv, t)
        uv, t = self.gt._prep(uv, t)
        q, phi, a = self._lag(t)
        x = np.asarray(self.gt.inverse(layer, uv, t), np.float64)
        return (q + np.einsum("nij,nj->ni", self._rot(phi), x - q) + a).astype(np.float32)


@pytest.fixture(scope="module")
def lagging(tmp_path_factory):
    import dataclasses

    from tests.synth import make_clip, make_gt_project

    clip = make_clip(T=48, size=(160, 112), camera="pan_zoom", seed=3)
    lm = LaggingMapping(clip.gt)
    lm.camera = clip.gt.camera
    proj = make_gt_project(dataclasses.replace(clip, gt=lm), tmp_path_factory.mktemp("lag") / "p")
    return clip, proj


def _disc_points(clip, t, n=12, frac=0.7, seed=1):
    q, _ = clip.gt.object_params(np.array([float(t)]))
    rng = np.random.default_rng(seed)
    ang, rad = rng.uniform(0, 2 * np.pi, n), clip.gt.radius * frac * np.sqrt(rng.uniform(0.05, 1, n))
    return q[0] + np.stack([rad * np.cos(ang), rad * np.sin(ang)], -1)


def _truth(gt, layer, xy0, t0, frames):
    uv = gt.forward(layer, xy0, np.full(len(xy0), float(t0)))
    return np.stack([gt.inverse(layer, uv, np.full(len(uv), float(t))) for t in frames]).astype(np.float64)


def test_tracks_on_a_turning_object_the_fit_lags_behind(lagging):
    """Issue #9's <= 0.5 px 20-47 frames away on the foreground, where the mapping is 3-8 px
    and ~20 degrees off: each frame starts from its nearer neighbour's correction, and the
    template's warp is corrected too (affine Lucas-Kanade)."""
    clip, proj = lagging
    gt = clip.gt
    xy0 = _disc_points(clip, 0)
    pts = [PointSpec(str(i), 0, 0, tuple(p), "fg") for i, p in enumerate(xy0)]
    frames = np.arange(20, 48)
    truth = _truth(gt, "fg", xy0, 0, frames)
    errs = {}
    for refine in (False, True):
        ctx = RenderContext(proj, mapping=proj._mapping)
        ctx.refine_enabled = refine
        tracks = track_points(ctx, pts)
        xy = np.stack([tr.xy for tr in tracks], 1)[frames]
        errs[refine] = np.linalg.norm(xy - truth, axis=-1)
    assert np.median(errs[False]) > 3.0  # the lag this test is about
    assert np.median(errs[True]) <= 0.5 and np.mean(errs[True] < 1.0) > 0.9, (np.median(errs[True]),
                                                                              np.mean(errs[True] < 1.0))


def test_stroke_on_a_turning_object_refined_one_frame_at_a_time(lagging):
    """Rendering refines one frame at a time (the frame shown): a far frame is matched after
    the chain's links towards the drawing frame, so it lands as well as a whole-clip track."""
    clip, proj = lagging
    ctx = RenderContext(proj, mapping=proj._mapping)
    q, _ = clip.gt.object_params(np.array([0.0]))
    a = np.linspace(0, 2 * np.pi, 60)
    xy0 = q[0] + 0.55 * clip.gt.radius * np.stack([np.cos(a), np.sin(a)], -1)  # a ring on the disc
    assert len(xy0) > ctx.REFINE_MAX_POINTS
    errs = []
    for t in (24, 35, 47):
        _, xy, ok = ctx.propagate("fg", xy0, 0, frames=[t], refine=False)
        ref = ctx.refine_sets("fg", 0, np.array([t]), [(xy0, xy, ok)])[0]
        truth = _truth(clip.gt, "fg", xy0, 0, [t])
        assert np.median(np.linalg.norm(xy - truth, axis=-1)) > 3.0
        errs.append(np.linalg.norm(ref - truth, axis=-1))
    assert np.median(errs) <= 0.5, np.median(errs)


def test_error_of_an_unmatched_track_is_the_rate_its_surface_drifts_at(lagging):
    """A track no frame of which could be matched (error_px's fallback) is estimated at the
    drift rate the other points' matches measured on the same surface -- checked against the
    truth on the lagging disc, where the old assumed 0.05 px/frame said ~2 px for 6-8 px."""
    from core.refine import error_estimate

    clip, proj = lagging
    ctx = RenderContext(proj, mapping=proj._mapping)
    xy0 = _disc_points(clip, 0, n=10)
    uv, xy, ok = ctx.propagate("fg", xy0, 0, refine=False)
    frames = np.arange(clip.n_frames)
    r = ctx.refine("fg", xy0, 0, frames, xy, ok)
    r.accepted[:, 0] = False  # as if point 0 were flat or hidden everywhere: the mapping's position stays
    est = error_estimate(frames, 0, r, ctx.cycle_error_px("fg", uv, xy))[:, 0]
    true = np.linalg.norm(xy[:, 0] - _truth(clip.gt, "fg", xy0[:1], 0, frames)[:, 0], axis=-1)
    far = (frames >= 20) & ok[:, 0]
    assert np.median(true[far]) > 3.0
    assert np.mean(true[far] <= est[far] + 0.25) > 0.8, (np.round(true[far], 1), np.round(est[far], 1))
    assert np.median(est[far]) < 3.0 * np.median(true[far])  # and not uselessly large


def test_a_block_settled_pass_renders_what_frame_by_frame_renders(drifting_maps, monkeypatch):
    """A pass refines each block of frames in one call per layer (EditSession.settle_block:
    strokes, paint and adjust corrections, chain links inside the block finished first);
    every frame must be the one rendered on its own (a preview), bit for bit, on maps that
    drift enough for chain links and second matches to be used."""
    from core.edits import EditSession, parse_edits

    clip, proj, _, folder = drifting_maps
    t0 = 20  # frames on both sides; blocks 8-15 and 24-31 hold the chain links 12 and 28
    doc = _paint_doc(clip, folder, t0) + [{"type": "sketch", "frame": t0, "strokes": [
        {"points": [[20, 30], [80, 20], [140, 60], [100, 95]], "color": [1, 0, 0, 1], "width": 3.0}]}]
    layers = parse_edits({"version": 1, "layers": doc}, folder, proj.info)
    calls = []
    refine = RenderContext.refine

    def counted(self, layer, xy0, t_from, frames, *a, **k):
        calls.append((len(frames), k.get("independent", False)))
        return refine(self, layer, xy0, t_from, frames, *a, **k)

    monkeypatch.setattr(RenderContext, "refine", counted)
    block = [img for _, img in EditSession(proj, layers, mapping=proj._mapping).render_all()]
    batched = sum(n > 1 and ind for n, ind in calls)
    one = EditSession(proj, layers, mapping=proj._mapping)
    for t in range(clip.gt.n_frames):
        assert np.array_equal(one.render_frame(t, cache=False), block[t]), t
    assert batched >= 2 * (clip.gt.n_frames // 8)  # strokes and textures went block by block
    assert one.ctx._links  # and far frames were matched again from their chain links

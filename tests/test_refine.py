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

"""Keys the user confirmed (``inve correct``) win over the photometric refinement near them.

Fast (no training): an analytic project whose mapping drifts by a couple of pixels, which
refinement corrects. A key confirmed where the mapping puts a point on one frame (as the
fine-tuning of ``inve correct`` leaves it) keeps the point there on that frame; points far
from the key, and other frames, are refined exactly as without it; in between, the
refinement fades in smoothly. The key file itself is tested in tests/test_correct.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.edits.context import RenderContext
from core.track import PointSpec, track_points
from tests.test_refine import DriftingMapping


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    from tests.synth import make_clip, make_gt_project

    clip = make_clip(T=12, size=(128, 96), camera="pan_zoom", occluder=False, seed=3)
    return clip, make_gt_project(clip, tmp_path_factory.mktemp("confirmed") / "p")


def _track(project, mapping, xy, refine=True, confirmed=None):
    ctx = RenderContext(project, mapping=mapping)
    ctx.refine_enabled = refine
    if confirmed is not None:
        ctx.confirmed = confirmed
    pts = [PointSpec(str(i), 0, 0, (float(x), float(y)), "bg") for i, (x, y) in enumerate(xy)]
    return np.stack([tr.xy for tr in track_points(ctx, pts)], 1)  # [T, N, 2]


def test_refinement_fades_out_near_a_confirmed_key(drifting):
    clip, project = drifting
    mapping = DriftingMapping(clip.gt, amount=3.0)
    t = clip.n_frames - 2
    xy = np.array([[40.0, 30.0], [40.0, 35.0], [100.0, 76.0]])  # at the key, a few px off it, far away
    raw = _track(project, mapping, xy, refine=False)
    ref = _track(project, mapping, xy)
    assert np.linalg.norm(ref[t, 0] - raw[t, 0]) > 1.0  # the drift refinement removes (and would undo a key)
    key = raw[t, 0] + np.array([0.3, -0.2])  # the fine-tuned mapping meets the key to a fraction of a px
    got = _track(project, mapping, xy, confirmed={("bg", t): key[None]})
    assert np.allclose(got[t, 0], raw[t, 0], atol=1e-6)  # the mapping's place, not appearance's
    assert np.allclose(got[t, 2], ref[t, 2], atol=1e-9)  # far from the key: refined as ever
    other = np.arange(clip.n_frames) != t
    assert np.allclose(got[other], ref[other], atol=1e-9)  # frames without keys: refined as ever
    # a few px from the key (between CONFIRMED_TRUST_PX and 3x that): part of the refinement,
    # smoothly more with the distance
    d = float(np.linalg.norm(raw[t, 1] - key))
    near = RenderContext.CONFIRMED_TRUST_PX
    s = (d - near) / (near * (RenderContext.CONFIRMED_FADE - 1))
    assert 0.05 < s < 0.95, d
    w = s * s * (3 - 2 * s)
    assert np.allclose(got[t, 1] - raw[t, 1], w * (ref[t, 1] - raw[t, 1]), atol=1e-6), (d, w, got[t, 1], ref[t, 1])
    # a key on the other layer changes nothing
    assert np.allclose(_track(project, mapping, xy, confirmed={("fg", t): key[None]}), ref, atol=1e-9)


def test_keys_on_two_frames_hold_the_frames_between_them(drifting):
    """Keys on frames 3 and 6 are trusted on 4 and 5 too (no one-frame jump), fading out over
    CONFIRMED_FRAMES beyond them; frames further away are refined as without keys."""
    from core.correct import CorrectionTrack

    clip, project = drifting
    mapping = DriftingMapping(clip.gt, amount=3.0)
    xy = np.array([[40.0, 30.0], [100.0, 76.0]])  # the confirmed point, one far away
    raw = _track(project, mapping, xy, refine=False)
    ref = _track(project, mapping, xy)
    t1, t2 = 3, 6
    keys = raw[[t1, t2], 0]  # the fine-tuned mapping meets the keys
    ctx = RenderContext(project, mapping=mapping)
    ctx.confirmed = {("bg", t): k[None] for t, k in zip((t1, t2), keys)}
    ctx.confirmed_tracks = [CorrectionTrack("p0", "bg", np.array([t1, t2]), keys)]
    ctx.CONFIRMED_FRAMES = W = 2  # a short fade, so this 12-frame clip has frames beyond it
    pts = [PointSpec(str(i), 0, 0, (float(x), float(y)), "bg") for i, (x, y) in enumerate(xy)]
    got = np.stack([tr.xy for tr in track_points(ctx, pts)], 1)
    moved = np.linalg.norm(ref[:, 0] - raw[:, 0], axis=-1)
    assert moved[t1:t2 + 1].min() > 1.0, moved  # refinement would move the point on all of them
    for t in range(t1, t2 + 1):  # on and between the keys: the mapping's place
        assert np.linalg.norm(got[t, 0] - raw[t, 0]) < 0.05, (t, got[t, 0], raw[t, 0], ref[t, 0])
    # one frame beyond the keys: mostly the mapping's place still, part refinement
    for t in (t1 - 1, t2 + 1):
        assert np.linalg.norm(got[t, 0] - raw[t, 0]) < 0.5 * np.linalg.norm(ref[t, 0] - raw[t, 0]), t
    far = [t for t in range(clip.n_frames) if t < t1 - W or t > t2 + W]
    assert len(far) >= 3 and np.allclose(got[far], ref[far], atol=1e-9)
    assert np.allclose(got[:, 1], ref[:, 1], atol=1e-9)  # far from the track: refined as ever

"""One coordinate convention and one visibility rule (core/coords.py, core/layers.py)."""
from __future__ import annotations

import numpy as np
import torch

from core.coords import FrameCoords, SourceCoords
from core.layers import layer_at, shows, visibility


def test_source_pixels_reach_the_working_raster_the_frames_were_resized_to():
    # 1000x563 trains at 256x144: the axes scale differently (0.256 vs 0.2558)
    c = SourceCoords((1000, 563), (256, 144))
    corners = np.array([[0.0, 0.0], [1000.0, 563.0]])
    p = c.to_norm(corners)
    # the frame's corners are the working raster's corners, exactly
    assert np.allclose(p, [[-1.0, -144 / 256], [1.0, 144 / 256]])
    xy = np.random.default_rng(0).uniform([0, 0], [1000, 563], (50, 2))
    assert np.allclose(c.from_norm(c.to_norm(xy)), xy, atol=1e-9)
    # a displacement of one working pixel along y is 563/144 source pixels
    d = c.delta_to_source_px(np.array([[0.0, 1.0 / 128]]))
    assert np.allclose(d, [[0.0, 563 / 144]])


def test_exact_scales_keep_the_old_normalisation():
    c = SourceCoords((1920, 1080), (256, 144))
    xy = np.array([[100.5, 40.25], [1919.5, 1079.5]])
    old = (xy - [960.0, 540.0]) / 960.0
    assert np.allclose(c.to_norm(xy), old, atol=1e-12)


def test_pixel_centres_match_numpy_and_torch_paths():
    f = FrameCoords(6, 4)
    grid = f.pixel_centres()
    ys, xs = np.mgrid[0:4, 0:6]
    ref = f.to_norm(np.stack([xs + 0.5, ys + 0.5], -1).reshape(-1, 2))
    assert torch.allclose(grid, torch.from_numpy(ref).float())
    assert f.extent == (1.0, 4 / 6)


def test_one_visibility_rule():
    a = np.array([0.0, 0.45, 0.5, 0.52, 1.0])
    assert shows("fg", a).tolist() == [False, False, False, True, True]
    assert shows("bg", a).tolist() == [True, True, True, False, False]
    # the inclusive variant takes the soft edge on both sides
    assert shows("fg", a, slack=0.05).tolist() == [False, False, True, True, True]
    assert shows("bg", a, slack=0.05).tolist() == [True, True, True, True, False]
    assert torch.equal(shows("fg", torch.tensor(a)), torch.tensor(shows("fg", a)))
    assert np.allclose(visibility("bg", a) + visibility("fg", a), 1.0)
    assert layer_at(0.7) == "fg" and layer_at(0.5) == "bg"
    # the pixels' evidence (log odds that the foreground shows) moves alpha's odds: at the
    # cap of 2 it decides where alpha is unsure (0.2, 0.8) and not where alpha is sure
    b = np.array([0.02, 0.2, 0.45, 0.8, 0.98])
    assert shows("fg", b, evidence=np.full(5, 2.0)).tolist() == [False, True, True, True, True]
    assert shows("fg", b, evidence=np.full(5, -2.0)).tolist() == [False, False, False, False, True]
    assert shows("bg", b, evidence=np.zeros(5)).tolist() == shows("bg", b).tolist()
    assert (shows("bg", b, evidence=np.array([-2.0, 2.0, -2.0, 2.0, -2.0]))
            != shows("fg", b, evidence=np.array([-2.0, 2.0, -2.0, 2.0, -2.0]))).all()

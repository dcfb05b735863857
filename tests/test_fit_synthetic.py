"""The fitted mappings recover a known motion.

A synthetic clip (tests/synth.py): a textured background filmed by a camera that pans,
zooms by 25 % and turns by 9 degrees, and a textured disc sliding and turning in front.
After a short fit, a point is carried from frame a to frame b through the learned forward
mapping (frame a -> atlas) and inverse mapping (atlas -> frame b) and compared with where
the ground truth puts it. Atlas coordinates themselves are arbitrary, so only such
frame-to-frame correspondences are compared.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.progress import Progress
from core.project import Project
from core.train import TrainConfig, train_project

pytestmark = pytest.mark.slow

# Stated tolerances (source pixels, 128x96 frames): median over points each layer shows.
BG_MEDIAN_PX = 1.0
FG_MEDIAN_PX = 1.5
CYCLE_MEDIAN_PX = 0.5


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from tests.synth import make_clip, write_clip, write_masks

    clip = make_clip(T=10, size=(128, 96), camera="pan_zoom", seed=1)
    root = tmp_path_factory.mktemp("fit")
    video = write_clip(clip, root / "frames")
    masks = write_masks(clip, root / "masks")
    project = train_project(video, root / "project",
                            TrainConfig(iters=500, masks=str(masks), seed=0), Progress("none"))
    return clip, project


def _visible_points(clip, layer: str, a: int, b: int, rng: np.random.Generator, n: int = 400) -> np.ndarray:
    """Points of frame a that the layer shows in both frame a and frame b (away from the rim)."""
    W, H = clip.size
    xy = np.stack([rng.uniform(4, W - 4, n * 8), rng.uniform(4, H - 4, n * 8)], 1)
    gt = clip.gt
    xb = gt.inverse(layer, gt.forward(layer, xy, np.full(len(xy), a)), np.full(len(xy), b))
    inside = (xb[:, 0] > 4) & (xb[:, 0] < W - 4) & (xb[:, 1] > 4) & (xb[:, 1] < H - 4)
    aa, ab = gt.alpha(xy, np.full(len(xy), a)), gt.alpha(xb, np.full(len(xy), b))
    shown = (aa > 0.99) & (ab > 0.99) if layer == "fg" else (aa < 0.01) & (ab < 0.01)
    # stay away from the disc's rim, where a pixel mixes both layers
    keep = inside & shown
    return xy[keep][:n]


@pytest.mark.parametrize("layer,a,b,tolerance,min_points", [
    ("bg", 0, 9, BG_MEDIAN_PX, 100), ("bg", 2, 6, BG_MEDIAN_PX, 100), ("bg", 9, 1, BG_MEDIAN_PX, 100),
    ("fg", 3, 6, FG_MEDIAN_PX, 50), ("fg", 5, 7, FG_MEDIAN_PX, 50),
])
def test_correspondence_matches_the_known_motion(fitted, layer, a, b, tolerance, min_points):
    clip, project = fitted
    mapping = project.mapping()
    xy = _visible_points(clip, layer, a, b, np.random.default_rng(a * 10 + b))
    assert len(xy) > min_points
    ta, tb = np.full(len(xy), a), np.full(len(xy), b)
    truth = clip.gt.inverse(layer, clip.gt.forward(layer, xy, ta), tb)
    learned = mapping.inverse(layer, mapping.forward(layer, xy, ta), tb)
    err = np.linalg.norm(learned - truth, axis=1)
    assert np.median(err) < tolerance, f"{layer} {a}->{b}: median {np.median(err):.2f} px"


def test_alpha_separates_the_layers_and_reconstruction_is_good(fitted):
    clip, project = fitted
    maps = project.maps()
    iou = []
    for t in range(clip.n_frames):
        pred, true = maps.alpha[t] > 0.5, clip.masks[t] > 0.5
        iou.append((pred & true).sum() / max(1, (pred | true).sum()))
    assert np.mean(iou) > 0.9, iou
    metrics = project.metrics()
    assert metrics["psnr"] > 25.0
    assert metrics["cycle_error_px"]["bg"] < CYCLE_MEDIAN_PX


def test_baked_atlas_reproduces_what_the_networks_learned(fitted):
    """Edits sample the baked atlas: it must not be blurrier than the fit (within 0.5 dB)."""
    _, project = fitted
    metrics = project.metrics()
    assert metrics["atlas_psnr"] >= metrics["psnr"] - 0.5, metrics


def test_project_reopens_from_disk(fitted):
    """The networks reloaded from checkpoint.pt give the mapping that was baked into the maps
    (two loads of one file would agree even if saving lost the trained weights)."""
    _, project = fitted
    again = Project.open(project.path)
    maps = again.maps()
    (w, h), (W, H) = again.info.work_size, again.info.source_size
    ij = np.array([[5, 7], [w // 2, h // 2], [w - 4, h - 3], [w // 3, 2 * h // 3]])
    xy = (ij + 0.5) * np.array([W / w, H / h])
    mapping = again.mapping()
    for t in (0, 3):
        uv = mapping.forward("bg", xy, np.full(len(xy), t))
        baked = np.asarray(maps.uv["bg"][t][ij[:, 1], ij[:, 0]], np.float32)
        assert np.abs(uv - baked).max() < 5e-3, (uv, baked)  # float16 storage: ~5e-4

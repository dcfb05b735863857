"""Preprocessing: flow accuracy and consistency, automatic and user masks, caching."""
from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from core import masks as masks_mod
from core import preprocess as pre
from core.errors import InveError
from core.flow import compute_flow

H, W = 96, 128


def texture(h: int, w: int, seed: int, sigma: float = 1.5) -> np.ndarray:
    """Random texture with detail at a few pixels: something flow can lock onto everywhere."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def warp(img: np.ndarray, A: np.ndarray, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Frame whose pixel A @ p shows ``img``'s pixel p (so the true flow is A p - p)."""
    return cv2.warpAffine(img, A.astype(np.float64), size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def true_flow(A: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([A[0, 0] * xs + A[0, 1] * ys + A[0, 2] - xs,
                     A[1, 0] * xs + A[1, 1] * ys + A[1, 2] - ys], -1)


@pytest.mark.parametrize("A", [np.array([[1, 0, 3.3], [0, 1, -1.7]]),
                               np.array([[1.02, 0.03, 2.0], [-0.02, 0.99, 1.0]])],
                         ids=["translation", "affine"])
def test_flow_accuracy(A: np.ndarray) -> None:
    f0 = texture(H, W, 1)
    fl = compute_flow(np.stack([f0, warp(f0, A)]))
    epe_f = np.linalg.norm(fl.fwd[0] - true_flow(A), axis=-1)[6:-6, 6:-6]
    assert np.median(epe_f) < 0.5
    # backward flow undoes the forward one: at p' = A p it is p - p'
    Ainv = cv2.invertAffineTransform(A.astype(np.float64))
    epe_b = np.linalg.norm(fl.bwd[0] - true_flow(Ainv), axis=-1)[6:-6, 6:-6]
    assert np.median(epe_b) < 0.5
    assert fl.fwd_ok[0][6:-6, 6:-6].mean() > 0.9


def square_clip(T: int = 16, pause: range = range(0, 0), camera_shift: float = 0.0,
                with_square: bool = True, step: float = 3.0, side: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """A textured square sliding over a textured background (optionally panning); true masks."""
    bg = texture(H + 40, W + 80, 2)
    sq = texture(side, side, 3, sigma=1.0) // 2 + 120  # distinct brighter, finer texture
    frames = np.empty((T, H, W, 3), np.uint8)
    truth = np.zeros((T, H, W), bool)
    x = 12.0
    for t in range(T):
        if t > 0 and t not in pause:
            x += step
        ox = camera_shift * t
        frame = warp(bg, np.array([[1, 0, -ox], [0, 1, 0.0]]))
        if with_square:
            xi, yi = int(round(x)), 24 + t // 2
            frame[yi:yi + side, xi:xi + side] = sq
            truth[t, yi:yi + side, xi:xi + side] = True
        frames[t] = frame
    return frames, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_consistency_flags_occlusion() -> None:
    frames, truth = square_clip(T=2, step=10.0, side=26)
    fl = compute_flow(frames)
    # Background of frame 0 that the square covers in frame 1 has nowhere to go. DIS smears
    # the square's motion up to half a patch (4 px) onto it, and such vectors are
    # consistent, so look at the part of the 10 px strip beyond that.
    occluded = truth[1] & ~truth[0]
    occluded &= ~(cv2.dilate(truth[0].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert occluded.sum() > 80
    assert fl.fwd_ok[0][occluded].mean() < 0.3
    # likewise background that the square uncovers in frame 1 has no source in frame 0
    revealed = truth[0] & ~truth[1]
    revealed &= ~(cv2.dilate(truth[1].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert fl.bwd_ok[0][revealed].mean() < 0.3
    far = np.zeros((H, W), bool)
    far[:, 80:-4] = True  # background away from the square
    assert fl.fwd_ok[0][far].mean() > 0.95 and fl.bwd_ok[0][far].mean() > 0.95
    # the square itself is tracked: its flow is the true +10 px
    inner = cv2.erode(truth[0].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.median(fl.fwd[0][inner][:, 0]) == pytest.approx(10.0, abs=0.3)
    assert fl.fwd_ok[0][inner].mean() > 0.9


def test_auto_masks_moving_square_with_pause() -> None:
    pause = range(7, 11)  # the square rests in frames 7..10: only carried evidence covers them
    frames, truth = square_clip(T=18, pause=pause)
    fl = compute_flow(frames)
    m = masks_mod.auto_masks(frames, fl)
    assert m is not None and m.shape == truth.shape and m.dtype == np.uint8
    scores = [iou(m[t] > 0.5, truth[t]) for t in range(len(frames))]
    assert np.mean(scores) > 0.6, scores
    assert min(scores[t] for t in pause) > 0.5, scores


def test_auto_masks_panning_camera_with_object() -> None:
    frames, truth = square_clip(T=14, camera_shift=1.5)
    m = masks_mod.auto_masks(frames, compute_flow(frames))
    assert m is not None
    assert np.mean([iou(m[t] > 0.5, truth[t]) for t in range(len(frames))]) > 0.6


@pytest.mark.parametrize("shift", [0.0, 2.0], ids=["static", "pan"])
def test_auto_masks_none_without_object(shift: float) -> None:
    frames, _ = square_clip(T=12, camera_shift=shift, with_square=False)
    rng = np.random.default_rng(5)
    noisy = np.clip(frames.astype(np.int16) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
    assert masks_mod.auto_masks(noisy, compute_flow(noisy)) is None


def _write_masks(folder: Path, truth: np.ndarray, names: list[str]) -> None:
    folder.mkdir()
    for m, name in zip(truth, names):
        iio.imwrite(folder / name, (m * 255).astype(np.uint8))


def test_load_masks_naming_schemes(tmp_path: Path) -> None:
    _, truth = square_clip(T=6)
    # 1. exactly one file per frame, any names, sorted by name
    _write_masks(tmp_path / "a", truth, [f"mask_{i}.png" for i in range(6)])
    m = masks_mod.load_masks(tmp_path / "a", 6, 100, (64, 48))
    assert m.shape == (6, 48, 64) and m.dtype == np.uint8
    expect = cv2.resize(truth[4].astype(np.float32), (64, 48), interpolation=cv2.INTER_AREA) > 0.5
    np.testing.assert_array_equal(m[4] > 0.5, expect)
    # 2. named by source frame index; a project of frames 2..4 takes 0002..0004 of the six
    _write_masks(tmp_path / "b", truth, [f"{i:04d}.png" for i in range(6)])
    m = masks_mod.load_masks(tmp_path / "b", 3, 2, (W, H))
    np.testing.assert_array_equal(m > 0.5, truth[2:5])
    # RGBA cut-outs mark foreground by alpha
    (tmp_path / "c").mkdir()
    for i in range(2):
        rgba = np.zeros((H, W, 4), np.uint8)
        rgba[..., :3] = 200
        rgba[..., 3] = truth[i] * 255
        iio.imwrite(tmp_path / "c" / f"{i}.png", rgba)
    np.testing.assert_array_equal(masks_mod.load_masks(tmp_path / "c", 2, 0, (W, H)) > 0.5, truth[:2])


def test_load_masks_errors(tmp_path: Path) -> None:
    _, truth = square_clip(T=4)
    _write_masks(tmp_path / "few", truth[:3], ["0000.png", "0001.png", "0003.png"])
    with pytest.raises(InveError, match="missing frame"):
        masks_mod.load_masks(tmp_path / "few", 4, 0, (W, H))
    with pytest.raises(InveError, match="not found"):
        masks_mod.load_masks(tmp_path / "nope", 4, 0, (W, H))
    _write_masks(tmp_path / "bad", truth, [f"{i:04d}.png" for i in range(4)])
    (tmp_path / "bad" / "0002.png").write_bytes(b"not a png")
    with pytest.raises(InveError, match="cannot decode"):
        masks_mod.load_masks(tmp_path / "bad", 4, 0, (W, H))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InveError, match="no images"):
        masks_mod.load_masks(tmp_path / "empty", 4, 0, (W, H))


def test_preprocess_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames, truth = square_clip(T=10)
    cache = tmp_path / "cache"
    first = pre.preprocess(cache, frames, None, False, 0, None)
    assert first.mask_source == "auto" and first.masks is not None
    assert (cache / pre.FLOW_DIR / "meta.json").is_file() and (cache / pre.MASKS_DIR / "meta.json").is_file()
    assert iio.imread(cache / pre.PREVIEW_FILE).shape[0] == 160

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite a valid cache")

    monkeypatch.setattr(pre, "compute_flow", boom)
    monkeypatch.setattr(pre, "auto_masks", boom)
    second = pre.preprocess(cache, frames, None, False, 0, None)
    for a, b in ((first.flow.fwd, second.flow.fwd), (first.flow.bwd, second.flow.bwd),
                 (first.flow.fwd_ok, second.flow.fwd_ok), (first.flow.bwd_ok, second.flow.bwd_ok),
                 (first.masks, second.masks)):
        np.testing.assert_array_equal(a, b)
    # a changed input must not reuse the cache
    changed = frames.copy()
    changed[3, 10, 10] ^= 1
    with pytest.raises(AssertionError, match="recomputed"):
        pre.preprocess(cache, changed, None, False, 0, None)
    # single-layer needs no masks at all
    single = pre.preprocess(cache, frames, None, True, 0, None)
    assert single.masks is None and single.mask_source == "none"


def test_preprocess_user_masks(tmp_path: Path) -> None:
    frames, truth = square_clip(T=5)
    _write_masks(tmp_path / "m", truth, [f"{i:04d}.png" for i in range(5)])
    out = pre.preprocess(tmp_path / "cache", frames, tmp_path / "m", False, 0, None)
    assert out.mask_source == "user"
    np.testing.assert_array_equal(out.masks > 0.5, truth)
    # editing a mask file invalidates the cached masks
    iio.imwrite(tmp_path / "m" / "0001.png", np.zeros((H, W), np.uint8))
    again = pre.preprocess(tmp_path / "cache", frames, tmp_path / "m", False, 0, None)
    assert again.masks[1].sum() == 0 and again.masks[0].sum() == truth[0].sum()
    with pytest.raises(InveError, match="contradict"):
        pre.preprocess(tmp_path / "cache", frames, tmp_path / "m", True, 0, None)


def test_preprocess_static_clip_is_single_layer(tmp_path: Path) -> None:
    frames, _ = square_clip(T=8, camera_shift=1.0, with_square=False)
    out = pre.preprocess(tmp_path / "c", frames, None, False, 0, None)
    assert out.masks is None and out.mask_source == "none"
    assert out.flow.fwd.shape == (7, H, W, 2)
    assert np.median(out.flow.fwd[..., 0]) == pytest.approx(-1.0, abs=0.1)  # content slides left


def test_flow_cancel() -> None:
    from core.errors import Cancelled
    from core.progress import Progress

    frames, _ = square_clip(T=4)
    progress = Progress("none")
    progress.cancel.cancel()
    with pytest.raises(Cancelled):
        compute_flow(frames, progress)

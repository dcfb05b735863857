"""The bake stage's progress: the atlases and their usage splats are spread over the frame
steps, so every step costs about the same and the ETA (elapsed per step x steps left) holds
across the stage (issue #10: within 20 % after the first 10 %); the maps are unchanged."""
from __future__ import annotations

import io
import json

import numpy as np
import torch

from core.bake import atlas_grid, atlas_usage, bake
from core.model import LayeredAtlasModel, ModelConfig
from core.progress import Progress


def tiny_model(n: int) -> LayeredAtlasModel:
    torch.manual_seed(0)
    return LayeredAtlasModel(ModelConfig(n_frames=n, work_size=(32, 24), map_log2_table=12, alpha_log2_table=12,
                                         atlas_log2_table=12, atlas_levels=6, alpha_levels=4, map_levels=4))


class Steps(Progress):
    """JSON progress that also remembers the last step reported (to see when work happens)."""

    def __init__(self, buf: io.StringIO) -> None:
        super().__init__("json", stream=buf, min_interval=0.0)
        self.last = -1

    def update(self, stage, step, total, force=False, **extra):
        self.last = step
        super().update(stage, step, total, force, **extra)


def test_atlas_work_is_spread_over_the_frame_steps():
    n = 12
    frames = np.random.default_rng(1).integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
    model = tiny_model(n)
    buf = io.StringIO()
    prog = Steps(buf)
    at_step = []
    atlas = model.atlas
    # atlas-grid chunks (8192 texels; reconstruct's own atlas calls see a frame's 768 pixels)
    model.atlas = lambda L, uv: (len(uv) == 1 << 13 and at_step.append(prog.last), atlas(L, uv))[1]  # type: ignore[method-assign]
    res = bake(model, frames, (64, 48), progress=prog, atlas_size=512, chunk=1 << 13)
    evs = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["step"] for e in evs] == list(range(n + 1)) and all(e["total"] == n for e in evs)
    # 2 layers x 512^2 / 8192 = 64 atlas chunks over 12 frame steps: 5 or 6 after each frame
    assert len(at_step) == 2 * 512 * 512 // (1 << 13)
    per_step = np.bincount(at_step, minlength=n)
    assert per_step.min() >= 5 and per_step.max() <= 6 and per_step.sum() == len(at_step)
    # the maps are what the two-phase bake made: the whole atlas grid, the usage of the stored maps
    model.atlas = atlas  # type: ignore[method-assign]
    with torch.no_grad():
        grid = atlas_grid(512)
        for L in model.cfg.layers:
            ref = np.concatenate([atlas(L, grid[s:s + (1 << 15)]).numpy() for s in range(0, grid.shape[0], 1 << 15)])
            np.testing.assert_allclose(res.maps.atlas[L], ref.reshape(512, 512, 3), atol=1e-6, rtol=0)
            assert np.array_equal(res.maps.atlas_used[L], atlas_usage(res.maps.uv[L], res.maps.alpha, 512, L))


def test_bake_without_progress_and_more_frames_than_chunks():
    n = 5
    frames = np.random.default_rng(2).integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
    model = tiny_model(n)
    res = bake(model, frames, (64, 48), atlas_size=64)
    assert all(res.maps.atlas[L].shape == (64, 64, 3) for L in model.cfg.layers)
    assert all(res.maps.atlas_used[L].shape == (64, 64) for L in model.cfg.layers)

"""The bake stage's progress: atlas steps are weighted by their measured cost, so the ETA
(elapsed per step x steps left) holds across the stage (issue #10: within 20 % after 10 %)."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import torch

from core.bake import atlas_step_weights, bake, frame_grid
from core.model import LayeredAtlasModel, ModelConfig
from core.progress import Progress


def tiny_model(n: int = 4) -> LayeredAtlasModel:
    torch.manual_seed(0)
    return LayeredAtlasModel(ModelConfig(n_frames=n, work_size=(32, 24), map_log2_table=12, alpha_log2_table=12,
                                         atlas_log2_table=12, atlas_levels=6, alpha_levels=4, map_levels=4))


def test_bake_reports_weighted_atlas_steps():
    frames = np.random.default_rng(1).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    model = tiny_model()
    buf = io.StringIO()
    bake(model, frames, (64, 48), progress=Progress("json", stream=buf, min_interval=0.0), atlas_size=512)
    evs = [json.loads(line) for line in buf.getvalue().splitlines()]
    steps = [e["step"] for e in evs]
    total = evs[-1]["total"]
    assert all(e["stage"] == "bake" and e["total"] == total for e in evs)
    assert steps == sorted(steps) and steps[-1] == total and steps[:5] == [0, 1, 2, 3, 4]
    # 512^2 texels per layer against 32x24 pixels per frame: each atlas step weighs many frames
    atlas_steps = total - 4
    assert atlas_steps >= 2 * len(model.cfg.layers)


def test_atlas_weights_follow_the_work():
    """Four times the texels (and the frames to splat) weigh clearly more; never below one step."""
    model = tiny_model()
    grid = frame_grid(32, 24)
    layers = list(model.cfg.layers)
    with torch.no_grad():
        small = atlas_step_weights(model, grid, layers, 128, 4)
        big = atlas_step_weights(model, grid, layers, 1024, 400)
    assert all(w >= 1 for w in small)
    assert all(b >= 4 * s for b, s in zip(big, small)), (small, big)

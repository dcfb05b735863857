"""What a segment of a long shot stores: a compact checkpoint whose every hash table is
float16, and networks that the maps were baked from exactly (core/train.py compact_model)."""
from __future__ import annotations

import torch

from core.model import LayeredAtlasModel, ModelConfig
from core.train import COMPACT_MIN_NUMEL, compact_model


def _points(n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g) * 2 - 1, torch.randint(0, 12, (n,), generator=g).float()


def test_compact_model_stores_tables_in_float16_and_the_model_is_exactly_what_reloads():
    torch.manual_seed(0)
    model = LayeredAtlasModel(ModelConfig(n_frames=12, work_size=(64, 48)))
    with torch.no_grad():  # trained-like tables: values of every magnitude, not the tiny init
        for p in model.parameters():
            if p.numel() >= COMPACT_MIN_NUMEL:
                p.add_(torch.randn_like(p) * 0.1)
    p, t = _points()
    with torch.no_grad():
        before = {L: model.uv(L, p, t) for L in ("bg", "fg")}
    state = compact_model(model)
    tables = [k for k, v in state.items() if v.numel() >= COMPACT_MIN_NUMEL]
    assert {k.split(".")[0] for k in tables} == {"forward_maps", "inverse_maps", "atlases", "alpha_field"}
    assert all(state[k].dtype == torch.float16 for k in tables)
    assert all(v.dtype == torch.float32 for k, v in state.items() if k not in tables and v.is_floating_point())
    half_bytes = sum(v.numel() * v.element_size() for v in state.values())
    full_bytes = sum(v.numel() * 4 for v in state.values() if v.is_floating_point())
    assert half_bytes < 0.55 * full_bytes
    fresh = LayeredAtlasModel(ModelConfig(n_frames=12, work_size=(64, 48)))
    fresh.load_state_dict(state)  # loading casts back to float32
    with torch.no_grad():
        for L in ("bg", "fg"):
            uv = model.uv(L, p, t)
            # the model in memory (which bakes the maps) is the one that reloads, bit for bit
            assert torch.equal(uv, fresh.uv(L, p, t))
            assert torch.equal(model.inverse(L, uv, t), fresh.inverse(L, uv, t))
            # and rounding moved the mapping by a tiny part of a working pixel (uv_scale 2/64 here)
            assert float((uv - before[L]).abs().max()) < 0.02 * 0.6 * 2 / 64
        assert torch.equal(model.alpha(p, t), fresh.alpha(p, t))

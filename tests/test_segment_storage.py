"""Segments of a long shot: what they store (a compact checkpoint whose every hash table is
float16, networks the maps were baked from exactly: core/train.py compact_model) and how a new
one starts from its trained neighbour (core/segments.py warm_start)."""
from __future__ import annotations

import torch

from core.model import LayeredAtlasModel, ModelConfig, config_to_json
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


def test_warm_start_copies_atlases_and_distils_the_neighbours_mappings_at_the_same_source_frames(tmp_path):
    """A new segment starting 6 frames after its neighbour: at its frame t its networks give
    what the neighbour's give at frame t + 6 (and hold the neighbour's last frame beyond)."""
    from core.segments import warm_start

    torch.manual_seed(1)
    teacher = LayeredAtlasModel(ModelConfig(n_frames=10, work_size=(64, 48)))
    with torch.no_grad():  # a smooth, time-varying mapping the student must pick up
        for L in ("bg", "fg"):
            last = teacher.forward_maps[L].mlp[-1]
            last.weight.normal_(0, 0.05)
            last.bias.copy_(torch.tensor([0.05, -0.03]))
        for p in teacher.atlases.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": teacher.state_dict(), "model_config": config_to_json(teacher.cfg)}, ckpt)
    student = LayeredAtlasModel(ModelConfig(n_frames=12, work_size=(64, 48)))
    spent = warm_start(student, {"checkpoint": str(ckpt), "offset": 6, "frames": 10}, "cpu")
    assert spent > 0
    for L in ("bg", "fg"):
        for a, b in zip(student.atlases[L].parameters(), teacher.atlases[L].parameters()):
            assert torch.equal(a, b)
    p, _ = _points(4096, seed=5)
    p = p * student.aspect_v
    px = 2 * 0.6 / 64  # one working pixel in uv units
    with torch.no_grad():
        for t, tt in ((0, 6), (2, 8), (3, 9), (8, 9)):  # the overlap, then the neighbour's last frame held
            ts, tt_ = torch.full((len(p),), float(t)), torch.full((len(p),), float(tt))
            for L in ("bg", "fg"):
                want = teacher.uv(L, p, tt_)
                err = (student.uv(L, p, ts) - want).norm(dim=1)
                base = (student.cfg.uv_scale * p - want).norm(dim=1)  # where a fresh model starts
                assert float(err.median()) < 0.2 * px < float(base.median()), (t, L, float(err.median()))
                back = (student.inverse(L, want, ts) - p).norm(dim=1)
                assert float(back.median()) < 0.5 * 2 / 64, (t, L, float(back.median()))
            assert float((student.alpha(p, ts) - teacher.alpha(p, tt_)).abs().median()) < 0.02

"""Choosing the hash-grid implementation: pure PyTorch everywhere, tinycudann on CUDA.

Both backends take points in [0, 1]^D and return ``n_levels * n_features`` features, so a
field never knows which one it got. tinycudann has one resolution for all dimensions; a
coarser axis (time) is emulated by shrinking that coordinate into [0, max_t / max_xy], so
its effective cell count per level matches the PyTorch grid's.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from core.hashgrid import HashGrid, HashGridConfig


def tinycudann_available(device: str | torch.device) -> bool:
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("tinycudann")
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


class TcnnGrid(nn.Module):
    """tinycudann HashGrid behind the :class:`HashGrid` interface (CUDA only)."""

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        import tinycudann as tcnn  # noqa: PLC0415 - optional dependency

        base = cfg.per_dim(cfg.base_res)
        top = cfg.per_dim(cfg.max_res)
        finest = max(top)
        self.cfg = cfg
        self.register_buffer("axis_scale", torch.tensor([t / finest for t in top], dtype=torch.float32),
                             persistent=False)
        scale = (finest / max(base)) ** (1.0 / max(1, cfg.n_levels - 1))
        self.encoding = tcnn.Encoding(cfg.n_dims, {
            "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table, "base_resolution": int(max(base)), "per_level_scale": scale,
        }, dtype=torch.float32)

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.clamp(0.0, 1.0) * self.axis_scale).float()


def make_grid(cfg: HashGridConfig, device: str | torch.device = "cpu", backend: str = "auto") -> nn.Module:
    """``backend``: ``auto`` (tinycudann when importable on CUDA), ``torch`` or ``tcnn``."""
    if backend == "tcnn" or (backend == "auto" and tinycudann_available(device)):
        return TcnnGrid(cfg)
    return HashGrid(cfg)


def backend_name(module: Any) -> str:
    return "tcnn" if isinstance(module, TcnnGrid) else "torch"

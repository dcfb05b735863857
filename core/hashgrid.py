"""Multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) in plain PyTorch.

This is the engine's default encoding and it has to be fast on a 2-core CPU, so all levels
are evaluated at once: one integer pass builds the corner indices of every level, one
``index_select`` gathers every corner feature (its backward is a single ``index_add_``),
and the multilinear weights are formed with broadcasting. Coarse levels whose grid fits in
the table are indexed densely (no collisions); fine levels are hashed with the Instant-NGP
primes. Each level gets a table of ``min(2**log2_table, vertices)`` rows, so small levels
cost no optimizer time.

Resolutions may differ per input dimension: a mapping (x, y, t) needs a fine grid in space
but at most one cell per frame in time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

#: Instant-NGP's spatial hash primes (the first is 1 for memory coherence).
PRIMES = (1, 2654435761, 805459861, 3674653429)


@dataclass(frozen=True)
class HashGridConfig:
    n_dims: int
    n_levels: int = 12
    n_features: int = 2
    log2_table: int = 16
    base_res: float | Sequence[float] = 16.0
    max_res: float | Sequence[float] = 512.0
    init_scale: float = 1e-4

    def per_dim(self, value: float | Sequence[float]) -> list[float]:
        if isinstance(value, (int, float)):
            return [float(value)] * self.n_dims
        values = [float(v) for v in value]
        if len(values) != self.n_dims:
            raise ValueError(f"expected {self.n_dims} values, got {values}")
        return values

    def resolutions(self) -> list[list[int]]:
        """Grid resolution (cells per unit) of every level and dimension, geometric in between."""
        base, top = self.per_dim(self.base_res), self.per_dim(self.max_res)
        res = []
        for level in range(self.n_levels):
            frac = level / max(1, self.n_levels - 1)
            res.append([max(1, int(math.floor(b * (t / b) ** frac))) if t > b else max(1, int(b))
                        for b, t in zip(base, top)])
        return res

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features


class _GridFunction(torch.autograd.Function):
    """Fused multilinear gather with a hand-written backward.

    Layout is level-major ([C, L, N]: corner, level, point) so every per-level slice is
    contiguous. The backward is one 1-D ``scatter_add_`` per feature for the table and, only
    when the input needs a gradient (an atlas sampled at a learned uv), a few [L, N] products.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, grid: "HashGrid") -> torch.Tensor:  # type: ignore[override]
        idx, fac0, fac1 = grid.corners_and_factors(x)  # idx: [C, L, N] int64; fac: [D, L, N]
        w = grid.corner_weights(fac0, fac1)  # [C, L, N]
        out = torch.stack([(table[f].take(idx) * w).sum(0) for f in range(table.shape[0])], dim=-1)  # [L, N, F]
        ctx.grid = grid
        ctx.save_for_backward(idx, w, fac0, fac1, table)
        return out.permute(1, 0, 2).reshape(x.shape[0], -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        idx, w, fac0, fac1, table = ctx.saved_tensors
        grid: HashGrid = ctx.grid
        c, levels, n = idx.shape
        n_feat = table.shape[0]
        g = grad_out.reshape(n, levels, n_feat).permute(2, 1, 0)  # [F, L, N]
        flat_idx = idx.reshape(-1)
        grad_table = None
        if ctx.needs_input_grad[1]:
            # 1-D scatter_add_ per feature with int64 indices is PyTorch's fastest CPU path
            # (index_add_ over rows is ~5x slower, int32 indices ~20x).
            grad_table = torch.zeros_like(table)
            for f in range(n_feat):
                grad_table[f].scatter_add_(0, flat_idx, (w * g[f]).reshape(-1))
        grad_x = None
        if ctx.needs_input_grad[0]:
            gc = sum(table[f].take(idx) * g[f] for f in range(n_feat))  # [C, L, N]: dloss/dw_c
            dims = fac0.shape[0]
            cols = []
            for d in range(dims):
                acc = torch.zeros_like(fac0[0])
                for corner in range(c):
                    term = gc[corner]
                    for e in range(dims):
                        if e != d:
                            term = term * (fac1[e] if (corner >> e) & 1 else fac0[e])
                    acc = acc + term if (corner >> d) & 1 else acc - term
                cols.append((acc * grid.res_f[d]).sum(0))  # chain rule: d frac / d x = res
            grad_x = torch.stack(cols, dim=1)
        return grad_x, grad_table, None


class HashGrid(nn.Module):
    """Encodes points in [0, 1]^D into ``n_levels * n_features`` features."""

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        if not 1 <= cfg.n_dims <= len(PRIMES):
            raise ValueError(f"n_dims must be 1..{len(PRIMES)}")
        # Products of small corner weights and small table entries reach denormal floats,
        # which x86 CPUs process ~10x slower; flushing them to zero changes nothing else.
        torch.set_flush_denormal(True)
        self.cfg = cfg
        table_cap = 2 ** cfg.log2_table
        res = torch.tensor(cfg.resolutions(), dtype=torch.int64)  # [L, D]
        vertices = (res + 1).prod(dim=1)  # [L]
        hashed = vertices > table_cap
        if bool(hashed.any()):
            first_hashed = int(torch.nonzero(hashed)[0])
            if not bool(hashed[first_hashed:].all()):
                raise ValueError("levels must grow: a dense level after a hashed one")
        else:
            first_hashed = cfg.n_levels
        sizes = torch.minimum(vertices, torch.tensor(table_cap))
        strides = torch.ones_like(res)
        for d in range(1, cfg.n_dims):
            strides[:, d] = strides[:, d - 1] * (res[:, d - 1] + 1)
        offsets = torch.zeros(cfg.n_levels, dtype=torch.int64)
        offsets[1:] = torch.cumsum(sizes, 0)[:-1]
        n_corners = 2 ** cfg.n_dims
        bits = torch.tensor([[(c >> d) & 1 for d in range(cfg.n_dims)] for c in range(n_corners)])  # [C, D]
        corner_offsets = bits @ strides.T  # [C, L]: dense index of each corner relative to its cell
        self.n_dense = first_hashed
        self.table_mask = table_cap - 1
        self.primes = list(PRIMES[: cfg.n_dims])
        self.register_buffer("res", res.T.contiguous().unsqueeze(-1), persistent=False)  # [D, L, 1]
        self.register_buffer("res_f", res.T.contiguous().to(torch.float32).unsqueeze(-1), persistent=False)
        self.register_buffer("strides", strides.T.contiguous().unsqueeze(-1), persistent=False)  # [D, L, 1]
        self.register_buffer("offsets", offsets.view(-1, 1), persistent=False)  # [L, 1]
        self.register_buffer("corner_offsets", corner_offsets.unsqueeze(-1), persistent=False)  # [C, L, 1]
        total = int(sizes.sum())
        # Feature-major [F, rows]: each feature is one contiguous 1-D table (fast take/scatter).
        self.table = nn.Parameter(torch.empty(cfg.n_features, total).uniform_(-cfg.init_scale, cfg.init_scale))

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def corners_and_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table rows of every corner [C, L, N] and the per-dim weights (1-frac, frac) [D, L, N]."""
        pos = x.detach().T.unsqueeze(1) * self.res_f  # [D, L, N]
        cell = torch.minimum(torch.floor(pos).to(torch.int64).clamp_(min=0), self.res - 1)
        fac1 = pos - cell.to(pos.dtype)
        fac0 = 1.0 - fac1
        n_dims, levels, n = pos.shape
        nd = self.n_dense
        idx = torch.empty(2 ** n_dims, levels, n, dtype=torch.int64, device=x.device)
        if nd > 0:
            # dense levels: one base index per cell, corners are constant offsets from it
            base = (cell[:, :nd] * self.strides[:, :nd]).sum(0) + self.offsets[:nd]  # [nd, N]
            torch.add(base.unsqueeze(0), self.corner_offsets[:, :nd], out=idx[:, :nd])
        if nd < levels:
            lo = [cell[d, nd:] * self.primes[d] for d in range(n_dims)]
            hi = [v + p for v, p in zip(lo, self.primes)]
            for corner in range(2 ** n_dims):
                h = lo[0] if corner & 1 == 0 else hi[0]
                for d in range(1, n_dims):
                    h = torch.bitwise_xor(h, hi[d] if (corner >> d) & 1 else lo[d])
                torch.add(torch.bitwise_and(h, self.table_mask), self.offsets[nd:], out=idx[corner, nd:])
        return idx, fac0, fac1

    def corner_weights(self, fac0: torch.Tensor, fac1: torch.Tensor) -> torch.Tensor:
        """Multilinear weight of every corner, [C, L, N]; pairs of dims are shared between corners."""
        n_dims = fac0.shape[0]
        partial = [fac0[0], fac1[0]]  # weights over the dims seen so far, indexed by corner bits
        for d in range(1, n_dims):
            partial = [p * f for f in (fac0[d], fac1[d]) for p in partial]
        return torch.stack(partial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [N, D] in [0, 1] (clamped). Returns [N, L * F]."""
        return _GridFunction.apply(x.clamp(0.0, 1.0), self.table, self)


def reference_encode(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Slow, direct per-point, per-level, per-corner evaluation: the definition the fast path must match."""
    cfg = grid.cfg
    res = cfg.resolutions()
    table_cap = 2 ** cfg.log2_table
    out = torch.zeros(x.shape[0], cfg.n_levels * cfg.n_features, dtype=grid.table.dtype)
    offset = 0
    for level in range(cfg.n_levels):
        r = res[level]
        vertices = math.prod(ri + 1 for ri in r)
        size = min(vertices, table_cap)
        for i in range(x.shape[0]):
            p = [min(max(float(x[i, d].detach()), 0.0), 1.0) * r[d] for d in range(cfg.n_dims)]
            cell = [min(int(math.floor(p[d])), r[d] - 1) for d in range(cfg.n_dims)]
            acc = torch.zeros(cfg.n_features, dtype=grid.table.dtype)
            for corner in range(2 ** cfg.n_dims):
                v = [cell[d] + ((corner >> d) & 1) for d in range(cfg.n_dims)]
                weight = 1.0
                for d in range(cfg.n_dims):
                    fd = p[d] - cell[d]
                    weight *= fd if (corner >> d) & 1 else 1.0 - fd
                if vertices > table_cap:
                    h = 0
                    for d in range(cfg.n_dims):
                        h ^= (v[d] * PRIMES[d]) & 0xFFFFFFFFFFFFFFFF
                    index = h % size
                else:
                    index, stride = 0, 1
                    for d in range(cfg.n_dims):
                        index += v[d] * stride
                        stride *= r[d] + 1
                acc = acc + weight * grid.table[:, offset + index]
            out[i, level * cfg.n_features:(level + 1) * cfg.n_features] = acc
        offset += size
    return out

"""Multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) in plain PyTorch.

This is the engine's default encoding and it has to be fast on a 2-core CPU, so all levels
are evaluated at once: one integer pass builds the corner indices of every level, one
``index_select`` gathers every corner's features (its backward is a single
``scatter_add_``), and the multilinear weights are formed with broadcasting and applied
with one batched matrix product. Coarse levels whose grid fits in
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
    contiguous, and the table is row-major ([rows, F]) so one corner's features sit side by
    side. With two features (the engine's grids) a row is gathered as one complex number:
    one ``index_select`` per grid instead of one ``take`` per feature (``take`` is ~5x slower
    per element on CPU), and the backward is one complex ``scatter_add_`` (complex addition
    adds both features at once; ``index_add_`` over 2-wide rows is ~3x slower). The corner
    weights are applied with one batched matrix product instead of a multiply and a sum.
    The gathered corner features are kept for the input gradient (an atlas sampled at a
    learned uv) instead of being gathered again.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, grid: "HashGrid", levels: int) -> torch.Tensor:  # type: ignore[override]
        idx, facs = grid.corners_and_factors(x, levels)  # idx: [C, L, N] int64; facs: [2, D, L, N]
        w = grid.corner_weights(facs)  # [C, L, N]
        c, levels, n = idx.shape
        n_feat = table.shape[1]
        vals = _gather_rows(table, idx.view(-1)).view(c, levels * n, n_feat)  # [C, L*N, F]
        # out[ln, f] = sum_c vals[c, ln, f] * w[c, ln]
        out = torch.bmm(vals.permute(1, 2, 0), w.view(c, levels * n, 1).permute(1, 0, 2))  # [L*N, F, 1]
        ctx.grid = grid
        ctx.table_shape = table.shape
        ctx.save_for_backward(idx, w, facs if ctx.needs_input_grad[0] else None,
                              vals if ctx.needs_input_grad[0] else None)
        return out.view(levels, n, n_feat).permute(1, 0, 2).reshape(n, -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        idx, w, facs, vals = ctx.saved_tensors
        grid: HashGrid = ctx.grid
        c, levels, n = idx.shape
        n_feat = ctx.table_shape[1]
        g = grad_out.reshape(n, levels, n_feat).transpose(0, 1).contiguous()  # [L, N, F]
        grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros(ctx.table_shape, dtype=grad_out.dtype, device=grad_out.device)
            _scatter_rows(grad_table, idx.view(-1), (w.unsqueeze(-1) * g.unsqueeze(0)).view(-1, n_feat))
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d out / d x_d = sum_c (d w_c / d frac_d) * vals_c * res_d: with each corner's
            # features first dotted with the output gradient ([C, L, N]), one product and sum
            # per dim is left (no [C, L, N, D] stack, no batched product of tiny matrices).
            vg = _dot_features(vals.view(c, levels, n, n_feat), g)  # [C, L, N]
            grad_x = torch.stack([(vg * grid.corner_weight_derivative(facs, d, grid.res_f[d, :levels])).sum((0, 1))
                                  for d in range(facs.shape[1])], dim=1)  # [N, D]
        return grad_x, grad_table, None, None


#: real dtypes whose [rows, 2] pairs have a complex twin (complex64 / complex128)
_PAIR_DTYPES = (torch.float32, torch.float64)


def _as_complex_rows(table: torch.Tensor) -> bool:
    """Whether [rows, 2] rows can travel as complex numbers: on the CPU (MPS has no complex
    dtype; CUDA's row-wise ``index_add_`` is fast already) and in float32/float64."""
    return table.shape[1] == 2 and table.device.type == "cpu" and table.dtype in _PAIR_DTYPES


def _dot_features(vals: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(vals * g).sum(-1)`` for [..., F] ``vals`` against [L, N, F] ``g``, as [...].

    A sum over a last dim of two is a slow reduction on the CPU; with two features the dot
    product is the real part of ``vals * conj(g)`` taken as complex numbers: one element-wise
    product, ~5x faster (the atlas' input gradient, every step)."""
    if vals.shape[-1] == 2 and vals.device.type == "cpu" and vals.dtype in _PAIR_DTYPES:
        return (torch.view_as_complex(vals.contiguous()) * torch.view_as_complex(g.contiguous()).conj()).real
    return (vals * g).sum(-1)


def _gather_rows(table: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    """``table[flat_idx]`` for a [rows, F] table, as [len(idx), F]."""
    if _as_complex_rows(table):
        return torch.view_as_real(torch.view_as_complex(table).index_select(0, flat_idx))
    return table.index_select(0, flat_idx)


def _scatter_rows(grad_table: torch.Tensor, flat_idx: torch.Tensor, values: torch.Tensor) -> None:
    """``grad_table[flat_idx] += values`` with repeated indices accumulating."""
    if _as_complex_rows(grad_table):
        torch.view_as_complex(grad_table).scatter_add_(0, flat_idx, torch.view_as_complex(values))
    else:
        grad_table.index_add_(0, flat_idx, values)


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
        self.register_buffer("res_f", res.T.contiguous().to(torch.float32).unsqueeze(-1), persistent=False)  # [D, L, 1]
        self.register_buffer("strides", strides.T.contiguous().unsqueeze(-1), persistent=False)  # [D, L, 1]
        self.register_buffer("offsets", offsets.view(-1, 1), persistent=False)  # [L, 1]
        self.register_buffer("corner_offsets", corner_offsets.unsqueeze(-1), persistent=False)  # [C, L, 1]
        total = int(sizes.sum())
        # Row-major [rows, F]: a corner's features are adjacent, gathered and scattered together.
        self.table = nn.Parameter(torch.empty(total, cfg.n_features).uniform_(-cfg.init_scale, cfg.init_scale))

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Checkpoints written before the table became row-major hold it as [F, rows].
        key = prefix + "table"
        stored = state_dict.get(key)
        if (isinstance(stored, torch.Tensor) and stored.dim() == 2 and stored.shape != self.table.shape
                and stored.shape == self.table.shape[::-1]):
            state_dict[key] = stored.T.contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def corners_and_factors(self, x: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows of every corner [C, L, N] and the per-dim weights [2, D, L, N]: (1 - frac, frac).

        ``levels``: only the first ``levels`` levels (the others are off, see ``forward``)."""
        levels = self.cfg.n_levels if levels is None else levels
        pos = x.detach().T.unsqueeze(1) * self.res_f[:, :levels]  # [D, L, N]
        cell_f = torch.minimum(torch.floor(pos).clamp_(min=0), self.res_f[:, :levels] - 1)
        n_dims, _, n = pos.shape
        facs = torch.empty((2,) + pos.shape, dtype=pos.dtype, device=pos.device)
        torch.sub(pos, cell_f, out=facs[1])
        cell = cell_f.to(torch.int64)
        torch.sub(1.0, facs[1], out=facs[0])
        nd = min(self.n_dense, levels)
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
                torch.add(torch.bitwise_and(h, self.table_mask), self.offsets[nd:levels], out=idx[corner, nd:])
        return idx, facs

    @staticmethod
    def _corner_products(factors: list[torch.Tensor]) -> torch.Tensor:
        """Products of one factor per dim for every corner ([2, L, N'] each, index = corner bit
        of that dim), [C, L, N], corner ``c`` taking factor ``(c >> d) & 1`` of dim ``d``.
        One broadcast product per dim writes every corner at once (no list of partial
        products stacked afterwards)."""
        w = factors[0]
        for f in factors[1:]:
            w = f.unsqueeze(1) * w.unsqueeze(0)  # [2, 2^d, L, N]: the new dim's bit is the high bit
            w = w.reshape((-1,) + w.shape[2:])
        return w

    def corner_weights(self, facs: torch.Tensor) -> torch.Tensor:
        """Multilinear weight of every corner, [C, L, N], from ``facs`` [2, D, L, N]."""
        return self._corner_products([facs[:, d] for d in range(facs.shape[1])])

    def corner_weight_derivative(self, facs: torch.Tensor, dim: int,
                                 scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``scale`` * d w_c / d frac_dim of every corner weight, [C, L, N] (``corner_weights``' order)."""
        one = facs.new_ones(())  # made on facs' device: torch.tensor([...]) would copy from the host each step
        sign = torch.stack([-one, one]).view(2, 1, 1) * scale
        n_dims, levels, n = facs.shape[1:]
        w = self._corner_products([sign.expand(2, levels, 1) if d == dim else facs[:, d] for d in range(n_dims)])
        return w.expand(w.shape[0], levels, n)

    def forward(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """``x``: [N, D] in [0, 1] (clamped). Returns [N, L * F].

        ``levels``: evaluate only the first ``levels`` levels and return their [N, levels * F]
        features (coarse-to-fine: levels that are switched off cost no gather or scatter)."""
        levels = self.cfg.n_levels if levels is None else max(1, min(int(levels), self.cfg.n_levels))
        return _GridFunction.apply(x.clamp(0.0, 1.0), self.table, self, levels)


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
                acc = acc + weight * grid.table[offset + index]
            out[i, level * cfg.n_features:(level + 1) * cfg.n_features] = acc
        offset += size
    return out

"""Training data: the clip's pixels, flow and masks, and how batches are drawn from them.

Kept apart from the trainer so that storage (how compactly a long clip is held) and
sampling (which pixels a batch sees) can change without touching the losses.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class TrainingData:
    """The clip's pixels, flow and masks held compactly, and stratified batch sampling.

    Storage per working pixel: uint8 RGB (3 B), float16 flow both ways (8 B), bool
    consistency flags (2 B) and a uint8 mask (1 B): 14 bytes instead of the 39 of float
    copies, so a long clip's training data stays a fraction of the memory budget.
    Everything is converted to float per batch, on the batch only.

    Sampling is stratified over frames: each batch takes (almost) the same number of pixels
    from every frame, at a random offset, so on a 458-frame clip no frame goes unseen for
    many steps by chance, as it can with uniform sampling over all pixels. Within a frame a
    pixel is uniform, or (a share of the batch, given an :class:`ErrorMap`) drawn where the
    fit is worst.
    """

    def __init__(self, frames: np.ndarray, flow: Any, masks: np.ndarray | None, device: torch.device) -> None:
        self.n, self.h, self.w = frames.shape[:3]
        self.device = device
        self.rgb = _tensor(frames, np.uint8, (-1, 3), device)  # uint8, converted per batch
        self.half = max(self.w, self.h) / 2.0
        self.has_flow = self.n > 1 and flow is not None
        if self.has_flow:
            self.fwd = _tensor(flow.fwd, np.float16, (-1, 2), device)
            self.bwd = _tensor(flow.bwd, np.float16, (-1, 2), device)
            self.fwd_ok = _tensor(flow.fwd_ok, np.bool_, (-1,), device)
            self.bwd_ok = _tensor(flow.bwd_ok, np.bool_, (-1,), device)
        self.masks: torch.Tensor | None = None
        self.mask_scale = 1.0
        if masks is not None:
            m = np.asarray(masks)
            if np.issubdtype(m.dtype, np.floating):  # soft 0..1 masks keep 8 bits
                self.mask_scale = 1.0 / 255.0
                m = np.clip(np.rint(np.asarray(m, np.float32) * 255.0), 0, 255)
            self.masks = _tensor(m, np.uint8, (-1,), device)

    @property
    def nbytes(self) -> int:
        ts = [self.rgb, self.masks] + ([self.fwd, self.bwd, self.fwd_ok, self.bwd_ok] if self.has_flow else [])
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def frame_indices(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` frame indices, stratified: frame t gets floor or ceil of n/T samples."""
        shift = torch.rand(1, generator=gen).item()
        strata = (torch.arange(n, dtype=torch.float64) + shift) * (self.n / n)
        t = strata.long().clamp_(max=self.n - 1)
        return t[torch.randperm(n, generator=gen)]  # batch order carries no frame order

    def sample(self, n: int, gen: torch.Generator, errors: "ErrorMap | None" = None,
               share: float = 0.0) -> dict[str, torch.Tensor]:
        """A batch of ``n`` pixels, stratified over frames.

        With ``errors`` and ``share`` > 0 the last ``share`` of the batch is drawn where the
        fit is worst (see :class:`ErrorMap`); the first ``n_uniform`` samples stay uniform, and
        every term but the colour term reads only those (flow, rigidity and cycle read the
        first samples of a batch; sparsity and bootstrapping from automatic masks slice to
        ``n_uniform``).
        """
        hw = self.h * self.w
        t = self.frame_indices(n, gen)
        rem = torch.randint(0, hw, (n,), generator=gen)
        k = int(n * share) if errors is not None else 0
        if k > 0:  # the same frames (the batch stays stratified), other pixels
            rem[n - k:] = errors.draw(t[n - k:], gen)
        idx = (t * hw + rem).to(self.device)
        t, rem = t.to(self.device), rem.to(self.device)
        y, x = rem // self.w, rem % self.w
        p = torch.stack([(x.float() + 0.5 - self.w / 2) / self.half, (y.float() + 0.5 - self.h / 2) / self.half], 1)
        batch = {"p": p, "t": t.float(), "rgb": self.rgb[idx].float() / 255.0, "pixel": idx,
                 "n_uniform": torch.tensor(n - k)}
        if self.masks is not None:
            batch["mask"] = self.masks[idx].float() * self.mask_scale
        if self.has_flow:
            go_fwd = torch.rand(n, generator=gen, device="cpu").to(self.device) < 0.5
            go_fwd = torch.where(t == 0, torch.ones_like(go_fwd), go_fwd)
            go_fwd = torch.where(t == self.n - 1, torch.zeros_like(go_fwd), go_fwd)
            fi = (t.clamp(max=self.n - 2)) * hw + rem  # forward flow of frame t
            bi = (t - 1).clamp(min=0) * hw + rem  # bwd[t-1] goes from frame t to t-1
            vec = torch.where(go_fwd.unsqueeze(1), self.fwd[fi], self.bwd[bi]).float()
            ok = torch.where(go_fwd, self.fwd_ok[fi], self.bwd_ok[bi])
            batch["p_next"] = p + vec / self.half
            batch["t_next"] = torch.where(go_fwd, t + 1, t - 1).float()
            batch["flow_ok"] = ok.float()
        return batch


class ErrorMap:
    """Where the fit is worst: a running estimate of the colour error per tile of every frame.

    Why: the reconstruction error of a short fit sits in a small part of the pixels (edges,
    texture, the moving foreground); flat areas are right after a few hundred steps. Drawing
    part of each batch in proportion to the error (as Instant-NGP's error map does for its
    training images) spends the steps where they still buy PSNR. Every step's samples
    (uniform and drawn) update their tiles' estimate; tiles start at ``start`` (so each
    is looked at), and every tile keeps ``floor`` of the frame's mean error as weight.
    Saved in resumable checkpoints (not in a compact, final one), so a resumed fit goes on from it.
    """

    def __init__(self, n_frames: int, h: int, w: int, tile: int = 8, start: float = 0.1,
                 floor: float = 0.1, rate: float = 0.5) -> None:
        self.n, self.h, self.w, self.tile = n_frames, h, w, tile
        self.ty, self.tx = -(-h // tile), -(-w // tile)
        self.cells = self.ty * self.tx
        self.err = torch.full((n_frames * self.cells,), float(start))
        self.floor, self.rate = floor, rate
        self._cdf: torch.Tensor | None = None

    def _frame_cdf(self) -> torch.Tensor:
        """Per-frame cumulative distributions laid end to end: frame t's spans [t, t + 1)."""
        if self._cdf is None:
            e = self.err.view(self.n, self.cells)
            wgt = e + self.floor * e.mean(1, keepdim=True)
            # float64 (the map lives on the CPU): offset by the frame index, a float32 cdf
            # quantises a long clip's draws (±30 % per tile at frame 1,500)
            wgt = torch.as_tensor(wgt, dtype=torch.float64)
            self._cdf = (wgt / wgt.sum(1, keepdim=True)).cumsum(1).add_(
                torch.arange(self.n, dtype=torch.float64).unsqueeze(1)).view(-1)
        return self._cdf

    def draw(self, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A pixel (row-major index within its frame) of frame ``t[i]`` for every i, drawn by error."""
        u = torch.as_tensor(t, dtype=torch.float64) + torch.rand(t.shape[0], generator=gen, dtype=torch.float64)
        cell = torch.searchsorted(self._frame_cdf(), u).clamp_(t * self.cells, (t + 1) * self.cells - 1)
        cell = cell - t * self.cells
        off = torch.randint(0, self.tile * self.tile, (t.shape[0],), generator=gen)
        y = ((cell // self.tx) * self.tile + off // self.tile).clamp_(max=self.h - 1)
        x = ((cell % self.tx) * self.tile + off % self.tile).clamp_(max=self.w - 1)
        return y * self.w + x

    def update(self, pixel: torch.Tensor, sq_err: torch.Tensor) -> None:
        """Blend the squared colour errors of a batch's pixels (indices over the clip) into their tiles."""
        pixel, sq_err = pixel.detach().cpu(), sq_err.detach().float().cpu()
        hw = self.h * self.w
        t, rem = pixel // hw, pixel % hw
        cell = t * self.cells + (rem // self.w // self.tile) * self.tx + (rem % self.w) // self.tile
        total = torch.bincount(cell, weights=sq_err, minlength=self.err.numel()).float()
        count = torch.bincount(cell, minlength=self.err.numel())
        seen = count > 0
        mean = total[seen] / count[seen]
        self.err[seen] = torch.lerp(self.err[seen], mean, self.rate)
        self._cdf = None


def _tensor(a: Any, dtype: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A compact, writable, contiguous copy of ``a`` (which may be memory-mapped) on ``device``.

    An in-memory array of the right dtype is used as it is (no second copy); anything else
    is copied frame by frame, so a float32 or memory-mapped source never exists twice.
    """
    if (type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable):
        return torch.from_numpy(a.reshape(shape)).to(device)
    a_shape = np.shape(a)
    out = np.empty(a_shape, dtype)
    for i in range(a_shape[0]):
        out[i] = a[i]
    return torch.from_numpy(out.reshape(shape)).to(device)

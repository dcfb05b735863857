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
    many steps by chance, as it can with uniform sampling over all pixels.
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

    def sample(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        hw = self.h * self.w
        t = self.frame_indices(n, gen)
        rem = torch.randint(0, hw, (n,), generator=gen)
        idx = (t * hw + rem).to(self.device)
        t, rem = t.to(self.device), rem.to(self.device)
        y, x = rem // self.w, rem % self.w
        p = torch.stack([(x.float() + 0.5 - self.w / 2) / self.half, (y.float() + 0.5 - self.h / 2) / self.half], 1)
        batch = {"p": p, "t": t.float(), "rgb": self.rgb[idx].float() / 255.0}
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

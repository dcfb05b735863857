"""Training data: the clip's pixels, flow and masks, and how batches are drawn from them.

Kept apart from the trainer so that storage (how compactly a long clip is held) and
sampling (which pixels a batch sees) can change without touching the losses.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class TrainingData:
    """Flattened per-pixel tensors and batch sampling."""

    def __init__(self, frames: np.ndarray, flow: Any, masks: np.ndarray | None, device: torch.device) -> None:
        self.n, self.h, self.w = frames.shape[:3]
        self.device = device
        self.rgb = torch.from_numpy(frames.reshape(-1, 3)).to(device)  # uint8, converted per batch
        self.half = max(self.w, self.h) / 2.0
        self.has_flow = self.n > 1 and flow is not None
        if self.has_flow:
            self.fwd = torch.from_numpy(np.ascontiguousarray(flow.fwd.reshape(-1, 2))).to(device)
            self.bwd = torch.from_numpy(np.ascontiguousarray(flow.bwd.reshape(-1, 2))).to(device)
            self.fwd_ok = torch.from_numpy(np.ascontiguousarray(flow.fwd_ok.reshape(-1))).to(device)
            self.bwd_ok = torch.from_numpy(np.ascontiguousarray(flow.bwd_ok.reshape(-1))).to(device)
        self.masks = None if masks is None else torch.from_numpy(masks.reshape(-1).astype(np.float32)).to(device)

    def sample(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        hw = self.h * self.w
        idx = torch.randint(0, self.n * hw, (n,), generator=gen, device="cpu").to(self.device)
        t = idx // hw
        rem = idx % hw
        y, x = rem // self.w, rem % self.w
        p = torch.stack([(x.float() + 0.5 - self.w / 2) / self.half, (y.float() + 0.5 - self.h / 2) / self.half], 1)
        batch = {"p": p, "t": t.float(), "rgb": self.rgb[idx].float() / 255.0}
        if self.masks is not None:
            batch["mask"] = self.masks[idx]
        if self.has_flow:
            go_fwd = torch.rand(n, generator=gen, device="cpu").to(self.device) < 0.5
            go_fwd = torch.where(t == 0, torch.ones_like(go_fwd), go_fwd)
            go_fwd = torch.where(t == self.n - 1, torch.zeros_like(go_fwd), go_fwd)
            fi = (t.clamp(max=self.n - 2)) * hw + rem  # forward flow of frame t
            bi = (t - 1).clamp(min=0) * hw + rem  # bwd[t-1] goes from frame t to t-1
            vec = torch.where(go_fwd.unsqueeze(1), self.fwd[fi], self.bwd[bi])
            ok = torch.where(go_fwd, self.fwd_ok[fi], self.bwd_ok[bi])
            batch["p_next"] = p + vec / self.half
            batch["t_next"] = torch.where(go_fwd, t + 1, t - 1).float()
            batch["flow_ok"] = ok.float()
        return batch

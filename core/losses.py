"""The self-supervised losses of LNA plus INVE's cycle consistency.

All of them take tensors for one batch of sampled pixels; the trainer weighs and sums
them. Distances are measured in *working pixels* so the weights do not depend on the
resolution or on the atlas scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error (what PSNR measures)."""
    return F.mse_loss(pred, target)


def flow_loss(uv_a: torch.Tensor, uv_b: torch.Tensor, weight: torch.Tensor, px_per_uv: float) -> torch.Tensor:
    """Points joined by optical flow must land on the same atlas point (L1, in pixels).

    ``weight`` is the layer's visibility at the source point times the flow's validity, so a
    layer is only held to the motion of pixels it actually shows.
    """
    dist = (uv_a - uv_b).abs().sum(1) * px_per_uv
    return (dist * weight).sum() / weight.sum().clamp_min(1.0)


def alpha_flow_loss(alpha_a: torch.Tensor, alpha_b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Opacity moves with the flow."""
    return ((alpha_a - alpha_b).abs() * valid).sum() / valid.sum().clamp_min(1.0)


def rigidity_loss(uv0: torch.Tensor, uv_dx: torch.Tensor, uv_dy: torch.Tensor, step_uv: float,
                  weight: torch.Tensor, scale_weight: float = 0.02) -> torch.Tensor:
    """Locally, a mapping should be a similarity: no shear, no stretch along one direction.

    The Jacobian comes from finite differences (one working pixel), normalised so that the
    initial similarity mapping has J = I. With s1 >= s2 its singular values, the penalty is
    (log s1 - log s2)^2 (anisotropy) plus a weak ``scale_weight * (log s1 s2)^2``: a camera
    zoom changes the scale of the whole frame and must not be fought, but the atlas should
    not drift in scale either. A fold-over (det J < 0) is penalised on top.
    """
    j1 = (uv_dx - uv0) / step_uv  # first column
    j2 = (uv_dy - uv0) / step_uv
    a = (j1 * j1).sum(1)
    b = (j1 * j2).sum(1)
    d = (j2 * j2).sum(1)
    half_tr = 0.5 * (a + d)
    disc = torch.sqrt(((0.5 * (a - d)) ** 2 + b * b).clamp_min(1e-12))
    log_l1 = torch.log((half_tr + disc).clamp_min(1e-4))  # log s1^2
    log_l2 = torch.log((half_tr - disc).clamp_min(1e-4))  # log s2^2
    det = j1[:, 0] * j2[:, 1] - j1[:, 1] * j2[:, 0]
    per_point = 0.25 * (log_l1 - log_l2) ** 2 + scale_weight * 0.25 * (log_l1 + log_l2) ** 2 + F.relu(-det)
    return (per_point * weight).sum() / weight.sum().clamp_min(1.0)


def sparsity_loss(alpha: torch.Tensor, fg_rgb: torch.Tensor) -> torch.Tensor:
    """Where the foreground is transparent its atlas colour is unused: keep it empty (black)."""
    return ((1.0 - alpha.detach()).unsqueeze(1) * fg_rgb).abs().mean()


def bootstrap_loss(alpha: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy against the rough foreground masks (early training only), optionally per-sample weighted."""
    return F.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), mask, weight=weight)


def cycle_loss(p_back: torch.Tensor, p: torch.Tensor, weight: torch.Tensor, px_per_unit: float) -> torch.Tensor:
    """Inverse(forward(p)) = p, in pixels; trains the inverse mapping only (uv is detached)."""
    dist = (p_back - p).abs().sum(1) * px_per_unit
    return (dist * weight).sum() / weight.sum().clamp_min(1.0)

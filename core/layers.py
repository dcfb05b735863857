"""Which layer a pixel shows: the one "visible on this layer" rule.

The foreground covers the background where its opacity exceeds one half. Training weighs
losses by the soft visibility (alpha for fg, 1 - alpha for bg); everything that has to
decide (tracks, the cycle error report, which layer an edit attaches to, which atlas texels
an edit may write) uses :func:`shows`. ``slack`` widens the rule symmetrically for callers
that must err on the inclusive side (the uv rectangle an edit may touch is grown by a soft
edge of the object, so it takes both layers' pixels with alpha within ``slack`` of the
threshold).

Works on numpy arrays, torch tensors and floats alike.
"""
from __future__ import annotations

from typing import Any

LAYERS: tuple[str, ...] = ("bg", "fg")

#: foreground opacity above which a pixel shows the foreground layer
VISIBLE_ALPHA = 0.5


def shows(layer: str, alpha: Any, slack: float = 0.0, evidence: Any = None) -> Any:
    """True where ``layer`` is the visible one given foreground opacity ``alpha``.

    ``evidence`` (numpy, optional): what the pixels themselves say, a log likelihood ratio
    that the foreground rather than the background shows there (positive: foreground;
    ``RenderContext.layer_evidence`` measures it). Alpha is then the prior and the decision
    is taken on the posterior, sigmoid(logit(alpha) + evidence): where the fitted alpha is
    unsure (its soft edge, which lags the object's by about a pixel) the pixels decide.
    """
    if evidence is not None:
        import numpy as np  # noqa: PLC0415

        a = np.clip(np.asarray(alpha, np.float64), 1e-6, 1.0 - 1e-6)
        alpha = 1.0 / (1.0 + np.exp(-(np.log(a / (1.0 - a)) + np.asarray(evidence, np.float64))))
    if layer == "fg":
        return alpha > VISIBLE_ALPHA - slack
    return alpha <= VISIBLE_ALPHA + slack


def visibility(layer: str, alpha: Any) -> Any:
    """Soft share of the pixel that ``layer`` shows: alpha (fg) or 1 - alpha (bg)."""
    return alpha if layer == "fg" else 1.0 - alpha


def layer_at(alpha: Any) -> str:
    """The layer seen at a place of (mean) opacity ``alpha``."""
    return "fg" if float(alpha) > VISIBLE_ALPHA else "bg"


__all__ = ["LAYERS", "VISIBLE_ALPHA", "shows", "visibility", "layer_at"]

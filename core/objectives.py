"""The training objective: which losses the layered atlas model is held to, and how strongly.

Why a module of its own: the loss dictionary knows the model's layer semantics (what the
foreground hides, which layer a flow vector belongs to), how many samples each regulariser
needs and how visibility weighs each term. The trainer (core/train.py) only runs the loop,
the optimiser and checkpoints; schedules (core/schedules.py) say *when* which phase runs.
Extra terms (a user's corrections, see core/correct.py) plug in through
:meth:`Objective.add_term` without the trainer knowing about them.

The individual losses live in core/losses.py; distances there are in working pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core import losses as L
from core.layers import visibility
from core.model import LayeredAtlasModel

#: an extra term: (model, budget fraction) -> weighted scalar loss
Term = Callable[[LayeredAtlasModel, float], torch.Tensor]


@dataclass
class LossWeights:
    flow: float = 0.02
    alpha_flow: float = 0.05
    rigidity: float = 0.3
    # weight of a uniform scale change inside the rigidity penalty, per layer: a camera zoom
    # rescales the whole background, while a foreground object should keep its atlas size
    rigidity_scale_bg: float = 0.02
    rigidity_scale_fg: float = 0.3
    # Where the foreground hides the background, rigidity is all that holds the background
    # mapping (no colour, no flow there): its weight grows by this much times the fg alpha.
    rigidity_hidden_bg: float = 4.0
    # The foreground is held to rigidity where it shows, plus this floor everywhere (so the
    # mapping stays tame where alpha is still learning).
    rigidity_floor_fg: float = 0.05
    sparsity: float = 0.002
    bootstrap: float = 0.05
    bootstrap_until: float = 0.4  # fraction of the budget over which bootstrapping fades out
    bootstrap_floor_user: float = 0.1  # user-given masks keep this fraction of their weight ...
    #: ... and this multiple of the full weight for the whole fit where they say "foreground"
    #: (measured on the bundled clip, one outline, 300-400 steps: at 0 the ear and raised
    #: hands ended at alpha 0.1-0.5, at 1 the ear at 0.6-0.8, at 4 all above 0.95 -- and the
    #: reconstruction 3.4 dB lower on that short fit: the fg atlas also holds what the grown
    #: masks wrongly include)
    bootstrap_keep_user_fg: float = 4.0
    cycle: float = 1.0
    # the foreground inverse is trained where the foreground shows, plus this floor
    cycle_floor_fg: float = 0.01


class Objective:
    """The loss dictionary of :class:`LayeredAtlasModel` for one batch of sampled pixels.

    ``px_per_unit``: working pixels per normalised frame unit (distances in the losses are in
    working pixels). ``mask_source``: "user" masks keep part of their bootstrap weight for
    the whole run, automatic ones fade out.
    """

    #: Regularisers see a subset of the batch: they are smooth and need fewer samples than
    #: the reconstruction, and each costs extra network evaluations. Shares of the batch:
    FLOW_SHARE = 4  # 1/4 of the points are also evaluated at their flow target
    RIGIDITY_SHARE = 8  # 1/8 get the finite-difference Jacobian
    CYCLE_SHARE = 2  # 1/2 go back through the inverse mapping

    def __init__(self, model: LayeredAtlasModel, weights: LossWeights, px_per_unit: float,
                 mask_source: str = "auto") -> None:
        self.model, self.w = model, weights
        self.mask_source = mask_source
        self.px_per_unit = px_per_unit
        self.px_per_uv = px_per_unit / model.cfg.uv_scale
        self.step_p = 1.0 / px_per_unit  # one working pixel in normalised units
        self.extra: dict[str, Term] = {}

    def add_term(self, name: str, term: Term) -> None:
        """Add a weighted term to the fitting phase (e.g. the user's corrections)."""
        self.extra[name] = term

    def __call__(self, b: dict[str, torch.Tensor], fr: float, phase: str = "fit") -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.polish_terms(b) if phase == "polish" else self.fit_terms(b, fr)
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # -- the full objective --------------------------------------------------------------
    def fit_terms(self, b: dict[str, torch.Tensor], fr: float) -> dict[str, torch.Tensor]:
        m, w = self.model, self.w
        layers = m.cfg.layers
        n = b["p"].shape[0]
        nf = n // self.FLOW_SHARE if "p_next" in b else 0
        nr = n // self.RIGIDITY_SHARE
        p, t = b["p"], b["t"]
        dx = torch.tensor([self.step_p, 0.0], device=p.device)
        dy = torch.tensor([0.0, self.step_p], device=p.device)
        # One mapping call per layer for every point that needs it: p, flow targets, p+dx, p+dy.
        p_all = torch.cat([p] + ([b["p_next"][:nf]] if nf else []) + [p[:nr] + dx, p[:nr] + dy])
        t_all = torch.cat([t] + ([b["t_next"][:nf]] if nf else []) + [t[:nr], t[:nr]])
        uv_all = {layer: m.uv(layer, p_all, t_all) for layer in layers}
        uv = {layer: v[:n] for layer, v in uv_all.items()}
        if "fg" in layers:
            pa = torch.cat([p] + ([b["p_next"][:nf]] if nf else []))
            ta = torch.cat([t] + ([b["t_next"][:nf]] if nf else []))
            alpha_all = m.alpha(pa, ta)
            alpha = alpha_all[:n]
        else:
            alpha = torch.zeros(n, device=p.device)
        bg = m.atlas("bg", uv["bg"])
        if "fg" in layers:
            fg = m.atlas("fg", uv["fg"])
            pred = alpha.unsqueeze(1) * fg + (1 - alpha.unsqueeze(1)) * bg
        else:
            pred = bg
        terms: dict[str, torch.Tensor] = {"rgb": L.rgb_loss(pred, b["rgb"])}
        b["sq_err"] = (pred.detach() - b["rgb"]).square().sum(1)  # per pixel, for the sampler's error map
        vis = {layer: visibility(layer, alpha).detach() for layer in ("bg", "fg")}
        if nf:
            ok = b["flow_ok"][:nf]
            flow_terms = []
            for layer in layers:
                uv_next = uv_all[layer][n:n + nf]
                flow_terms.append(L.flow_loss(uv[layer][:nf], uv_next, ok * vis[layer][:nf], self.px_per_uv))
            terms["flow"] = w.flow * sum(flow_terms)
            if "fg" in layers:
                terms["alpha_flow"] = w.alpha_flow * L.alpha_flow_loss(alpha[:nf], alpha_all[n:n + nf], ok)
        off = n + nf
        rig = []
        for layer in layers:
            u = uv_all[layer]
            if layer == "bg":
                weight = 1.0 + w.rigidity_hidden_bg * vis["fg"][:nr]
            else:
                weight = vis["fg"][:nr] + w.rigidity_floor_fg
            rig.append(L.rigidity_loss(u[:nr], u[off:off + nr], u[off + nr:off + 2 * nr],
                                       self.step_p * m.cfg.uv_scale, weight,
                                       scale_weight=getattr(w, f"rigidity_scale_{layer}")))
        terms["rigidity"] = w.rigidity * sum(rig)
        if "fg" in layers:
            # the uniform part of the batch only: the part drawn by error sits on outlines, where
            # rough automatic masks are least reliable and sparsity would push hardest
            nu = int(b["n_uniform"]) if "n_uniform" in b else n
            a_u = alpha[:nu]
            terms["sparsity"] = w.sparsity * L.sparsity_loss(a_u, fg[:nu])
            if "mask" in b:
                fade = max(0.0, 1.0 - fr / w.bootstrap_until)
                if self.mask_source == "user":
                    # what the user marked as foreground stays foreground for the whole fit
                    # (else the background atlas, free to warp, soaks up weakly textured parts:
                    # the bunny's head, ears and raised arms at alpha 0.1-0.5 after 400 steps);
                    # "not marked" is weaker evidence (masks grown from a hint miss thin parts)
                    pos = max(fade, w.bootstrap_keep_user_fg)
                    neg = max(fade, w.bootstrap_floor_user)
                    # the user's outline is evidence exactly where the drawn half sits (the
                    # outlines), so user masks read the whole batch; rough automatic masks
                    # (below) are least reliable there and read the uniform part only
                    mask = b["mask"]
                    terms["bootstrap"] = w.bootstrap * L.bootstrap_loss(alpha, mask, pos * mask + neg * (1.0 - mask))
                elif fade > 0:
                    terms["bootstrap"] = w.bootstrap * fade * L.bootstrap_loss(a_u, b["mask"][:nu])
        cyc = []
        nc = n // self.CYCLE_SHARE
        for layer in layers:
            back = m.inverse(layer, uv[layer][:nc].detach(), t[:nc])
            cyc.append(L.cycle_loss(back, p[:nc], self._cycle_weight(layer, alpha[:nc].detach()), self.px_per_unit))
        terms["cycle"] = w.cycle * sum(cyc)
        for name, term in self.extra.items():
            terms[name] = term(m, fr)
        return terms

    # -- inverse polish ------------------------------------------------------------------
    def polish_terms(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cycle consistency alone, forward mappings frozen (only the inverses get gradients)."""
        m = self.model
        with torch.no_grad():
            uv = {layer: m.uv(layer, b["p"], b["t"]) for layer in m.cfg.layers}
            alpha = m.alpha(b["p"], b["t"])
        cyc = []
        for layer in m.cfg.layers:
            back = m.inverse(layer, uv[layer], b["t"])
            cyc.append(L.cycle_loss(back, b["p"], self._cycle_weight(layer, alpha), self.px_per_unit))
        return {"cycle": self.w.cycle * sum(cyc)}

    def _cycle_weight(self, layer: str, alpha: torch.Tensor) -> torch.Tensor:
        if layer == "bg":
            return torch.ones_like(alpha)
        return alpha + self.w.cycle_floor_fg


__all__ = ["LossWeights", "Objective", "Term"]

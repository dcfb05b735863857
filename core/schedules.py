"""Training schedules: small callbacks the trainer runs before every step.

Each schedule looks at the fraction of the budget spent (0..1, whichever of iterations and
wall time is further along, see ``Trainer.fraction``) and sets one thing: the learning
rates, how much atlas detail is in use, which phase of the objective runs. Keeping them
apart from the loop (as nerfstudio's training callbacks do) lets a fine-tuning run
(``inve correct``) reuse the loop with its own list instead of another copy of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover - typing only (no import cycle at run time)
    from core.train import Trainer


class Schedule(Protocol):
    def __call__(self, trainer: "Trainer", fr: float) -> None:
        """Adjust the trainer for the step about to run at budget fraction ``fr``."""


@dataclass
class LearningRate:
    """Exponential decay from the base rates to ``final`` times them at the end of the budget.

    Mapping groups (``map_*``) may ramp up linearly over the first ``map_warmup`` of it.
    """

    base: dict[str, float]
    final: float = 0.1
    map_warmup: float = 0.0

    def __call__(self, trainer: "Trainer", fr: float) -> None:
        decay = self.final ** fr
        warm = min(1.0, fr / self.map_warmup) if self.map_warmup > 0 else 1.0
        for group in trainer.opt.param_groups:
            lr = self.base[group["name"]] * decay
            group["lr"] = lr * warm if group["name"].startswith("map_") else lr


@dataclass
class CoarseToFine:
    """Atlas levels fade in until ``until`` of the budget (see ``Field.set_active_levels``)."""

    until: float = 0.3

    def __call__(self, trainer: "Trainer", fr: float) -> None:
        c2f = min(1.0, fr / self.until) if self.until > 0 else 1.0
        trainer.model.set_atlas_detail(c2f)


@dataclass
class InversePolish:
    """The last ``share`` of the budget trains only the inverse mappings, forwards frozen.

    The inverse otherwise lags the forward mapping it chases, and the cycle error shows it.
    """

    share: float = 0.05

    def __call__(self, trainer: "Trainer", fr: float) -> None:
        trainer.phase = "polish" if fr >= 1.0 - self.share else "fit"


@dataclass
class FullDetail:
    """Every atlas level in use from the start (fine-tuning a trained model)."""

    def __call__(self, trainer: "Trainer", fr: float) -> None:
        trainer.model.set_atlas_detail(1.0)


__all__ = ["Schedule", "LearningRate", "CoarseToFine", "InversePolish", "FullDetail"]

"""Regression losses on a grade treated as a number (the PANDA regression baseline): mse and smooth_l1.

The model has one output; logits ``(B,)`` or ``(B, 1)`` against a float target of either shape. Predictions are
turned back into grades by rounding or by fitted cut points (`medkit.metrics.optimise_thresholds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medkit.errors import UsageError
from medkit.losses._common import checked_options, flags, match_target
from medkit.registries import LOSSES

__all__ = ["RegressionLoss", "mse", "smooth_l1"]


class RegressionLoss(nn.Module):
    """Mean squared error or smooth L1 (Huber with slope 1) between the output and a float target.

    Args:
        kind: ``"mse"`` or ``"smooth_l1"``.
        beta: Smooth L1 switch point: quadratic ``0.5 d**2 / beta`` below it, linear ``|d| - 0.5 beta`` above.
    """

    def __init__(self, kind: str = "mse", beta: float = 1.0) -> None:
        super().__init__()
        if kind not in ("mse", "smooth_l1"):
            raise UsageError(f"unknown regression loss kind '{kind}'")
        if beta <= 0:
            raise UsageError(f"loss 'smooth_l1': beta must be > 0, got {beta}")
        self.kind, self.beta = kind, float(beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Mean over the batch."""
        target = match_target(logits, target, self.kind)
        x = logits.float()
        if self.kind == "mse":
            return F.mse_loss(x, target)
        return F.smooth_l1_loss(x, target, beta=self.beta)


@LOSSES.register("mse", **flags(regression=True))
@checked_options("loss")
def mse(*, label_prevalence: Sequence[float] | None = None, num_classes: int | None = None) -> nn.Module:
    """Mean squared error on a regressed grade (one output; target float grade)."""
    return RegressionLoss("mse")


@LOSSES.register("smooth_l1", **flags(regression=True))
@checked_options("loss")
def smooth_l1(
    *, beta: float = 1.0, label_prevalence: Sequence[float] | None = None, num_classes: int | None = None
) -> nn.Module:
    """Smooth L1 (Huber) on a regressed grade: 0.5 d^2/beta if |d| < beta else |d| - beta/2."""
    return RegressionLoss("smooth_l1", beta)

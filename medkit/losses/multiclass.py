"""Losses for one class per sample (ce) and for ordered grades (ordinal), with the ordinal decoding helpers.

Ordinal layout: a grade g in ``[0, K-1]`` is modelled by ``K - 1`` logits, logit k being "g > k"
(cumulative link, as in CORAL / the binned-BCE PANDA solutions). The target of logit k is ``1[g > k]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medkit.errors import UsageError
from medkit.losses._common import as_vector, checked_options, flags
from medkit.registries import LOSSES

__all__ = ["CrossEntropyLoss", "OrdinalLoss", "ordinal_levels", "ordinal_to_probs", "ordinal_to_grade", "ce", "ordinal"]


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with label smoothing; target class indices ``(B,)`` or one-hot / soft ``(B, K)``.

    Args:
        label_smoothing: Mix the target with the uniform distribution: ``(1 - e) y + e / K``.
        weight: Optional per-class weights ``(K,)``.
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise UsageError(f"loss 'ce': label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight, persistent=weight is not None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Mean cross-entropy over the batch."""
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise UsageError(f"loss 'ce' needs logits (B, K) with K >= 2 classes, got {tuple(logits.shape)}")
        x = logits.float()
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim == 1:
            target = target.long()
            if target.numel() and (int(target.min()) < 0 or int(target.max()) >= x.shape[1]):
                raise UsageError(f"loss 'ce': class index out of range [0, {x.shape[1]})")
        elif target.shape == x.shape:
            target = target.float()  # one-hot or soft class probabilities
        else:
            raise UsageError(f"loss 'ce': target shape {tuple(target.shape)} does not fit logits {tuple(x.shape)}")
        if self.weight is not None and self.weight.numel() != x.shape[1]:
            raise UsageError(f"loss 'ce': weight has {self.weight.numel()} values for {x.shape[1]} classes")
        return F.cross_entropy(x, target, weight=self.weight, label_smoothing=self.label_smoothing)


@LOSSES.register("ce", **flags(multiclass=True))
@checked_options("loss")
def ce(
    *,
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Softmax cross-entropy with label smoothing (multiclass; target class index or one-hot)."""
    return CrossEntropyLoss(label_smoothing, None if weight is None else as_vector(weight, "ce", "weight"))


def ordinal_levels(grade: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """The ``(B, K-1)`` float targets ``1[g > k]`` of grades ``(B,)``."""
    k = torch.arange(num_thresholds, device=grade.device)
    return (grade.reshape(-1, 1) > k).float()


class OrdinalLoss(nn.Module):
    """Cumulative-link BCE: sum over the K-1 "grade > k" logits of their BCE, mean over the batch (CORAL loss).

    Args:
        num_classes: Number of grades K; when given, logits must have K-1 columns.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise UsageError(f"loss 'ordinal': num_classes must be >= 2 grades, got {num_classes}")
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Mean over the batch of the summed threshold BCEs."""
        x = logits.float()
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or (self.num_classes is not None and x.shape[1] != self.num_classes - 1):
            raise UsageError(
                f"loss 'ordinal': logits {tuple(logits.shape)} do not fit "
                f"{self.num_classes or 'K'} grades; the layout is (B, K-1) 'grade > k' logits",
                hint="build the model with num_classes = grades - 1 (or the ordinal head)",
            )
        grade = target.reshape(-1)
        if grade.numel() != x.shape[0]:
            raise UsageError(f"loss 'ordinal': target {tuple(target.shape)} must hold one grade per sample")
        if grade.numel() and (float(grade.min()) < 0 or float(grade.max()) > x.shape[1]):
            raise UsageError(f"loss 'ordinal': grades must lie in [0, {x.shape[1]}] for {x.shape[1]} logits")
        levels = ordinal_levels(grade, x.shape[1])
        per_threshold = F.binary_cross_entropy_with_logits(x, levels, reduction="none")
        return per_threshold.sum(dim=1).mean()


@LOSSES.register("ordinal", **flags(ordinal=True))
@checked_options("loss")
def ordinal(*, num_classes: int | None = None, label_prevalence: Sequence[float] | None = None) -> nn.Module:
    """Ordinal cumulative-link BCE on (B, K-1) 'grade > k' logits; target grade in [0, K-1]."""
    return OrdinalLoss(num_classes)


def _sigmoid_any(logits: Any) -> tuple[Any, bool]:
    if isinstance(logits, torch.Tensor):
        return torch.sigmoid(logits.float()), True
    arr = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-arr)), False


def ordinal_to_probs(logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Class probabilities ``(B, K)`` from ordinal logits ``(B, K-1)``.

    ``P(g > k) = sigmoid(logit_k)`` made non-increasing in k by a running minimum (independent logits can
    cross), then ``P(g = k) = P(g > k-1) - P(g > k)``. Rows sum to 1 and no probability is negative.

    Args:
        logits: Torch tensor or numpy array; the result has the same kind.
    """
    s, is_torch = _sigmoid_any(logits)
    if is_torch:
        s = s.reshape(s.shape[0], -1) if s.ndim > 1 else s[:, None]
        s = torch.cummin(s, dim=1).values
        ones, zeros = torch.ones_like(s[:, :1]), torch.zeros_like(s[:, :1])
        cum = torch.cat([ones, s, zeros], dim=1)
        return cum[:, :-1] - cum[:, 1:]
    s = s.reshape(s.shape[0], -1) if s.ndim > 1 else s[:, None]
    s = np.minimum.accumulate(s, axis=1)
    cum = np.concatenate([np.ones_like(s[:, :1]), s, np.zeros_like(s[:, :1])], axis=1)
    return cum[:, :-1] - cum[:, 1:]


def ordinal_to_grade(logits: torch.Tensor | np.ndarray, threshold: float = 0.5) -> torch.Tensor | np.ndarray:
    """Predicted grades ``(B,)``: the number of "grade > k" probabilities above ``threshold`` (CORAL rule)."""
    s, is_torch = _sigmoid_any(logits)
    if is_torch:
        s = s.reshape(s.shape[0], -1) if s.ndim > 1 else s[:, None]
        return (s > threshold).sum(dim=1)
    s = s.reshape(s.shape[0], -1) if s.ndim > 1 else s[:, None]
    return (s > threshold).sum(axis=1).astype(np.int64)

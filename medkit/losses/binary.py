"""Sigmoid losses for binary and multi-label targets: bce, wbce (+ L1 / L2 / elastic weight penalties), focal, asl.

Every loss here takes logits ``(B, K)`` (or ``(B,)``) and a float target of the same shape holding 0/1 or soft
labels, computes in float32 (so the result is the same under autocast) and returns the mean over all elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medkit.errors import UsageError
from medkit.losses._common import as_vector, checked_options, flags, match_target, weight_penalty
from medkit.registries import LOSSES

__all__ = ["BCELoss", "FocalLoss", "AsymmetricLoss", "auto_pos_weight", "bce", "wbce", "focal", "asl"]


def auto_pos_weight(label_prevalence: Sequence[float], max_pos_weight: float = 100.0) -> torch.Tensor:
    """``(1 - p) / p`` per label, clipped to ``[1 / max_pos_weight, max_pos_weight]``.

    The clip keeps a label with (almost) no positives in the training split from dominating the loss, and one
    that is (almost) always positive from vanishing from it.

    Args:
        label_prevalence: Positive rate of each label in the training split.
        max_pos_weight: Upper clip (and reciprocal lower clip) of the weight.

    Returns:
        Float32 tensor ``(K,)``.
    """
    p = torch.as_tensor(label_prevalence, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise UsageError(f"label_prevalence must lie in [0, 1], got {p.tolist()}")
    if max_pos_weight < 1:
        raise UsageError(f"max_pos_weight must be >= 1, got {max_pos_weight}")
    p = p.clamp(1e-12, 1 - 1e-12)
    return ((1 - p) / p).clamp(1 / max_pos_weight, max_pos_weight).to(torch.float32)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, with an optional per-label positive weight and a weight penalty.

    Args:
        pos_weight: Weight of the positive term per label ``(K,)`` (or one value for every label); None = 1.
        l1: Coefficient of ``sum |w|`` over the model's weights (needs ``model=`` in the batch).
        l2: Coefficient of ``sum w**2`` over the model's weights.
        head_only: Penalise only the classifier head instead of every non-bias, non-norm weight.
        name: Registry name, used in messages.
    """

    def __init__(
        self,
        pos_weight: torch.Tensor | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        head_only: bool = False,
        name: str = "bce",
    ) -> None:
        super().__init__()
        self.name = name
        self.l1, self.l2, self.head_only = float(l1), float(l2), bool(head_only)
        if self.l1 < 0 or self.l2 < 0:
            raise UsageError(f"loss '{name}': penalty coefficients must be >= 0, got l1={l1}, l2={l2}")
        # a buffer follows .to(device) and is saved with the loss's state
        self.register_buffer("pos_weight", pos_weight, persistent=pos_weight is not None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Mean BCE over all elements, plus the weight penalty when one is configured."""
        target = match_target(logits, target, self.name)
        x = logits.float()
        pos_weight = self.pos_weight
        if pos_weight is not None:
            width = x.shape[-1] if x.ndim > 1 else 1
            if pos_weight.numel() not in (1, width):
                raise UsageError(
                    f"loss '{self.name}': pos_weight has {pos_weight.numel()} values for {width} labels",
                    hint="give one weight per label column, or pos_weight='auto'",
                )
            if x.ndim == 1:
                pos_weight = pos_weight.reshape(())
        loss = F.binary_cross_entropy_with_logits(x, target, pos_weight=pos_weight)
        if self.l1 or self.l2:
            model = batch.get("model")
            if model is None:
                raise UsageError(
                    f"loss '{self.name}' penalises the model's weights and needs model= in the batch",
                    hint="call loss(logits, target, model=model) (the entry flag needs_model says so)",
                )
            loss = loss + weight_penalty(model, self.l1, self.l2, self.head_only)
        return loss


def _pos_weight(
    name: str, pos_weight: str | float | Sequence[float] | None, label_prevalence: Sequence[float] | None, cap: float
) -> torch.Tensor | None:
    if pos_weight is None:
        return None
    if isinstance(pos_weight, str):
        if pos_weight != "auto":
            raise UsageError(f"loss '{name}': pos_weight must be 'auto', a number or a list, got '{pos_weight}'")
        if label_prevalence is None:
            raise UsageError(
                f"loss '{name}': pos_weight='auto' needs label_prevalence (the training split's positive rates)",
                hint="give pos_weight=[w1, w2, ...] explicitly, or train through `medkit train`, which passes it",
            )
        return auto_pos_weight(label_prevalence, cap)
    return as_vector(pos_weight, name, "pos_weight")


@LOSSES.register("bce", **flags(multilabel=True))
@checked_options("loss")
def bce(*, label_prevalence: Sequence[float] | None = None, num_classes: int | None = None) -> nn.Module:
    """Binary cross-entropy on logits (binary or multi-label)."""
    return BCELoss(name="bce")


@LOSSES.register("wbce", **flags(multilabel=True))
@checked_options("loss")
def wbce(
    *,
    pos_weight: str | float | Sequence[float] = "auto",
    max_pos_weight: float = 100.0,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Weighted BCE: positives weighted by pos_weight, a list or 'auto' = (1-p)/p from label prevalence."""
    return BCELoss(_pos_weight("wbce", pos_weight, label_prevalence, max_pos_weight), name="wbce")


@LOSSES.register("wbce_l1", **flags(multilabel=True, needs_model=True))
@checked_options("loss")
def wbce_l1(
    *,
    lam: float = 1e-6,
    head_only: bool = False,
    pos_weight: str | float | Sequence[float] = "auto",
    max_pos_weight: float = 100.0,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Weighted BCE + lam * sum|w| over the model's non-bias, non-norm weights (L1 / lasso)."""
    pw = _pos_weight("wbce_l1", pos_weight, label_prevalence, max_pos_weight)
    return BCELoss(pw, l1=lam, head_only=head_only, name="wbce_l1")


@LOSSES.register("wbce_l2", **flags(multilabel=True, needs_model=True))
@checked_options("loss")
def wbce_l2(
    *,
    lam: float = 1e-5,
    head_only: bool = False,
    pos_weight: str | float | Sequence[float] = "auto",
    max_pos_weight: float = 100.0,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Weighted BCE + lam * sum w^2 over the model's non-bias, non-norm weights (L2 / ridge)."""
    pw = _pos_weight("wbce_l2", pos_weight, label_prevalence, max_pos_weight)
    return BCELoss(pw, l2=lam, head_only=head_only, name="wbce_l2")


@LOSSES.register("wbce_elastic", **flags(multilabel=True, needs_model=True))
@checked_options("loss")
def wbce_elastic(
    *,
    lam: float = 1e-5,
    l1_ratio: float = 0.5,
    head_only: bool = False,
    pos_weight: str | float | Sequence[float] = "auto",
    max_pos_weight: float = 100.0,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Weighted BCE + lam * (l1_ratio * sum|w| + (1 - l1_ratio) * sum w^2) (elastic net)."""
    if not 0.0 <= l1_ratio <= 1.0:
        raise UsageError(f"loss 'wbce_elastic': l1_ratio must lie in [0, 1], got {l1_ratio}")
    pw = _pos_weight("wbce_elastic", pos_weight, label_prevalence, max_pos_weight)
    return BCELoss(pw, l1=lam * l1_ratio, l2=lam * (1 - l1_ratio), head_only=head_only, name="wbce_elastic")


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)**gamma log(p_t)``, mean over elements.

    Args:
        gamma: Focusing exponent (0 = BCE).
        alpha: Weight of positives in [0, 1] (negatives get ``1 - alpha``); a negative value switches it off.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        if gamma < 0 or alpha > 1:
            raise UsageError(f"loss 'focal': need gamma >= 0 and alpha <= 1, got gamma={gamma}, alpha={alpha}")
        self.gamma, self.alpha = float(gamma), float(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Mean focal loss over all elements."""
        target = match_target(logits, target, "focal")
        x = logits.float()
        # log(p_t) from the logits directly: stable where p_t underflows
        ce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        p = torch.sigmoid(x)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha >= 0:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.mean()


@LOSSES.register("focal", **flags(multilabel=True))
@checked_options("loss")
def focal(
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Sigmoid focal loss -alpha_t (1-p_t)^gamma log p_t (binary / multi-label); alpha=-1 disables alpha."""
    return FocalLoss(gamma, alpha)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label targets.

    Positives: ``(1 - p)**gamma_pos * log(p)``. Negatives use the shifted probability ``p_m = max(p - clip, 0)``:
    ``p_m**gamma_neg * log(1 - p_m)``, so easy negatives (``p < clip``) contribute nothing. Logs are taken of
    probabilities clamped at ``eps`` as in the paper's code.

    Args:
        gamma_pos: Focusing exponent of positives.
        gamma_neg: Focusing exponent of negatives.
        clip: Probability margin m shifting negatives (0 switches the shift off).
        eps: Lower clamp of the probabilities inside the logs.
        detach_focal_weight: Compute the focusing weight without gradient (the paper code's
            ``disable_torch_grad_focal_loss``): the weight scales the gradient of the log term only.
        reduction: ``"mean"`` over all elements (medkit's default, batch-size independent) or ``"sum"`` (the
            paper's code).
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal_weight: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0 or not 0 <= clip < 1 or not 0 < eps < 0.5:
            raise UsageError(
                f"loss 'asl': need gamma_pos, gamma_neg >= 0, 0 <= clip < 1, 0 < eps < 0.5; "
                f"got {gamma_pos}, {gamma_neg}, {clip}, {eps}"
            )
        if reduction not in ("mean", "sum"):
            raise UsageError(f"loss 'asl': reduction must be 'mean' or 'sum', got '{reduction}'")
        self.gamma_pos, self.gamma_neg, self.clip, self.eps = float(gamma_pos), float(gamma_neg), float(clip), eps
        self.detach_focal_weight, self.reduction = bool(detach_focal_weight), reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Asymmetric loss, mean (or sum) over all elements."""
        target = match_target(logits, target, "asl")
        p = torch.sigmoid(logits.float())
        q = 1 - p  # 1 - p_m for negatives once shifted
        if self.clip > 0:
            q = (q + self.clip).clamp(max=1)
        loss = target * torch.log(p.clamp(min=self.eps)) + (1 - target) * torch.log(q.clamp(min=self.eps))
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_focal_weight):
                p_t = p * target + q * (1 - target)
                gamma = self.gamma_pos * target + self.gamma_neg * (1 - target)
                weight = (1 - p_t).pow(gamma)
            loss = loss * weight
        return -(loss.sum() if self.reduction == "sum" else loss.mean())


@LOSSES.register("asl", **flags(multilabel=True))
@checked_options("loss")
def asl(
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal_weight: bool = False,
    disable_torch_grad_focal_loss: bool = False,
    reduction: str = "mean",
    label_prevalence: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Asymmetric loss (Ridnik 2021): focal on positives, shifted (clip) and harder-focused negatives."""
    return AsymmetricLoss(
        gamma_pos, gamma_neg, clip, eps, detach_focal_weight or disable_torch_grad_focal_loss, reduction
    )

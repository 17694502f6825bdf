"""Early-learning regularisation (Liu et al., NeurIPS 2020) for multi-label targets with noisy labels.

Each label of each training sample is treated as its own two-class problem with probabilities ``[p, 1 - p]``,
and the paper's method is applied to it unchanged: a running target ``T = [t_pos, t_neg]`` per (sample, label),
an exponential moving average of ``[p, 1 - p]`` started at zero, and the regulariser
``lam * mean log(1 - <[p, 1-p], T>)`` added to the BCE. Minimising it pulls ``p`` towards what the model
predicted early in training, before it starts memorising wrong labels. Because both components start at zero
the regulariser is neutral for a sample the loss has not seen yet (a single zero-initialised ``t`` would read
as "negative" and push every probability down).
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

__all__ = ["ELRLoss", "elr"]

_CLAMP = 1e-4  # keeps log(1 - <p, T>) finite when p and T agree at 0 or 1, as in the paper's code


class ELRLoss(nn.Module):
    """BCE + multi-label early-learning regulariser with a per-sample, per-label target EMA.

    The EMA lives in two buffers, saved by ``state_dict()`` and restored on resume: ``ema`` (``num_examples x K``,
    the EMA of ``p``, i.e. ``t_pos``) and ``mass`` (``num_examples``, the EMA of 1, so ``t_neg = mass - ema``).
    Both start at zero, as in the paper. In ``eval()`` mode, or with gradients off
    (``torch.no_grad`` / ``inference_mode``, as in evaluation), the EMA is left untouched, no ``index`` is needed
    and the loss is the plain BCE: validation indices would otherwise overwrite training rows.

    Args:
        num_examples: Size of the training set; ``index`` values in the batch must lie in ``[0, num_examples)``.
        num_classes: Number of labels K; when None the buffer is sized at the first batch.
        beta: EMA momentum: ``t <- beta * t + (1 - beta) * p``.
        lam: Weight of the regulariser.
    """

    def __init__(self, num_examples: int, num_classes: int | None = None, beta: float = 0.7, lam: float = 3.0) -> None:
        super().__init__()
        if int(num_examples) < 1:
            raise UsageError(f"loss 'elr': num_examples must be >= 1, got {num_examples}")
        if not 0.0 <= beta < 1.0 or lam < 0:
            raise UsageError(f"loss 'elr': need 0 <= beta < 1 and lam >= 0, got beta={beta}, lam={lam}")
        self.num_examples, self.beta, self.lam = int(num_examples), float(beta), float(lam)
        shape = (self.num_examples, int(num_classes)) if num_classes else (0,)
        self.register_buffer("ema", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("mass", torch.zeros(self.num_examples, dtype=torch.float32))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "ema")
        if saved is not None and self.ema.numel() == 0 and saved.ndim == 2:  # buffer not sized yet: take the saved
            self.ema = torch.zeros_like(saved, device=self.ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **batch: Any) -> torch.Tensor:
        """BCE + ``lam`` times the regulariser; needs ``index`` (sample indices, long ``(B,)``) in a training step."""
        target = match_target(logits, target, "elr")
        x = logits.float()
        if x.ndim == 1:
            x, target = x[:, None], target[:, None]
        loss = F.binary_cross_entropy_with_logits(x, target)
        if not (self.training and torch.is_grad_enabled()):
            return loss
        index = batch.get("index")
        if index is None:
            raise UsageError(
                "loss 'elr' needs the sample indices: index= in the batch",
                hint="the data loader's batches carry 'index'; pass loss(logits, target, **batch)",
            )
        index = torch.as_tensor(index, device=x.device).long().reshape(-1)
        if index.numel() != x.shape[0]:
            raise UsageError(f"loss 'elr': {index.numel()} indices for a batch of {x.shape[0]}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_examples):
            raise UsageError(
                f"loss 'elr': sample index out of range [0, {self.num_examples})",
                hint="num_examples must be the size of the training set the indices come from",
            )
        if self.ema.numel() == 0:
            self.ema = torch.zeros(self.num_examples, x.shape[1], dtype=torch.float32, device=x.device)
        if self.ema.shape[1] != x.shape[1]:
            raise UsageError(f"loss 'elr': built for {self.ema.shape[1]} labels, got logits with {x.shape[1]}")
        p = torch.sigmoid(x).clamp(_CLAMP, 1 - _CLAMP)
        with torch.no_grad():
            self.ema[index] = self.beta * self.ema[index] + (1 - self.beta) * p.detach()
            self.mass[index] = self.beta * self.mass[index] + (1 - self.beta)
        t_pos = self.ema[index]
        t_neg = self.mass[index, None] - t_pos
        agreement = p * t_pos + (1 - p) * t_neg
        return loss + self.lam * torch.log(1 - agreement).mean()


@LOSSES.register("elr", **flags(multilabel=True, needs_indices=True))
@checked_options("loss")
def elr(
    *,
    num_examples: int | None = None,
    num_classes: int | None = None,
    beta: float = 0.7,
    lam: float = 3.0,
    label_prevalence: Sequence[float] | None = None,
) -> nn.Module:
    """Early-learning regularisation (Liu 2020) per label: BCE + lam*mean log(1 - <[p,1-p], EMA target>)."""
    if num_examples is None:
        raise UsageError(
            "loss 'elr' needs num_examples (the size of the training set)",
            hint="the engine passes it for losses flagged needs_indices; pass num_examples=N when building it",
        )
    return ELRLoss(num_examples, num_classes, beta, lam)

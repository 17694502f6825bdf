"""The built-in losses of the LOSSES registry; importing this package registers them.

Contract (docs/architecture.md): ``LOSSES.create(name, **kw)`` returns an ``nn.Module`` whose
``forward(logits, target, **batch)`` returns a scalar; ``batch`` may carry ``index`` (ELR) and ``model`` (weight
penalties) and unknown keys are ignored. Every factory accepts the training-set facts ``label_prevalence``,
``num_classes`` and ``num_examples`` and ignores those it has no use for. Entry flags: multilabel, multiclass,
ordinal, regression, needs_indices, needs_model.
See docs/losses-metrics.md for every name, its options and its formula.
"""

from __future__ import annotations

from medkit.losses import binary, elr, multiclass, regression
from medkit.losses.binary import AsymmetricLoss, BCELoss, FocalLoss, auto_pos_weight
from medkit.losses.elr import ELRLoss
from medkit.losses.multiclass import (
    CrossEntropyLoss,
    OrdinalLoss,
    ordinal_levels,
    ordinal_to_grade,
    ordinal_to_probs,
)
from medkit.losses.regression import RegressionLoss

__all__ = [
    "binary",
    "elr",
    "multiclass",
    "regression",
    "AsymmetricLoss",
    "BCELoss",
    "FocalLoss",
    "ELRLoss",
    "CrossEntropyLoss",
    "OrdinalLoss",
    "RegressionLoss",
    "auto_pos_weight",
    "ordinal_levels",
    "ordinal_to_grade",
    "ordinal_to_probs",
]

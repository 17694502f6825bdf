"""The built-in metrics of the METRICS registry, and `score()`; importing this package registers them (numpy only).

Contract (docs/architecture.md): ``METRICS.create(name, **kw)`` returns a callable ``(y_true, y_score) -> float``
with the attribute ``greater_is_better`` (also the entry flag). ``y_true`` is ``(N,)`` or ``(N, K)``; ``y_score``
holds probabilities of the same shape, or ``(N, K)`` class probabilities against ``(N,)`` class indices for
multiclass metrics. See docs/losses-metrics.md for every name, its options and its formula.
"""

from __future__ import annotations

from medkit.metrics import classification, grades
from medkit.metrics._base import Metric
from medkit.metrics._score import build_metric, greater_is_better, score
from medkit.metrics.classification import (
    RSNA_COLUMNS,
    RSNA_WEIGHTS,
    accuracy_score,
    auc_per_label,
    auc_score,
    binary_auc,
    fbeta_score,
    log_loss,
    mcc_score,
    rsna_log_loss,
)
from medkit.metrics.grades import (
    apply_thresholds,
    kappa_from_confusion,
    optimise_thresholds,
    quadratic_weighted_kappa,
    qwk_score,
)

__all__ = [
    "classification",
    "grades",
    "Metric",
    "build_metric",
    "greater_is_better",
    "score",
    "RSNA_COLUMNS",
    "RSNA_WEIGHTS",
    "accuracy_score",
    "auc_per_label",
    "auc_score",
    "binary_auc",
    "fbeta_score",
    "log_loss",
    "mcc_score",
    "rsna_log_loss",
    "apply_thresholds",
    "kappa_from_confusion",
    "optimise_thresholds",
    "quadratic_weighted_kappa",
    "qwk_score",
]

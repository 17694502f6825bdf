"""Classification metrics in numpy: auc, f1, f2, mcc, accuracy, logloss and the RSNA weighted log loss.

Input layouts (see `medkit.metrics._base.layout`): binary ``(N,)`` targets and probabilities; multi-label
``(N, K)`` 0/1 targets and ``(N, K)`` probabilities; multiclass ``(N,)`` class indices and ``(N, K)`` class
probabilities (thresholded metrics take the argmax). A score at or above the threshold counts as positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.competitions.rsna import RSNA_SUBTYPES
from medkit.console import debug, warn
from medkit.errors import DataError, UsageError
from medkit.metrics._base import Metric, as_arrays, binarise, checked_options, class_indices, layout, thresholds_for
from medkit.registries import METRICS

__all__ = [
    "RSNA_COLUMNS",
    "RSNA_WEIGHTS",
    "binary_auc",
    "auc_per_label",
    "auc_score",
    "fbeta_score",
    "mcc_score",
    "accuracy_score",
    "log_loss",
    "rsna_log_loss",
]

RSNA_COLUMNS = RSNA_SUBTYPES
RSNA_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------------- AUC
def binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of one 0/1 column as the Mann-Whitney statistic (ties count one half); nan with one class."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(s, dtype=np.float64), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = mean_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc_columns(y_true: Any, y_score: Any, name: str) -> np.ndarray:
    t, s = as_arrays(y_true, y_score, name)
    kind = layout(t, s, name)
    if kind == "multiclass":  # one-vs-rest on each class column
        y = class_indices(t, s.shape[1], name)
        t = np.eye(s.shape[1], dtype=np.int8)[y]
    else:
        t = binarise(t, name)
    if t.ndim == 1:
        t, s = t[:, None], s[:, None]
    return np.array([binary_auc(t[:, k], s[:, k]) for k in range(t.shape[1])])


def auc_per_label(y_true: Any, y_score: Any, labels: Sequence[str] | None = None) -> dict[str, float]:
    """ROC AUC of every label column (nan where the column holds one class only).

    Args:
        y_true: 0/1 targets ``(N,)`` / ``(N, K)``, or class indices ``(N,)`` with ``(N, K)`` class probabilities.
        y_score: Probabilities (or any score where larger means more likely positive).
        labels: Column names; defaults to ``"0"``, ``"1"``, ...

    Returns:
        ``{label: auc}`` in column order.
    """
    aucs = _auc_columns(y_true, y_score, "auc")
    names = [str(k) for k in range(aucs.size)] if labels is None else [str(x) for x in labels]
    if len(names) != aucs.size:
        raise UsageError(f"auc_per_label: {len(names)} label names for {aucs.size} columns")
    return dict(zip(names, aucs.tolist(), strict=True))


def auc_score(y_true: Any, y_score: Any) -> float:
    """Mean ROC AUC over the label columns, skipping columns with one class; nan (with a warning) if all are."""
    aucs = _auc_columns(y_true, y_score, "auc")
    kept = ~np.isnan(aucs)
    if not kept.any():
        warn("auc: every label column holds a single class in y_true; AUC is undefined (nan)")
        return float("nan")
    if not kept.all():
        debug(f"auc: skipped {int((~kept).sum())} of {aucs.size} label columns holding a single class")
    return float(aucs[kept].mean())


@METRICS.register("auc", greater_is_better=True)
@checked_options
def auc() -> Metric:
    """Mean column ROC AUC over labels (one-vs-rest for multiclass), skipping single-class labels."""
    return Metric("auc", auc_score, True)


# ---------------------------------------------------------------------------------------------------- thresholded
def _predictions(y_true: Any, y_score: Any, threshold: Any, name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """``(layout, targets, predictions)``: 0/1 arrays, or class indices for multiclass."""
    t, s = as_arrays(y_true, y_score, name)
    kind = layout(t, s, name)
    if kind == "multiclass":
        return kind, class_indices(t, s.shape[1], name), s.argmax(axis=1)
    t = binarise(t, name)
    width = 1 if s.ndim == 1 else s.shape[1]
    th = thresholds_for(threshold, width, name)
    pred = (s >= (th[0] if s.ndim == 1 else th)).astype(np.int8)
    return kind, t, pred


def _fbeta_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float, zero_division: float) -> np.ndarray:
    b2 = beta * beta
    num = (1 + b2) * tp
    den = (1 + b2) * tp + b2 * fn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), zero_division)


def fbeta_score(
    y_true: Any,
    y_score: Any,
    beta: float = 1.0,
    threshold: float | Sequence[float] = 0.5,
    average: str = "macro",
    zero_division: float = 0.0,
) -> float:
    """F-beta score ``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)``.

    Binary input gives the F-beta of the positive class whatever ``average`` says. Multi-label: ``macro`` (mean
    over columns), ``micro`` (pooled counts) or ``samples`` (mean over rows). Multiclass (argmax): ``macro`` over
    the classes present in targets or predictions, or ``micro``. A 0/0 score counts ``zero_division``.
    """
    name = f"f{beta:g}"
    if average not in ("macro", "micro", "samples"):
        raise UsageError(f"metric '{name}': average must be macro, micro or samples, got '{average}'")
    kind, t, p = _predictions(y_true, y_score, threshold, name)
    if kind == "multiclass":
        if average == "samples":
            raise UsageError(f"metric '{name}': average='samples' needs multi-label input")
        classes = np.union1d(t, p)
        t = (t[:, None] == classes).astype(np.int8)
        p = (p[:, None] == classes).astype(np.int8)
    elif kind == "binary":
        t, p, average = t[:, None], p[:, None], "micro"
    axis = {"macro": 0, "samples": 1, "micro": None}[average]
    tp = (t & p).sum(axis=axis)
    fp = ((1 - t) & p).sum(axis=axis)
    fn = (t & (1 - p)).sum(axis=axis)
    return float(np.mean(_fbeta_counts(np.asarray(tp), np.asarray(fp), np.asarray(fn), beta, zero_division)))


def _fbeta_metric(name: str, beta: float, threshold: Any, average: str, zero_division: float) -> Metric:
    if average not in ("macro", "micro", "samples"):
        raise UsageError(f"metric '{name}': average must be macro, micro or samples, got '{average}'")
    return Metric(name, fbeta_score, True, beta=beta, threshold=threshold, average=average, zero_division=zero_division)


@METRICS.register("f1", greater_is_better=True)
@checked_options
def f1(*, threshold: float | Sequence[float] = 0.5, average: str = "macro", zero_division: float = 0.0) -> Metric:
    """F1 at a threshold (binary / multi-label; argmax for multiclass), average macro, micro or samples."""
    return _fbeta_metric("f1", 1.0, threshold, average, zero_division)


@METRICS.register("f2", greater_is_better=True)
@checked_options
def f2(*, threshold: float | Sequence[float] = 0.5, average: str = "macro", zero_division: float = 0.0) -> Metric:
    """F2 (recall weighted 4x) at a threshold, average macro, micro or samples."""
    return _fbeta_metric("f2", 2.0, threshold, average, zero_division)


def _binary_mcc(t: np.ndarray, p: np.ndarray) -> float:
    tp = float((t & p).sum())
    tn = float(((1 - t) & (1 - p)).sum())
    fp = float(((1 - t) & p).sum())
    fn = float((t & (1 - p)).sum())
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den > 0 else 0.0


def _multiclass_mcc(t: np.ndarray, p: np.ndarray, num_classes: int) -> float:
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    cm = cm.astype(np.float64)
    true_k, pred_k, correct, n = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    den = np.sqrt((n * n - pred_k @ pred_k) * (n * n - true_k @ true_k))
    return float((correct * n - true_k @ pred_k) / den) if den > 0 else 0.0


def mcc_score(y_true: Any, y_score: Any, threshold: float | Sequence[float] = 0.5, average: str = "macro") -> float:
    """Matthews correlation coefficient; 0 when undefined (a constant prediction or target).

    Multi-label: ``macro`` (mean of the column MCCs) or ``micro`` (MCC of all cells pooled). Multiclass: the
    K-class generalisation (Gorodkin 2004) on the argmax.
    """
    if average not in ("macro", "micro"):
        raise UsageError(f"metric 'mcc': average must be macro or micro, got '{average}'")
    kind, t, p = _predictions(y_true, y_score, threshold, "mcc")
    if kind == "multiclass":
        return _multiclass_mcc(t, p, int(max(t.max(), p.max())) + 1)
    if kind == "binary" or average == "micro":
        return _binary_mcc(t.reshape(-1), p.reshape(-1))
    return float(np.mean([_binary_mcc(t[:, k], p[:, k]) for k in range(t.shape[1])]))


@METRICS.register("mcc", greater_is_better=True)
@checked_options
def mcc(*, threshold: float | Sequence[float] = 0.5, average: str = "macro") -> Metric:
    """Matthews correlation at a threshold (multi-label: macro mean of columns or micro pooled; multiclass)."""
    if average not in ("macro", "micro"):
        raise UsageError(f"metric 'mcc': average must be macro or micro, got '{average}'")
    return Metric("mcc", mcc_score, True, threshold=threshold, average=average)


def accuracy_score(
    y_true: Any, y_score: Any, threshold: float | Sequence[float] = 0.5, average: str = "subset"
) -> float:
    """Fraction correct: binary at a threshold; multiclass on the argmax; multi-label ``subset`` (every label of a
    row right, scikit-learn's definition) or ``macro`` (mean over all label cells)."""
    if average not in ("subset", "macro"):
        raise UsageError(f"metric 'accuracy': average must be subset or macro, got '{average}'")
    kind, t, p = _predictions(y_true, y_score, threshold, "accuracy")
    if kind == "multilabel" and average == "subset":
        return float((t == p).all(axis=1).mean())
    return float((t == p).mean())


@METRICS.register("accuracy", greater_is_better=True)
@checked_options
def accuracy(*, threshold: float | Sequence[float] = 0.5, average: str = "subset") -> Metric:
    """Accuracy: binary / multi-label at a threshold (subset or macro), multiclass on the argmax."""
    if average not in ("subset", "macro"):
        raise UsageError(f"metric 'accuracy': average must be subset or macro, got '{average}'")
    return Metric("accuracy", accuracy_score, True, threshold=threshold, average=average)


# ---------------------------------------------------------------------------------------------------- log losses
def _column_log_loss(t: np.ndarray, s: np.ndarray, eps: float) -> np.ndarray:
    """Mean binary log loss of each column of ``(N, K)`` arrays, probabilities clipped to ``[eps, 1 - eps]``."""
    p = np.clip(s, eps, 1 - eps)
    return -(t * np.log(p) + (1 - t) * np.log1p(-p)).mean(axis=0)


def _check_probabilities(s: np.ndarray, name: str) -> None:
    if (s < 0).any() or (s > 1).any():
        raise DataError(
            f"metric '{name}': scores must be probabilities in [0, 1]",
            hint="apply the sigmoid (multi-label) or softmax (multiclass) to the logits first",
        )


def log_loss(y_true: Any, y_score: Any, eps: float = 1e-15) -> float:
    """Binary / multi-label: mean over columns of the mean binary log loss. Multiclass: ``-mean log p[y]`` after
    clipping to ``[eps, 1 - eps]`` and renormalising the rows."""
    t, s = as_arrays(y_true, y_score, "logloss")
    _check_probabilities(s, "logloss")
    kind = layout(t, s, "logloss")
    if kind == "multiclass":
        y = class_indices(t, s.shape[1], "logloss")
        p = np.clip(s, eps, 1 - eps)
        p = p / p.sum(axis=1, keepdims=True)
        return float(-np.log(p[np.arange(y.size), y]).mean())
    t = binarise(t, "logloss").astype(np.float64)
    if t.ndim == 1:
        t, s = t[:, None], s[:, None]
    return float(_column_log_loss(t, s, eps).mean())


@METRICS.register("logloss", greater_is_better=False)
@checked_options
def logloss(*, eps: float = 1e-15) -> Metric:
    """Log loss: mean column binary log loss (binary / multi-label) or multiclass log loss; lower is better."""
    if not 0 < eps < 0.5:
        raise UsageError(f"metric 'logloss': eps must lie in (0, 0.5), got {eps}")
    return Metric("logloss", log_loss, False, eps=eps)


def rsna_log_loss(y_true: Any, y_score: Any, weights: Sequence[float] = RSNA_WEIGHTS, eps: float = 1e-7) -> float:
    """RSNA intracranial hemorrhage metric: ``sum_k w_k L_k / sum_k w_k`` with ``L_k`` the mean log loss of
    column k, columns in `RSNA_COLUMNS` order (weight 2 on ``any``), probabilities clipped to ``[eps, 1 - eps]``.

    This equals the competition's weighted mean over every (image, subtype) row of the submission, because each
    image contributes one row per subtype.
    """
    t, s = as_arrays(y_true, y_score, "rsna_logloss")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != w.size:
        raise DataError(
            f"metric 'rsna_logloss': needs (N, {w.size}) targets and probabilities, got {t.shape} and {s.shape}",
            hint="columns in the order " + ", ".join(RSNA_COLUMNS),
        )
    _check_probabilities(s, "rsna_logloss")
    t = binarise(t, "rsna_logloss").astype(np.float64)
    return float((_column_log_loss(t, s, eps) * w).sum() / w.sum())


@METRICS.register("rsna_logloss", greater_is_better=False)
@checked_options
def rsna_logloss(*, weights: Sequence[float] | None = None, eps: float = 1e-7) -> Metric:
    """RSNA hemorrhage weighted log loss over 6 columns (epidural..subdural, any; weight 2 on any); lower is better."""
    w = tuple(float(x) for x in (RSNA_WEIGHTS if weights is None else weights))
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise UsageError(f"metric 'rsna_logloss': weights must be >= 0 with a positive sum, got {list(w)}")
    if not 0 < eps < 0.5:
        raise UsageError(f"metric 'rsna_logloss': eps must lie in (0, 0.5), got {eps}")
    return Metric("rsna_logloss", rsna_log_loss, False, weights=w, eps=eps)

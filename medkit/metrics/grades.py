"""Quadratic weighted kappa for ordered grades (PANDA ISUP grade), and cut points for regression outputs.

Grades are integers ``0 .. K-1``; the disagreement weight of true grade i against predicted grade j is
``(i - j)**2`` (the normalisation by ``(K-1)**2`` cancels in the ratio). Predictions come from class
probabilities (argmax, or the expected grade), or from a continuous output cut at thresholds: grade =
number of thresholds at or below the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError
from medkit.metrics._base import Metric, as_arrays, checked_options, class_indices
from medkit.registries import METRICS

__all__ = ["kappa_from_confusion", "quadratic_weighted_kappa", "apply_thresholds", "optimise_thresholds", "qwk_score"]


def kappa_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of one ``(K, K)`` confusion matrix or a stack ``(..., K, K)`` (rows = truth).

    Returns nan where the expected disagreement is 0 (every sample in one grade, as scikit-learn does).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    k = cm.shape[-1]
    grades = np.arange(k, dtype=np.float64)
    weight = (grades[:, None] - grades[None, :]) ** 2
    n = cm.sum(axis=(-2, -1))
    expected = cm.sum(axis=-1)[..., :, None] * cm.sum(axis=-2)[..., None, :] / n[..., None, None]
    observed_d = (weight * cm).sum(axis=(-2, -1))
    expected_d = (weight * expected).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected_d > 0, 1.0 - observed_d / np.where(expected_d > 0, expected_d, 1.0), np.nan)


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, num_classes: int | None = None) -> float:
    """QWK of integer grades (true and predicted) in ``[0, num_classes)``; K defaults to the largest grade + 1."""
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if t.size != p.size:
        raise DataError(f"qwk: {t.size} targets for {p.size} predictions")
    k = int(num_classes) if num_classes else int(max(t.max(), p.max())) + 1
    ti, pi = class_indices(t, k, "qwk"), class_indices(p, k, "qwk")
    cm = np.bincount(ti * k + pi, minlength=k * k).reshape(k, k)
    return float(kappa_from_confusion(cm))


def apply_thresholds(y_pred: Any, thresholds: Sequence[float]) -> np.ndarray:
    """Grades from a continuous output: the number of thresholds at or below each value (thresholds sorted)."""
    th = np.sort(np.asarray(thresholds, dtype=np.float64).reshape(-1))
    return np.searchsorted(th, np.asarray(y_pred, dtype=np.float64).reshape(-1), side="right").astype(np.int64)


def _best_cut(t: np.ndarray, p: np.ndarray, th: np.ndarray, j: int, k: int, fixed: np.ndarray) -> tuple[float, float]:
    """The best value of threshold j with the others fixed, searched exactly over every distinct split point.

    Only samples between thresholds j-1 and j+1 change grade (j below the cut, j+1 at or above it), so every
    candidate's confusion matrix is the fixed part plus counts read off sorted arrays: no re-digitising.
    """
    lo = th[j - 1] if j > 0 else -np.inf
    hi = th[j + 1] if j < k - 2 else np.inf
    inside = (p >= lo) & (p < hi)
    wp, wt = p[inside], t[inside]
    if wp.size == 0:
        return float(th[j]), float(kappa_from_confusion(fixed))
    u = np.unique(wp)
    left = (lo + u[0]) / 2 if np.isfinite(lo) else u[0] - 0.5
    right = (u[-1] + hi) / 2 if np.isfinite(hi) else u[-1] + 0.5
    cands = np.unique(np.concatenate([[left, th[j], right], (u[:-1] + u[1:]) / 2]))
    cands = cands[(cands >= lo) & (cands <= hi if np.isfinite(hi) else True)]
    stack = np.repeat(fixed[None].astype(np.float64), cands.size, axis=0)
    for g in range(k):
        sorted_g = np.sort(wp[wt == g])
        below = np.searchsorted(sorted_g, cands, side="left")  # predicted grade j
        stack[:, g, j] += below
        stack[:, g, j + 1] += sorted_g.size - below
    kappas = kappa_from_confusion(stack)
    kappas = np.where(np.isnan(kappas), -np.inf, kappas)
    best = kappas.max()
    # among (near-)ties keep the candidate closest to the current value, so the result is stable
    tied = np.flatnonzero(kappas >= best - 1e-12)
    pick = tied[np.argmin(np.abs(cands[tied] - th[j]))]
    return float(cands[pick]), float(best)


def optimise_thresholds(
    y_true: Any,
    y_pred: Any,
    num_classes: int | None = None,
    initial: Sequence[float] | None = None,
    max_iter: int = 20,
) -> np.ndarray:
    """Cut points that maximise QWK of a continuous grade prediction, by exact coordinate ascent.

    Each threshold in turn is set to the best split point between its neighbours (an exhaustive search over
    the midpoints of the predictions in that window), until a full pass changes nothing. Deterministic: no
    random start, ties resolved towards the current value. Fitting and scoring on the same data is optimistic:
    fit on out-of-fold predictions and apply to the test set.

    Args:
        y_true: Integer grades ``(N,)``.
        y_pred: Continuous predictions ``(N,)`` (a regression output or an expected grade).
        num_classes: Number of grades K; defaults to the largest true grade + 1.
        initial: Starting K-1 cut points; defaults to rounding (``0.5, 1.5, ...``).
        max_iter: Maximum number of full passes.

    Returns:
        Sorted float array of K-1 thresholds.
    """
    t, p = as_arrays(y_true, y_pred, "qwk")
    if t.ndim != 1 or p.ndim != 1:
        raise DataError(f"optimise_thresholds: needs (N,) grades and (N,) predictions, got {t.shape}, {p.shape}")
    k = int(num_classes) if num_classes else int(t.max()) + 1
    if k < 2:
        raise DataError("optimise_thresholds: needs at least 2 grades", hint="pass num_classes=K")
    ti = class_indices(t, k, "qwk")
    th = np.arange(k - 1, dtype=np.float64) + 0.5 if initial is None else np.sort(np.asarray(initial, np.float64))
    if th.size != k - 1:
        raise UsageError(f"optimise_thresholds: {th.size} initial thresholds for {k} grades (need {k - 1})")
    for _ in range(max_iter):
        changed = False
        for j in range(k - 1):
            grade = apply_thresholds(p, th)
            keep = (grade != j) & (grade != j + 1)
            fixed = np.bincount(ti[keep] * k + grade[keep], minlength=k * k).reshape(k, k)
            value, _ = _best_cut(ti, p, th, j, k, fixed)
            if value != th[j]:
                th[j], changed = value, True
        if not changed:
            break
    return th


def qwk_score(
    y_true: Any,
    y_score: Any,
    num_classes: int | None = None,
    thresholds: str | Sequence[float] | None = None,
    from_probs: str = "argmax",
) -> float:
    """QWK of grades against class probabilities ``(N, K)`` or a continuous prediction ``(N,)``.

    Args:
        y_true: Integer grades ``(N,)``.
        y_score: Class probabilities ``(N, K)`` or continuous predictions / predicted grades ``(N,)``.
        num_classes: K; defaults to the number of probability columns, else the largest grade + 1.
        thresholds: Continuous input only: None rounds (cut points 0.5, 1.5, ...); ``"optimised"`` fits them
            with `optimise_thresholds` on this very data (optimistic); or K-1 explicit cut points.
        from_probs: Class probabilities only: ``"argmax"`` or ``"expectation"`` (expected grade, then cut).
    """
    t, s = as_arrays(y_true, y_score, "qwk")
    if t.ndim != 1:
        raise DataError(f"metric 'qwk': y_true must be one grade per sample, got shape {t.shape}")
    if s.ndim == 2:
        k = int(num_classes) if num_classes else s.shape[1]
        if s.shape[1] != k:
            raise DataError(f"metric 'qwk': {s.shape[1]} probability columns for num_classes={k}")
        if from_probs == "argmax":
            return quadratic_weighted_kappa(t, s.argmax(axis=1), k)
        if from_probs != "expectation":
            raise UsageError(f"metric 'qwk': from_probs must be argmax or expectation, got '{from_probs}'")
        s = s @ np.arange(k, dtype=np.float64)
    else:
        k = int(num_classes) if num_classes else int(t.max()) + 1
    if isinstance(thresholds, str):
        if thresholds not in ("optimised", "optimized"):
            raise UsageError(f"metric 'qwk': thresholds must be 'optimised' or a list, got '{thresholds}'")
        cuts = optimise_thresholds(t, s, k)
    elif thresholds is None:
        cuts = np.arange(k - 1, dtype=np.float64) + 0.5
    else:
        cuts = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if cuts.size != k - 1:
            raise UsageError(f"metric 'qwk': {cuts.size} thresholds for {k} grades (need {k - 1})")
    return quadratic_weighted_kappa(t, apply_thresholds(s, cuts), k)


@METRICS.register("qwk", greater_is_better=True)
@checked_options
def qwk(
    *,
    num_classes: int | None = None,
    thresholds: str | Sequence[float] | None = None,
    from_probs: str = "argmax",
) -> Metric:
    """Quadratic weighted kappa of grades, from class probabilities or a regression output cut at thresholds."""
    if from_probs not in ("argmax", "expectation"):
        raise UsageError(f"metric 'qwk': from_probs must be argmax or expectation, got '{from_probs}'")
    return Metric("qwk", qwk_score, True, num_classes=num_classes, thresholds=thresholds, from_probs=from_probs)

"""Grades from blended ordinal or multiclass outputs, and cut points fitted on the blended OOF for QWK.

The expected grade of a row is the sum of its cumulative "grade > k" probabilities (ordinal) or
``sum_c c * p_c`` (multiclass). With QWK as the metric, cut points that maximise QWK on the blended out-of-fold
expected grade (`medkit.metrics.optimise_thresholds`) turn blended test predictions into grades; otherwise
ordinal grades are the expected grade rounded (cut points 0.5, 1.5, ...) and multiclass grades the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medkit.target import TargetKind

__all__ = ["uses_cut_points", "expected_grade", "fit_cut_points", "grades", "qwk_with_cut_points"]

#: The metric whose value depends on where a continuous grade is cut.
CUT_METRIC = "qwk"


def uses_cut_points(kind: TargetKind, metric: str) -> bool:
    """Whether cut points are fitted: graded outputs (ordinal, multiclass) scored with QWK."""
    return kind.integer and metric == CUT_METRIC


def expected_grade(kind: TargetKind, probs: Any) -> Any:
    """The expected grade ``(N,)`` of ordinal (cumulative) or multiclass (softmax) probabilities ``(N, K)``."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if kind.cumulative:
        return p.sum(axis=1)
    return p @ np.arange(p.shape[1], dtype=np.float64)


def fit_cut_points(kind: TargetKind, y: Any, probs: Any, num_classes: int) -> Any:
    """The K-1 cut points of the expected grade that maximise QWK on ``(y, probs)`` (fit on OOF rows only)."""
    from medkit.metrics import optimise_thresholds

    return optimise_thresholds(y, expected_grade(kind, probs), num_classes)


def grades(kind: TargetKind, probs: Any, cut_points: Sequence[float] | None = None) -> Any:
    """Predicted grades ``(N,)``: the expected grade cut at ``cut_points``; without them, the rounded expected grade
    (ordinal) or the most probable class (multiclass)."""
    import numpy as np

    from medkit.metrics import apply_thresholds

    if cut_points is not None and len(cut_points):
        return apply_thresholds(expected_grade(kind, probs), cut_points)
    p = np.asarray(probs, dtype=np.float64)
    if kind.cumulative:
        return apply_thresholds(p.sum(axis=1), np.arange(p.shape[1], dtype=np.float64) + 0.5)
    return p.argmax(axis=1).astype(np.int64)


def qwk_with_cut_points(kind: TargetKind, y: Any, probs: Any, cut_points: Sequence[float], num_classes: int) -> float:
    """QWK of the grades that ``cut_points`` give (nan when the rows hold one grade only)."""
    from medkit.metrics import quadratic_weighted_kappa

    return quadratic_weighted_kappa(y, grades(kind, probs, cut_points), num_classes)

"""A cross-validated estimate of a blend: weights fitted on some folds of the OOF rows, scored on the others.

Scoring weights on the rows they were searched on is optimistic, and more so the more members there are: with
enough members, some pure-noise member will fit the OOF noise. So the weights (and cut points) are fitted on
K-1 folds and scored on the held-out fold, K times. The plain mean and each member are scored on the same
held-out folds (with cut points fitted the same way), so the comparison is like for like.

Folds come from the OOF ``fold`` column when it has two or more folds (a ``--fold all`` run); otherwise from K
seeded folds that keep each ``patient_id`` whole and spread each label (class, grade, or rarest positive label)
evenly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medkit.ensemble._blender import Blender, Fitted
from medkit.ensemble._thresholds import criterion_at, decide
from medkit.errors import DataError

__all__ = ["CVScore", "CVEstimate", "ThresholdCV", "assign_folds", "cross_validate"]


@dataclass
class ThresholdCV:
    """Held-out criterion of decision thresholds, per label.

    Attributes:
        folds: ``(F, K)``: each held-out fold's criterion per label (nan where undefined).
        pooled: ``(K,)``: the criterion over every held-out row's decision at once.
    """

    folds: Any
    pooled: Any


@dataclass
class CVScore:
    """Held-out scores of one blend or member.

    Attributes:
        folds: The score on each held-out fold.
        mean: Their mean (undefined folds left out).
        std: Their standard deviation.
        pooled: The score over every held-out row at once.
    """

    folds: tuple[float, ...]
    mean: float
    std: float
    pooled: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class CVEstimate:
    """Cross-validated scores of the blend, the plain mean and each member on the same folds.

    Attributes:
        n_folds: Number of folds.
        source: Where the folds came from.
        blend: The blend, fitted on the other folds each time.
        mean: The equal-weight mean.
        members: Each member alone.
        thresholds: With decision thresholds (`Blender.thresholds`): the blend's held-out criterion per label,
            thresholds and weights fitted on the other folds (reported per label by `ensemble`, not in `to_dict`).
    """

    n_folds: int
    source: str
    blend: CVScore
    mean: CVScore
    members: tuple[CVScore, ...]
    thresholds: ThresholdCV | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "n_folds": self.n_folds,
            "source": self.source,
            "blend": self.blend.to_dict(),
            "mean": self.mean.to_dict(),
            "members": [m.to_dict() for m in self.members],
        }


def _strata(y: Any) -> Any:
    """One stratum per row: the class or grade, or for 0/1 columns the rarest positive label (-1: none)."""
    import numpy as np

    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        return y.astype(np.int64)
    order = np.argsort(y.mean(axis=0), kind="stable")  # rarest label first
    positive = y[:, order] > 0
    return np.where(positive.any(axis=1), order[positive.argmax(axis=1)], -1)


def assign_folds(y: Any, folds: Any = None, groups: Any = None, k: int = 5, seed: int = 0) -> tuple[Any, str]:
    """Fold ids ``0..F-1`` of the OOF rows and where they came from.

    Args:
        y: OOF targets (stratified on).
        folds: The OOF ``fold`` column, or None.
        groups: Patient ids (kept in one fold), or None.
        k: Number of folds when there is no usable ``fold`` column.
        seed: Seed of those folds.

    Raises:
        DataError: Fewer than two rows or patients.
    """
    import numpy as np

    if folds is not None:
        values, fold_ids = np.unique(np.asarray(folds).astype(str), return_inverse=True)
        if len(values) >= 2:
            return fold_ids, f"the OOF 'fold' column ({len(values)} folds)"
    n = len(y)
    keys = np.asarray(groups).astype(str) if groups is not None else np.arange(n).astype(str)
    unit_keys, unit_of = np.unique(keys, return_inverse=True)
    units = len(unit_keys)
    if units < 2:
        raise DataError(
            f"cannot cross-validate the blend on {n} OOF rows ({units} {'patient' if groups is not None else 'row'})",
            hint="give OOF tables with more rows (train with --fold all)",
        )
    k = min(k, units)
    unit_stratum = np.full(units, np.iinfo(np.int64).min)
    np.maximum.at(unit_stratum, unit_of, _strata(y))
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(units), unit_stratum))
    unit_fold = np.empty(units, dtype=np.int64)
    unit_fold[order] = np.arange(units) % k
    by = "patient_id" if groups is not None else "row"
    return unit_fold[unit_of], f"{k} seeded folds (seed {seed}) by {by}, stratified"


def _summary(scores: list[float], pooled: float) -> CVScore:
    import numpy as np

    finite = [s for s in scores if math.isfinite(s)]
    mean = float(np.mean(finite)) if finite else float("nan")
    std = float(np.std(finite)) if finite else float("nan")
    return CVScore(tuple(scores), mean, std, pooled)


def cross_validate(blender: Blender, y: Any, probs: Any, fold_ids: Any, source: str = "") -> CVEstimate:
    """Fit on all folds but one, score on that one, for every fold: the blend, the mean and each member.

    Args:
        blender: How the blend is fitted (its weight search, cut points) and scored.
        y: OOF targets.
        probs: ``(M, N, K)`` OOF probabilities.
        fold_ids: Fold of each row (`assign_folds`).
        source: Where the folds came from (reported).
    """
    import numpy as np

    y = np.asarray(y)
    m, n, k = probs.shape
    candidates: list[Any] = [None, np.full(m, 1.0 / m), *np.eye(m)]  # None: the blend's own weights
    pooled = [np.zeros((n, k)) for _ in candidates]
    pooled_grades = [np.zeros(n, dtype=np.int64) for _ in candidates]
    scores: list[list[float]] = [[] for _ in candidates]
    folds = np.unique(fold_ids)
    decisions = np.zeros((n, k), dtype=np.int8)
    yk = y.reshape(n, -1)
    threshold_folds = []
    for f in folds:
        test = fold_ids == f
        train = ~test
        for c, weights in enumerate(candidates):
            fitted: Fitted = blender.fit(y[train], probs[:, train], weights)
            scores[c].append(blender.score(y[test], probs[:, test], fitted))
            pooled[c][test] = blender.predict(probs[:, test], fitted)
            if fitted.cut_points is not None:
                pooled_grades[c][test] = blender.grades(pooled[c][test], fitted)
            if c == 0 and fitted.thresholds is not None:
                decisions[test] = decide(pooled[c][test], fitted.thresholds)
                threshold_folds.append(
                    [criterion_at(blender.thresholds, yk[test, j], decisions[test, j], 0.5) for j in range(k)]
                )
    thresholds = None
    if blender.thresholds is not None:
        total = [criterion_at(blender.thresholds, yk[:, j], decisions[:, j], 0.5) for j in range(k)]
        thresholds = ThresholdCV(np.asarray(threshold_folds), np.asarray(total))
    summaries = []
    for c in range(len(candidates)):
        if blender.cut_points:
            from medkit.metrics import quadratic_weighted_kappa

            total = quadratic_weighted_kappa(y, pooled_grades[c], blender.num_classes)
        else:
            total = blender.scorer(y, pooled[c])
        summaries.append(_summary(scores[c], total))
    return CVEstimate(len(folds), source, summaries[0], summaries[1], tuple(summaries[2:]), thresholds)

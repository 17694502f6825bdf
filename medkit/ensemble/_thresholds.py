"""Per-label decision thresholds of 0/1 outputs (binary, multilabel), chosen on the blended OOF rows.

A label's threshold is searched over every distinct way of cutting its OOF probabilities: the midpoints between
consecutive distinct probabilities, plus one threshold below all of them (every row positive) and one above all of
them (every row negative). A row is positive when its probability is ``>=`` the threshold, as in
`medkit.metrics` (F1, F2, accuracy at a threshold). The criterion is F-beta (``f1``, ``f2``), Youden's J
(``youden``: TPR - FPR) or ``accuracy``. Ties go to the candidate closest to 0.5 (the lower one when two are as
close), so the threshold only leaves 0.5 when that strictly improves the criterion on the OOF rows.

The criterion at the chosen threshold is measured on the rows it was chosen on, so it is optimistic; the
cross-validated estimate (`medkit.ensemble._cv.cross_validate`) chooses the thresholds on the other folds and
scores the held-out one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medkit.errors import UsageError, did_you_mean

__all__ = [
    "THRESHOLD_CRITERIA",
    "LabelThreshold",
    "ThresholdReport",
    "check_criterion",
    "criterion_at",
    "decide",
    "fit_thresholds",
    "threshold_candidates",
]

#: Criteria a threshold can be chosen for: name -> what it is.
THRESHOLD_CRITERIA = {
    "f1": "F1 (F-beta, beta 1)",
    "f2": "F2 (F-beta, beta 2: recall weighted 4x)",
    "youden": "Youden's J = TPR - FPR",
    "accuracy": "accuracy",
}
#: The threshold the criterion is compared with (the fixed threshold of medkit's metrics).
DEFAULT_THRESHOLD = 0.5


def check_criterion(name: str) -> str:
    """``name`` when it is one of `THRESHOLD_CRITERIA`.

    Raises:
        UsageError: An unknown criterion, with a suggestion.
    """
    if name not in THRESHOLD_CRITERIA:
        raise UsageError(
            f"unknown threshold criterion '{name}'{did_you_mean(name, THRESHOLD_CRITERIA, cutoff=0.5)}",
            hint=f"use one of {', '.join(THRESHOLD_CRITERIA)}",
        )
    return name


def _from_counts(criterion: str, tp: Any, fp: Any, fn: Any, tn: Any) -> Any:
    """The criterion from confusion counts (arrays: one value per candidate threshold).

    F-beta of 0/0 (no positive row and none predicted) is 0, as `medkit.metrics` counts it; Youden's J is nan
    when the rows hold one class only (TPR or FPR undefined).
    """
    import numpy as np

    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if criterion in ("f1", "f2"):
            b2 = 1.0 if criterion == "f1" else 4.0
            den = (1 + b2) * tp + b2 * fn + fp
            return np.where(den > 0, (1 + b2) * tp / np.where(den > 0, den, 1), 0.0)
        if criterion == "youden":
            return tp / (tp + fn) - fp / (fp + tn)
        return (tp + tn) / (tp + fp + fn + tn)


def criterion_at(criterion: str, y: Any, p: Any, threshold: float) -> float:
    """The criterion of the decisions ``p >= threshold`` against 0/1 targets ``y`` (one label: 1-D arrays)."""
    import numpy as np

    t = np.asarray(y, dtype=np.float64) > 0.5
    d = np.asarray(p, dtype=np.float64) >= threshold
    counts = [np.sum(t & d), np.sum(~t & d), np.sum(t & ~d), np.sum(~t & ~d)]
    return float(_from_counts(criterion, *counts))


def threshold_candidates(p: Any) -> Any:
    """Every distinct cut of the probabilities ``p`` (ascending): one below all of them, the midpoints between
    consecutive distinct values, one above all of them (kept within [0, 1] where the values allow)."""
    import numpy as np

    v = np.unique(np.asarray(p, dtype=np.float64))
    low = v[0] / 2 if v[0] > 0 else 0.0
    high = (v[-1] + 1) / 2 if v[-1] < 1 else np.nextafter(1.0, 2.0)
    return np.concatenate([[low], (v[:-1] + v[1:]) / 2, [high]])


def _best_threshold(criterion: str, y: Any, p: Any) -> float:
    """The candidate threshold of one label with the best criterion (ties: closest to 0.5, then the lower)."""
    import numpy as np

    y = np.asarray(y, dtype=np.float64) > 0.5
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    cum = np.concatenate([[0], np.cumsum(ys)])
    n, pos = len(ps), int(ys.sum())
    cand = threshold_candidates(ps)
    below = np.searchsorted(ps, cand, side="left")  # rows with p < t: predicted negative
    tp = pos - cum[below]
    fp = (n - below) - tp
    fn = pos - tp
    tn = (n - pos) - fp
    values = _from_counts(criterion, tp, fp, fn, tn)
    if not np.isfinite(values).any():
        return DEFAULT_THRESHOLD
    best = np.nanmax(values)
    # Equal counts give bit-equal values; the tolerance only absorbs rounding of Youden's difference of ratios.
    tied = cand[values >= best - 1e-12]
    distance = np.abs(tied - DEFAULT_THRESHOLD)
    return float(tied[np.flatnonzero(distance == distance.min())[0]])


def fit_thresholds(criterion: str, y: Any, probs: Any) -> Any:
    """One threshold per label column that maximises ``criterion`` on ``(y, probs)``.

    Args:
        criterion: One of `THRESHOLD_CRITERIA`.
        y: 0/1 targets, ``(N,)`` or ``(N, K)``.
        probs: Blended probabilities ``(N, K)`` (or ``(N,)``).

    Returns:
        ``(K,)`` thresholds (0.5 for a label whose rows make the criterion undefined everywhere).
    """
    import numpy as np

    yy = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pp = np.asarray(probs, dtype=np.float64).reshape(len(y), -1)
    return np.array([_best_threshold(criterion, yy[:, k], pp[:, k]) for k in range(pp.shape[1])])


def decide(probs: Any, thresholds: Any) -> Any:
    """0/1 decisions ``(N, K)``: ``probs >= thresholds``, column by column."""
    import numpy as np

    pp = np.asarray(probs, dtype=np.float64)
    return (pp.reshape(len(pp), -1) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int8)


@dataclass
class LabelThreshold:
    """The threshold of one label and what it buys.

    Attributes:
        label: The output name.
        threshold: Chosen on all OOF rows.
        at_default: The criterion at 0.5 on the OOF rows (nothing fitted: honest).
        at_threshold: The criterion at ``threshold`` on the OOF rows it was chosen on (optimistic).
        cv_folds: Held-out criterion of each fold, with thresholds (and blend weights) fitted on the other folds.
        cv_mean: Their mean (undefined folds left out).
        cv_std: Their standard deviation.
        cv_pooled: The criterion over every held-out row at once.
    """

    label: str
    threshold: float
    at_default: float
    at_threshold: float
    cv_folds: tuple[float, ...] = ()
    cv_mean: float = math.nan
    cv_std: float = math.nan
    cv_pooled: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["cv_folds"] = list(self.cv_folds)
        return d


@dataclass
class ThresholdReport:
    """The thresholds of every label.

    Attributes:
        criterion: The criterion they maximise.
        labels: One record per label, in output order.
        file: The table of 0/1 decisions written with them (``blend_labels.csv``), once written.
        columns: Its decision columns (one ``<label>`` per label).
    """

    criterion: str
    labels: tuple[LabelThreshold, ...]
    file: str = ""
    columns: tuple[str, ...] = ()

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The thresholds, in label order."""
        return tuple(t.threshold for t in self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "criterion": self.criterion,
            "default_threshold": DEFAULT_THRESHOLD,
            "file": self.file,
            "columns": list(self.columns),
            "labels": [t.to_dict() for t in self.labels],
        }


def summarise(criterion: str, labels: Any, y: Any, blended: Any, thresholds: Any, cv: Any = None) -> ThresholdReport:
    """The `ThresholdReport` of thresholds fitted on ``(y, blended)``.

    Args:
        criterion: The criterion.
        labels: The output names.
        y: OOF targets ``(N,)`` or ``(N, K)``.
        blended: The blended OOF probabilities ``(N, K)``.
        thresholds: ``(K,)`` thresholds fitted on these rows.
        cv: ``(folds, pooled)``: per-label held-out criteria ``(F, K)`` and pooled ``(K,)``, or None.
    """
    import numpy as np

    yy = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pp = np.asarray(blended, dtype=np.float64).reshape(len(y), -1)
    records = []
    for k, label in enumerate(labels):
        rec = LabelThreshold(
            label=str(label),
            threshold=float(thresholds[k]),
            at_default=criterion_at(criterion, yy[:, k], pp[:, k], DEFAULT_THRESHOLD),
            at_threshold=criterion_at(criterion, yy[:, k], pp[:, k], float(thresholds[k])),
        )
        if cv is not None:
            folds, pooled = cv
            column = [float(v) for v in np.asarray(folds)[:, k]]
            finite = [v for v in column if math.isfinite(v)]
            rec.cv_folds = tuple(column)
            rec.cv_mean = float(np.mean(finite)) if finite else math.nan
            rec.cv_std = float(np.std(finite)) if finite else math.nan
            rec.cv_pooled = float(pooled[k])
        records.append(rec)
    return ThresholdReport(criterion, tuple(records))

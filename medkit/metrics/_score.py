"""Scoring predictions with a registered metric: the one function training, OOF tables and ensembles call."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

__all__ = ["build_metric", "greater_is_better", "score"]


def build_metric(name: str, **options: Any) -> Any:
    """The METRICS entry ``name`` as a callable with a ``greater_is_better`` attribute (taken from the entry's flag
    when the callable has none)."""
    from medkit.registries import METRICS

    entry = METRICS.get(name)
    fn = METRICS.create(name, **options)
    if not hasattr(fn, "greater_is_better"):
        # a plain function object of a plugin that refuses attributes keeps the default (greater is better)
        with contextlib.suppress(AttributeError):
            fn.greater_is_better = bool(entry.flags.get("greater_is_better", True))
    return fn


def greater_is_better(metric: Any) -> bool:
    """Whether a larger value of ``metric`` is better (True when the metric does not say)."""
    return bool(getattr(metric, "greater_is_better", True))


def score(metric: Any, target: Any, y_true: Any, probs: Any) -> float:
    """Apply a metric to predictions, in the shape the metrics contract expects.

    Args:
        metric: A METRICS name or a metric callable.
        target: The `medkit.target.TargetKind` (or its name) of the predictions: binary outputs become (N,)
            vectors, ordinal cumulative probabilities become the expected grade.
        y_true: (N,) or (N, K) targets.
        probs: (N, K) probabilities as the model's outputs give them.

    Returns:
        The score, or NaN when there is nothing to score or the metric is undefined on these rows (AUC on one
        class only: a dry run, a tiny fold).
    """
    from medkit.target import target_kind

    fn = build_metric(metric) if isinstance(metric, str) else metric
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if len(y_true) == 0:
        return float("nan")
    y_true, probs = target_kind(target).metric_inputs(y_true, probs)
    try:
        return float(fn(y_true, probs))
    except ValueError:
        return float("nan")

"""The metric object, option checking and input validation shared by the metric modules (numpy only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from medkit.errors import DataError, UsageError
from medkit.registry import keyword_options

__all__ = ["Metric", "checked_options", "as_arrays", "layout", "binarise", "class_indices", "thresholds_for"]

F = TypeVar("F", bound=Callable[..., Any])


class Metric:
    """A configured metric: ``metric(y_true, y_score) -> float``.

    Args:
        name: Registry name.
        fn: ``fn(y_true, y_score, **options) -> float``; a module-level function so the metric pickles.
        greater_is_better: Whether a larger value is a better model (False for log losses).
        **options: The options the metric was created with.
    """

    def __init__(self, name: str, fn: Callable[..., float], greater_is_better: bool, **options: Any) -> None:
        self.name = name
        self.fn = fn
        self.greater_is_better = greater_is_better
        self.options = options

    def __call__(self, y_true: Any, y_score: Any) -> float:
        return float(self.fn(y_true, y_score, **self.options))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Metric({self.name}{', ' if opts else ''}{opts})"


def checked_options(fn: F) -> F:
    """Turn an unknown keyword option of a metric factory into a `UsageError` listing the valid ones."""
    return keyword_options("metric", doc="docs/losses-metrics.md")(fn)  # type: ignore[return-value]


def as_arrays(y_true: Any, y_score: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 arrays; ``(N, 1)`` becomes ``(N,)``.

    Raises:
        DataError: For different row counts, NaN or infinite values, or an empty input.
    """
    t = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if t.ndim not in (1, 2) or s.ndim not in (1, 2) or t.shape[0] != s.shape[0]:
        raise DataError(
            f"metric '{name}': y_true {t.shape} and y_score {s.shape} do not match",
            hint="give (N,) or (N, K) arrays with one row per sample",
        )
    if t.shape[0] == 0:
        raise DataError(f"metric '{name}': no samples")
    if not np.isfinite(t).all() or not np.isfinite(s).all():
        raise DataError(
            f"metric '{name}': NaN or infinite values in the {'targets' if not np.isfinite(t).all() else 'scores'}",
            hint="drop rows with missing labels, and check the model for diverged outputs",
        )
    return t, s


def layout(t: np.ndarray, s: np.ndarray, name: str) -> str:
    """``"binary"`` (both (N,)), ``"multilabel"`` (both (N, K)) or ``"multiclass"`` (labels (N,), scores (N, K)).

    Raises:
        DataError: For any other combination of shapes.
    """
    if t.shape == s.shape:
        return "binary" if t.ndim == 1 else "multilabel"
    if t.ndim == 1 and s.ndim == 2 and s.shape[1] >= 2:
        return "multiclass"
    raise DataError(
        f"metric '{name}': y_true {t.shape} and y_score {s.shape} do not match",
        hint="same shape for binary / multi-label; class indices (N,) with class probabilities (N, K) for multiclass",
    )


def binarise(t: np.ndarray, name: str) -> np.ndarray:
    """0/1 targets as int8.

    Raises:
        DataError: When a target is neither 0 nor 1.
    """
    if not np.isin(t, (0.0, 1.0)).all():
        raise DataError(
            f"metric '{name}': binary / multi-label targets must be 0 or 1",
            hint="round soft labels, or use a multiclass layout (class indices with class probabilities)",
        )
    return t.astype(np.int8)


def class_indices(t: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Integer class indices in ``[0, num_classes)``.

    Raises:
        DataError: For a non-integer or out-of-range value.
    """
    if (t != np.round(t)).any() or t.min() < 0 or t.max() >= num_classes:
        raise DataError(f"metric '{name}': class labels must be integers in [0, {num_classes - 1}]")
    return t.astype(np.int64)


def thresholds_for(threshold: float | Any, width: int, name: str) -> np.ndarray:
    """One threshold per column: a number broadcast, or a list of ``width`` values."""
    th = np.asarray(threshold, dtype=np.float64).reshape(-1)
    if th.size == 1:
        return np.full(width, th[0])
    if th.size != width:
        raise UsageError(f"metric '{name}': {th.size} thresholds for {width} label columns")
    return th

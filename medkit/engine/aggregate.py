"""Neighbour aggregation for CT series: each slice's logits combined with those of the slices next to it.

A haemorrhage seen on one slice is usually visible on its neighbours, so a slice-level model gains from looking at
them. `aggregate_neighbours` orders the rows of every series by their slice order and replaces each slice's logits
by a weighted sum over a window centred on it; at the ends of a series the first and last slice are repeated to
fill the window. The weights are used as given: weights that sum to 1 (``0.25,0.5,0.25``) keep the logits on
their scale. Probabilities follow with the run's sigmoid (or softmax) afterwards.

Pure numpy: `medkit predict` applies it to the predicted logits and ``medkit train``'s refine stage to the
out-of-fold logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = ["aggregate_neighbours", "parse_weights"]


def parse_weights(spec: str | Sequence[float] | None) -> tuple[float, ...]:
    """Neighbour weights from ``"0.25,0.5,0.25"`` (or a sequence); empty for None / ``""`` / ``"none"``.

    Raises:
        UsageError: A value that is not a finite number, or an even number of weights.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts or parts == ["none"]:
            return ()
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise UsageError(
                f"neighbour weights must be numbers, got '{spec}'", hint="e.g. --neighbours 0.25,0.5,0.25"
            ) from None
    else:
        values = tuple(float(v) for v in spec)
    if not values:
        return ()
    if len(values) % 2 == 0 or not all(np.isfinite(values)):
        raise UsageError(
            f"neighbour weights need an odd count of finite numbers (centred on the slice), got {list(values)}",
            hint="e.g. --neighbours 0.25,0.5,0.25 (the slice before, the slice, the slice after)",
        )
    return values


def aggregate_neighbours(logits: Any, series: Any, order: Any, weights: Sequence[float]) -> np.ndarray:
    """Combine every slice's logits with its neighbours' in the same series.

    For the slices of one series sorted by ``order`` (ties keep the row order), with ``r = len(weights) // 2``:
    ``out[i] = sum_j weights[j] * logits[clamp(i + j - r, 0, n - 1)]``. Rows come back in their input order.

    Args:
        logits: ``(N, K)`` (or ``(N,)``) logits, one row per slice.
        series: ``(N,)`` series id of each row (any hashable values).
        order: ``(N,)`` slice position of each row within its series (numbers: instance number, z position).
        weights: Odd-length weights, the middle one for the slice itself; empty: logits returned unchanged.

    Returns:
        ``(N, K)`` float64 logits (``(N,)`` for a 1-D input).

    Raises:
        UsageError: An even number of weights.
        DataError: Arrays of different lengths, or a missing / non-numeric slice order.
    """
    x = np.asarray(logits, dtype=np.float64)
    w = np.asarray(parse_weights(weights), dtype=np.float64)
    if w.size == 0:
        return x.copy()
    flat = x.ndim == 1
    x2 = x[:, None] if flat else x
    n = len(x2)
    series = np.asarray(series)
    try:
        pos = np.asarray(order, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            "the slice order column is not numeric", hint="order slices by a number (InstanceNumber)"
        ) from None
    if len(series) != n or len(pos) != n:
        raise DataError(f"{n} rows of logits but {len(series)} series ids and {len(pos)} slice positions")
    if np.isnan(pos).any():
        raise DataError(f"{int(np.isnan(pos).sum())} rows have no slice order", hint="fill the slice order column")
    out = np.empty_like(x2)
    r = len(w) // 2
    _, codes = np.unique(series.astype(str), return_inverse=True)
    # One sort orders every series at once: by series, then by slice position, then by row (stable).
    rows = np.lexsort((np.arange(n), pos, codes))
    bounds = np.flatnonzero(np.diff(codes[rows])) + 1
    for members in np.split(rows, bounds):
        m = len(members)
        idx = np.clip(np.arange(m)[:, None] + np.arange(-r, r + 1)[None, :], 0, m - 1)  # (m, len(w))
        out[members] = np.einsum("j,mjk->mk", w, x2[members][idx])
    return out[:, 0] if flat else out

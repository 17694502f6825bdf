"""Checks computed from a finished fold assignment alone: the leakage certificate and label prevalence per fold.

This module imports numpy, not torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medkit.split._units import distinct_per_key, key_codes

__all__ = ["leakage_certificate", "prevalence_table", "max_deviation"]


def leakage_certificate(fold: np.ndarray, n_folds: int, groups: Any = None, clusters: Any = None) -> dict[str, int]:
    """Leakage counts computed from a fold assignment alone.

    Args:
        fold: ``(rows,)`` fold of every row.
        n_folds: Number of folds that should be non-empty.
        groups: Per-row group key, or None.
        clusters: Per-row duplicate cluster key, or None.

    Returns:
        ``groups_shared`` (groups found in more than one fold), ``duplicate_clusters_split`` (clusters found in
        more than one fold) and ``empty_folds``.
    """
    fold = np.asarray(fold)

    def spread(key: Any) -> int:
        if key is None:
            return 0
        codes, n = key_codes(key)
        has = codes >= 0
        if not has.any():
            return 0
        return distinct_per_key(codes[has], fold[has], n)

    sizes = np.bincount(fold, minlength=n_folds)
    return {
        "groups_shared": spread(groups),
        "duplicate_clusters_split": spread(clusters),
        "empty_folds": int((sizes[:n_folds] == 0).sum()),
    }


def prevalence_table(values: np.ndarray, fold: np.ndarray, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Overall prevalence ``(L,)`` and per-fold prevalence ``(K, L)`` of 0/1 indicators (NaN for an empty fold)."""
    values = np.asarray(values, dtype=np.float64)
    overall = values.mean(axis=0) if len(values) else np.zeros(values.shape[1])
    sums = np.zeros((n_folds, values.shape[1]))
    np.add.at(sums, fold, values)
    sizes = np.bincount(fold, minlength=n_folds).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_fold = sums / sizes[:, None]
    return overall, per_fold


def max_deviation(values: np.ndarray, fold: np.ndarray, n_folds: int) -> tuple[float, float]:
    """Largest absolute and relative prevalence deviation over labels and folds.

    ``abs = max_{l,k} |p[k,l] - p[l]|`` and ``rel = max_{l,k} |p[k,l] - p[l]| / p[l]`` over labels with
    ``p[l] > 0``, where ``p[k,l]`` is the share of positives of label l among the rows of fold k and ``p[l]``
    the share in the whole table. Empty folds are ignored.
    """
    overall, per_fold = prevalence_table(values, fold, n_folds)
    if not overall.size:
        return 0.0, 0.0
    dev = np.abs(per_fold - overall[None, :])
    dev = dev[~np.isnan(dev).any(axis=1)]
    if not dev.size:
        return 0.0, 0.0
    pos = overall > 0
    rel = float((dev[:, pos] / overall[pos]).max()) if pos.any() else 0.0
    return float(dev.max()), rel

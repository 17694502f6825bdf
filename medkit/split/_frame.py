"""The split of one table in memory: `split_table` ties label indicators, units, assignment and certificate together.

This module imports numpy (and scipy inside functions), not torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError
from medkit.split._assign import assign_units
from medkit.split._certificate import leakage_certificate
from medkit.split._labels import LabelMatrix, label_matrix
from medkit.split._units import DuplicateMatch, Units, build_units, match_duplicates

__all__ = ["SplitResult", "parse_holdout", "split_table"]


@dataclass
class SplitResult:
    """A finished split and everything the report needs.

    Attributes:
        fold: ``(rows,)`` fold index of every row (for a holdout: 0 train, 1 val, 2 test).
        fold_names: Name of each fold (``"0"``..``"K-1"``, or ``train``/``val``/``test``).
        ratios: Target share of rows per fold.
        labels: The indicators that were balanced.
        units: The units that were kept whole.
        certificate: Leakage counts computed from ``fold`` alone (see `leakage_certificate`).
        group: The group column used, or None.
        unmatched_duplicates: Rows of the duplicates table whose image is not in the table.
        duplicates: How the duplicates table was joined to the table (None without one).
        objective: Chi-square distance to the target counts after the greedy pass and after the local search.
    """

    fold: np.ndarray
    fold_names: list[str]
    ratios: np.ndarray
    labels: LabelMatrix
    units: Units
    certificate: dict[str, int]
    group: str | None = None
    unmatched_duplicates: int = 0
    objective: dict[str, float] = field(default_factory=dict)
    duplicates: DuplicateMatch | None = None

    @property
    def ok(self) -> bool:
        """No group shared between folds, no duplicate cluster split or left unplaced, no empty fold."""
        return all(v == 0 for v in self.certificate.values())


def parse_holdout(text: str) -> np.ndarray:
    """Target shares of a holdout: ``"0.2"`` gives train/val 0.8/0.2, ``"0.2,0.1"`` train/val/test 0.7/0.2/0.1.

    Raises:
        UsageError: When the shares are not numbers in (0, 1) that sum to less than 1.
    """
    try:
        parts = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--holdout '{text}' is not a number list", hint="use e.g. --holdout 0.2 or 0.2,0.1") from None
    if not 1 <= len(parts) <= 2 or any(not 0 < p < 1 for p in parts) or sum(parts) >= 1:
        raise UsageError(
            f"--holdout '{text}' must be one or two shares in (0, 1) that sum to less than 1",
            hint="use e.g. --holdout 0.2 (train/val) or 0.2,0.1 (train/val/test)",
        )
    return np.array([1 - sum(parts), *parts])


def split_table(
    df: Any,
    *,
    folds: int = 5,
    holdout: np.ndarray | None = None,
    image: str | None = None,
    group: str | None = None,
    labels: Sequence[str] = (),
    strata: Sequence[str] = (),
    extra_labels: Any = None,
    duplicates: Any = None,
    seed: int = 42,
    passes: int = 20,
    size_weight: float = 1.0,
    partial_duplicates: bool = False,
) -> SplitResult:
    """Split a table into K folds (or a train/val/test holdout) with groups and duplicate clusters kept whole.

    Args:
        df: The table, one row per image.
        folds: Number of folds (ignored with ``holdout``).
        holdout: Target shares of train/val(/test), e.g. from `parse_holdout`.
        image: Image column (the key of duplicates and of identical rows), or None for the row number.
        group: Group column (patient, study), or None.
        labels: Label columns to balance (binary, class or grade).
        strata: Extra columns to balance, one-hot.
        extra_labels: Optional DataFrame of extra 0/1 label columns aligned with ``df`` (an expanded
            pipe-separated column).
        duplicates: Optional DataFrame with columns ``image`` and ``cluster`` (``medkit audit`` output).
        seed: Seed of the tie-breaks.
        passes: Local-search rounds.
        size_weight: Weight of equal fold sizes against even prevalence (see `assign_units`).
        partial_duplicates: The table holds only part of the audited images: images of multi-image clusters that
            match no row are not counted as ``duplicates_unplaced`` in the certificate.

    Returns:
        The split, its certificate and what the report needs.

    Raises:
        UsageError: When fewer than 2 folds are asked for.
        DataError: When the table is empty or the duplicates table lacks its columns.
    """
    ratios, names = _targets(folds, holdout)
    if not len(df):
        raise DataError("the table has no rows to split", hint="check the table is the one with one row per image")
    lm, _ = label_matrix(df, labels, strata)
    lm = _with_extra_labels(lm, extra_labels)
    images = df[image].to_numpy() if image is not None else np.arange(len(df))
    groups = df[group].to_numpy() if group is not None else None
    dm = match_duplicates(images, duplicates) if duplicates is not None else None
    clusters = dm.cluster if dm is not None else None
    units = build_units(images, groups, clusters)
    counts, sizes = _unit_totals(units, lm.values)
    unit_fold, stats = assign_units(counts, sizes, ratios, seed=seed, passes=passes, size_weight=size_weight)
    fold = unit_fold[units.of_row] if len(df) else np.zeros(0, np.int64)
    cert = leakage_certificate(fold, len(ratios), groups, clusters)
    cert["duplicates_unplaced"] = dm.unplaced if dm is not None and not partial_duplicates else 0
    unmatched = dm.unmatched if dm is not None else 0
    return SplitResult(fold, names, ratios, lm, units, cert, group, unmatched, stats, dm)


def _targets(folds: int, holdout: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Target share and name of every fold: K equal folds ``"0"``..``"K-1"``, or ``train``/``val``(/``test``)."""
    if holdout is not None:
        ratios = np.asarray(holdout, dtype=np.float64)
        return ratios, ["train", "val", "test"][: len(ratios)]
    if folds < 2:
        raise UsageError(f"--n-folds {folds}: a split needs at least 2 folds", hint="use --n-folds 5, or --holdout 0.2")
    return np.full(folds, 1.0 / folds), [str(i) for i in range(folds)]


def _with_extra_labels(lm: LabelMatrix, extra_labels: Any) -> LabelMatrix:
    """The indicators with extra 0/1 label columns (an expanded separated column) put in front."""
    if extra_labels is None or not extra_labels.shape[1]:
        return lm
    return LabelMatrix(
        np.concatenate([np.asarray(extra_labels, dtype=np.float64), lm.values], axis=1),
        [*map(str, extra_labels.columns), *lm.names],
        [*map(str, extra_labels.columns), *lm.sources],
    )


def _unit_totals(units: Units, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives per unit and indicator ``(units, labels)``, and rows per unit ``(units,)``."""
    from scipy.sparse import coo_matrix

    n = len(units.of_row)
    member = coo_matrix((np.ones(n), (units.of_row, np.arange(n))), shape=(units.count, n)).tocsr()
    return member @ values, np.asarray(member.sum(axis=1)).ravel()

"""The split report: fold sizes, prevalence per fold and the leakage certificate, as dataclasses.

`medkit split` prints it as tables or, with ``--json``, as one JSON document (`SplitReport.to_dict`).
This module imports numpy, not torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.split._certificate import max_deviation, prevalence_table
from medkit.split._frame import SplitResult

__all__ = ["FoldReport", "LabelReport", "CertificateReport", "SplitReport", "build_report"]


@dataclass(frozen=True)
class FoldReport:
    """One fold of a split.

    Attributes:
        name: ``"0"``..``"K-1"``, or ``train``/``val``/``test``.
        rows: Rows in the fold.
        units: Units (rows kept together) in the fold.
        share: Share of all rows.
        target_share: The share the fold aimed at.
    """

    name: str
    rows: int
    units: int
    share: float
    target_share: float


@dataclass(frozen=True)
class LabelReport:
    """How evenly one balanced indicator (a label, a class, a stratum value) is spread over the folds.

    Attributes:
        name: The indicator (``Effusion``, ``isup_grade=3``, ``data_provider=radboud``).
        positives: Rows where it is 1.
        overall: Its prevalence in the whole table.
        per_fold: Its prevalence in each fold (None for an empty fold).
        max_abs_dev: The largest absolute deviation of a fold's prevalence from the overall one.
    """

    name: str
    positives: int
    overall: float
    per_fold: list[float | None]
    max_abs_dev: float


@dataclass(frozen=True)
class CertificateReport:
    """Leakage counts from the final fold column (all 0 for a usable split) and what the units merged.

    Attributes:
        groups_shared: Groups found in more than one fold.
        duplicate_clusters_split: Duplicate clusters found in more than one fold.
        empty_folds: Folds without rows.
        merged_units: Units holding several groups because a duplicate cluster joined them.
        conflicting_clusters: Duplicate clusters whose images belong to several groups.
        unmatched_duplicates: Rows of the duplicates table whose image is not in the table.
        duplicates_unplaced: Images of multi-image duplicate clusters that match no row of the table (the split
            cannot keep their cluster whole; 0 with ``--partial-duplicates``).
    """

    groups_shared: int
    duplicate_clusters_split: int
    empty_folds: int
    merged_units: int
    conflicting_clusters: int
    unmatched_duplicates: int
    duplicates_unplaced: int = 0


@dataclass(frozen=True)
class SplitReport:
    """Everything `medkit split` reports about one split (printed, or as JSON with ``--json``).

    Attributes:
        table: The input table.
        output: The written fold table, or None when the split was impossible.
        mode: ``"kfold"`` or ``"holdout"``.
        rows: Rows split.
        units: Units kept whole.
        largest_unit_rows: Rows of the largest unit.
        seed: The seed of the tie-breaks.
        group_column: The group column used, or None.
        folds: One entry per fold.
        labels: One entry per balanced indicator.
        max_abs_dev: Largest absolute prevalence deviation over indicators and folds.
        max_rel_dev: Largest relative prevalence deviation (see `medkit.split.max_deviation`).
        certificate: The leakage certificate.
        ok: Whether the certificate is clean (then the output was written).
        seconds: Wall time of the whole command.
        rsna_long_converted: Whether the table was converted from the RSNA long format first.
        label_columns: The label columns balanced (expanded ``--labels-from`` labels included).
        strata: The stratum columns balanced.
        fold_column: ``"fold"`` or (holdout) ``"split"``.
    """

    table: str
    output: str | None
    mode: str
    rows: int
    units: int
    largest_unit_rows: int
    seed: int
    group_column: str | None
    folds: list[FoldReport]
    labels: list[LabelReport]
    max_abs_dev: float
    max_rel_dev: float
    certificate: CertificateReport
    ok: bool
    seconds: float = 0.0
    rsna_long_converted: bool = False
    label_columns: list[str] = field(default_factory=list)
    strata: list[str] = field(default_factory=list)
    fold_column: str = "fold"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (what ``medkit split --json`` prints)."""
        return asdict(self)


def _fold_reports(result: SplitResult) -> list[FoldReport]:
    k = len(result.fold_names)
    sizes = np.bincount(result.fold, minlength=k)
    unit_fold = np.full(result.units.count, -1)
    unit_fold[result.units.of_row] = result.fold
    unit_sizes = np.bincount(unit_fold[unit_fold >= 0], minlength=k)
    n = max(len(result.fold), 1)
    return [
        FoldReport(name, int(sizes[i]), int(unit_sizes[i]), float(sizes[i] / n), float(result.ratios[i]))
        for i, name in enumerate(result.fold_names)
    ]


def _label_reports(result: SplitResult) -> list[LabelReport]:
    overall, per_fold = prevalence_table(result.labels.values, result.fold, len(result.fold_names))
    labels = []
    for j, name in enumerate(result.labels.names):
        col = per_fold[:, j]
        dev = np.nanmax(np.abs(col - overall[j])) if np.isfinite(col).any() else 0.0
        labels.append(
            LabelReport(
                name=name,
                positives=int(round(overall[j] * len(result.fold))),
                overall=float(overall[j]),
                per_fold=[None if np.isnan(v) else float(v) for v in col],
                max_abs_dev=float(dev),
            )
        )
    return labels


def build_report(
    result: SplitResult, table: str | Path, output: str | Path | None, seed: int, **run: Any
) -> SplitReport:
    """The report of a finished split.

    Args:
        result: From `split_table`.
        table: The input table.
        output: The written fold table, or None.
        seed: The seed used.
        **run: The remaining `SplitReport` fields that describe the run (``seconds``, ``rsna_long_converted``,
            ``label_columns``, ``strata``, ``fold_column``).

    Returns:
        The report.
    """
    abs_dev, rel_dev = max_deviation(result.labels.values, result.fold, len(result.fold_names))
    certificate = CertificateReport(
        **result.certificate,
        merged_units=result.units.merged_units,
        conflicting_clusters=result.units.conflicting_clusters,
        unmatched_duplicates=result.unmatched_duplicates,
    )
    return SplitReport(
        table=str(table),
        output=str(output) if output else None,
        mode="holdout" if result.fold_names[0] == "train" else "kfold",
        rows=int(len(result.fold)),
        units=int(result.units.count),
        largest_unit_rows=int(np.bincount(result.units.of_row).max()) if len(result.fold) else 0,
        seed=seed,
        group_column=result.group,
        folds=_fold_reports(result),
        labels=_label_reports(result),
        max_abs_dev=abs_dev,
        max_rel_dev=rel_dev,
        certificate=certificate,
        ok=result.ok,
        **run,
    )

"""Findings across splits and folds: a patient in more than one, a duplicate cluster spanning them, and duplicates
that carry different labels.

Splits and folds come from the table's columns, else from train/valid/test folder names (MedMNIST archive images
are named like folders).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medkit.audit.duplicates import groups
from medkit.audit.labels import TableAudit
from medkit.audit.report import Finding

__all__ = ["Partitions", "folder_partitions", "table_partitions", "group_leakage", "cluster_findings"]


@dataclass
class Partitions:
    """How the files are divided, where the division came from, and the patients it splits.

    Attributes:
        by_name: ``{"split" | "fold": {audit name: part}}``.
        source: Where the split came from (``column 'split'``, ``folder names``), or None.
        findings: ``leakage`` of patients found in more than one part.
    """

    by_name: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str | None = None
    findings: list[Finding] = field(default_factory=list)


def folder_partitions(folder_split: dict[str, str]) -> Partitions:
    """The split read from folder names alone (no table)."""
    if not folder_split:
        return Partitions()
    return Partitions(by_name={"split": folder_split}, source="folder names")


def _column_mapping(ta: TableAudit, col: str) -> dict[str, str]:
    """``{file: part}`` from a split or fold column (a file's first row with a value wins)."""
    mapping: dict[str, str] = {}
    for k, rf in enumerate(ta.row_file):
        v = ta.table[col].iloc[k]
        if rf is not None and rf not in mapping and v is not None and v == v:  # v == v: not NaN
            mapping[rf] = str(v)
    return mapping


def table_partitions(ta: TableAudit, folder_split: dict[str, str]) -> Partitions:
    """Splits and folds from the table's columns (folder names when it has no split column), with patient leakage.

    Args:
        ta: The audited table.
        folder_split: The split each file's folder names (`medkit.audit.files.folder_splits`).

    Returns:
        The `Partitions`; its findings are the patients in more than one split or fold.
    """
    spec = ta.spec
    parts = Partitions()
    for pname, pcol in (("split", spec.split), ("fold", spec.fold)):
        if pcol is None:
            continue
        parts.by_name[pname] = _column_mapping(ta, pcol)
        if spec.group is not None:
            parts.findings += group_leakage(ta.table, spec.group, pcol, pname, ta.row_file, ta.ids)
        parts.source = parts.source or f"column '{pcol}'"
    if spec.split is None and folder_split:
        parts.by_name["split"] = folder_split
        parts.source = "folder names"
        if spec.group is not None:
            tmp = ta.table.assign(_folder_split=[folder_split.get(rf) if rf else None for rf in ta.row_file])
            parts.findings += group_leakage(tmp, spec.group, "_folder_split", "split", ta.row_file, ta.ids)
    return parts


def group_leakage(
    df: Any, group: str, part_col: str, pname: str, row_file: Sequence[str | None], ids: Sequence[str]
) -> list[Finding]:
    """One ``leakage`` finding per patient (``group`` value) whose rows lie in more than one part.

    Args:
        df: The table.
        group: The patient column.
        part_col: The split or fold column.
        pname: ``split`` or ``fold`` (for the message).
        row_file: Per row, its file (or None).
        ids: Per row, its image id (names the row when it has no file).

    Returns:
        The findings, by patient.
    """
    findings: list[Finding] = []
    sub = df[[group, part_col]].copy()
    sub["_file"] = [rf or v for rf, v in zip(row_file, ids, strict=True)]
    sub = sub[sub[group].notna() & sub[part_col].notna()]
    sub[part_col] = sub[part_col].astype(str)
    for patient, rows in sub.groupby(group, sort=True):
        parts = Counter(rows[part_col].tolist())
        if len(parts) > 1:
            findings.append(
                Finding(
                    "leakage",
                    tuple(rows["_file"].tolist()),
                    f"{group} {patient} is in "
                    f"{len(parts)} {pname}s: " + ", ".join(f"{k} ({v})" for k, v in sorted(parts.items())),
                )
            )
    return findings


def _disagree(keys: list[tuple[Any, ...]]) -> bool:
    """Whether some label column has two different known values (a missing label conflicts with nothing)."""
    if len(keys) < 2:
        return False
    for col in zip(*keys, strict=True):
        known = {v for v in col if v is not None}
        if len(known) > 1:
            return True
    return False


def _fmt_labels(values: tuple[Any, ...], cols: Sequence[str]) -> str:
    if len(cols) == 1:
        return f"{cols[0]}={values[0]}"
    on = [c for c, v in zip(cols, values, strict=True) if v not in (0, 0.0, None, False)]
    return "+".join(on) if on else "none"


def _conflict(
    cid: int, names: list[str], is_exact: bool, file_labels: dict[str, tuple[Any, ...]], label_cols: Sequence[str]
) -> Finding | None:
    labelled = {n: file_labels[n] for n in names if n in file_labels}
    if not _disagree(list(labelled.values())):
        return None
    kinds = "exact" if is_exact else "near"
    shown = "; ".join(f"{n}: {_fmt_labels(v, label_cols)}" for n, v in list(labelled.items())[:6])
    return Finding(
        "label_conflict", tuple(labelled), f"{kinds} duplicates with different labels (cluster {cid}): {shown}"
    )


def _spans(cid: int, names: list[str], partitions: dict[str, dict[str, str]]) -> list[Finding]:
    findings: list[Finding] = []
    for pname, mapping in partitions.items():
        parts = {n: mapping[n] for n in names if n in mapping}
        if len(set(parts.values())) > 1:
            by = Counter(parts.values())
            findings.append(
                Finding(
                    "leakage",
                    tuple(parts),
                    f"duplicate cluster {cid} spans {pname}s " + ", ".join(f"{k} ({v})" for k, v in sorted(by.items())),
                )
            )
    return findings


def cluster_findings(
    files: Sequence[str],
    near: np.ndarray,
    exact: np.ndarray,
    file_labels: dict[str, tuple[Any, ...]],
    label_cols: Sequence[str],
    partitions: dict[str, dict[str, str]],
) -> list[Finding]:
    """Per duplicate cluster: a ``label_conflict`` when its members disagree, ``leakage`` when it spans parts.

    Args:
        files: Audit names.
        near: Near cluster per file.
        exact: Exact cluster per file.
        file_labels: Label values per file (files without labels left out).
        label_cols: The label column names (for the message).
        partitions: ``{"split" | "fold": {file: part}}``.

    Returns:
        The findings, cluster by cluster.
    """
    findings: list[Finding] = []
    for cid, members in groups(near).items():
        if len(members) < 2:
            continue
        names = [files[m] for m in members]
        is_exact = len({int(exact[m]) for m in members}) == 1
        conflict = _conflict(cid, names, is_exact, file_labels, label_cols)
        if conflict is not None:
            findings.append(conflict)
        findings += _spans(cid, names, partitions)
    return findings

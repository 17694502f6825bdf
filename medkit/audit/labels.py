"""Label-table findings: rows without a file and files without a row, duplicate ids, missing and non-binary labels,
and per-label prevalence and pos_weight. Also which columns name the images and which hold labels.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.audit.report import Finding, Thresholds
from medkit.errors import DataError

__all__ = ["TableAudit", "audit_table", "choose_image_column", "label_columns", "binary_like"]


@dataclass
class TableAudit:
    """What the label table adds to an audit.

    Attributes:
        table: The table as read (a DataFrame).
        path: Where it was read from.
        spec: Its column roles (`medkit.data.table.TableSpec`: group, split, fold, ...).
        image_col: The column that names the images.
        label_cols: The label columns checked.
        ids: The image column's values as text, per row.
        row_file: Per row, the scanned file it names (an audit name), or None.
        findings: Row, file and label findings.
        label_stats: Per label column: kind, counts, prevalence and pos_weight.
        join_rules: Per row, the join rule that matched it to its file (`medkit.data.table.JOIN_RULES`), or None.
    """

    table: Any
    path: Path
    spec: Any
    image_col: str
    label_cols: tuple[str, ...]
    ids: list[str]
    row_file: list[str | None]
    findings: list[Finding] = field(default_factory=list)
    label_stats: list[dict[str, Any]] = field(default_factory=list)
    join_rules: list[str | None] = field(default_factory=list)

    def name(self, row: int) -> str:
        """How findings name a row: its file, else its id."""
        return self.row_file[row] or self.ids[row]

    def labels_by_file(self) -> dict[str, tuple[Any, ...]]:
        """The label values of each file (from its first row; a missing value is None)."""
        out: dict[str, tuple[Any, ...]] = {}
        for k, rf in enumerate(self.row_file):
            if rf is not None and rf not in out:
                out[rf] = _label_key(self.table, k, self.label_cols)
        return out


def choose_image_column(df: Any, root: Path, files: set[str], preferred: str) -> str:
    """The id column whose values name the scanned files best (``image`` may hold bare names, ``path`` paths).

    Args:
        df: The table.
        root: The data folder.
        files: The audit names.
        preferred: The column detected by name; kept unless another one matches more files.

    Returns:
        The column name.
    """
    import pandas as pd

    from medkit.data.table import ID_CANDIDATES

    def score(col: str) -> int:
        values = df[col].astype(str).head(200).tolist()
        return sum(1 for v in values if v in files or v.lstrip("./") in files)

    best, best_score = preferred, score(preferred)
    for col in ID_CANDIDATES:
        if col in df.columns and col != preferred and not pd.api.types.is_numeric_dtype(df[col]):
            s = score(col)
            if s > best_score:
                best, best_score = col, s
    return best


def binary_like(values: Any) -> bool:
    """Whether a column is 0/1 apart from a few junk values (90% of the numbers are 0 or 1, at most 3 others)."""
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) == 0:
        return False
    return bool(v.isin([0, 1]).mean() >= 0.9) and len(set(v.unique()) - {0, 1}) <= 3


def label_columns(df: Any, spec: Any, explicit: Sequence[str] | None, source: Any = None) -> tuple[str, ...]:
    """Label columns: explicit ones, else the spec's plus text columns that are 0/1 apart from a few junk values.

    Args:
        df: The table.
        spec: Its detected column roles.
        explicit: Columns named by the user (None or empty: detect).
        source: The table's file, named in errors.

    Returns:
        The label columns.

    Raises:
        DataError: When an explicit column is not in the table (the closest column suggested).
    """
    if explicit:
        from medkit.data.table import require_columns

        require_columns(df.columns, explicit, "label", source)
        return tuple(explicit)
    import pandas as pd

    roles = {spec.image, spec.group, spec.series, spec.order, spec.fold, spec.split}
    cols = [c for c in spec.labels if not pd.api.types.is_bool_dtype(df[c])]
    for c in df.columns:
        if c in roles or c in cols or pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            continue
        parsed = pd.to_numeric(df[c], errors="coerce")
        if parsed.notna().mean() >= 0.9 and binary_like(df[c]):
            cols.append(c)
    return tuple(str(c) for c in cols)


def _label_key(df: Any, row: int, label_cols: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for c in label_cols:
        v = df[c].iloc[row]
        out.append(None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    return tuple(out)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _join_rows(df: Any, image_col: str, files: Sequence[str]) -> Any:
    """Join the table's image column to the audit names by the join rules of `medkit.data.table.FileIndex`.

    Each rule other than an exact relative path that was needed is said once on stderr
    (``image id 7 -> 007.png (zero-padded stem)``).
    """
    from medkit.console import info
    from medkit.data.table import FileIndex, join_ids

    join = join_ids(df, image_col, FileIndex(files))
    for line in join.notes(files):
        info(line)
    return join


def _file_findings(
    ta: TableAudit, root: Path, files: Sequence[str], ambiguous: dict[int, tuple[str, ...]]
) -> list[Finding]:
    """Rows naming no file or two, files named by no row, and images named by more than one row."""
    from medkit._names import escape_name

    findings: list[Finding] = []
    for k, (rid, rf) in enumerate(zip(ta.ids, ta.row_file, strict=True)):
        if k in ambiguous:
            hits = ambiguous[k]
            findings.append(
                Finding(
                    "ambiguous_file",
                    (rid, *hits[:2]),
                    f"row '{rid}' of column '{ta.image_col}' (table row {k + 2}) matches {len(hits)} files by the "
                    f"same rule: {escape_name(hits[0])} and {escape_name(hits[1])}; write the relative path",
                )
            )
        elif rf is None:
            findings.append(
                Finding(
                    "missing_file",
                    (rid,),
                    f"row '{rid}' of column '{ta.image_col}' (table row {k + 2}) matches no file under {root}",
                )
            )
    listed = {rf for rf in ta.row_file if rf is not None}
    for f in files:
        if f not in listed:
            findings.append(Finding("unlabeled_file", (f,), "no row of the label table names this file"))
    by_file: dict[str, list[int]] = defaultdict(list)
    for k, rf in enumerate(ta.row_file):
        by_file[rf if rf is not None else f"id:{ta.ids[k]}"].append(k)
    for key, rows in by_file.items():
        if len(rows) > 1:
            name = key[3:] if key.startswith("id:") else key
            labels = {_label_key(ta.table, r, ta.label_cols) for r in rows}
            where = f"{len(rows)} rows (table rows {', '.join(str(r + 2) for r in rows[:10])}) name this image"
            if len(labels) > 1:
                shown = " / ".join(",".join(_show(v) for v in lab) for lab in list(labels)[:3])
                findings.append(
                    Finding(
                        "duplicate_id_conflict",
                        (name,),
                        f"{where} with different labels ({','.join(ta.label_cols)}: {shown})",
                    )
                )
            else:
                findings.append(Finding("duplicate_id", (name,), f"{where}, with the same labels"))
    return findings


def _binary_label(ta: TableAudit, col: str, values: Any, junk: Any, th: Thresholds) -> dict[str, Any]:
    """Check a 0/1 column: values other than 0/1, and imbalance; returns its statistics."""
    df = ta.table
    bad = junk | (values.notna() & ~values.isin([0, 1]))
    for k in np.flatnonzero(bad.to_numpy()).tolist():
        ta.findings.append(
            Finding(
                "non_binary_label",
                (ta.name(k),),
                f"'{col}' = {_show(df[col].iloc[k])} in a 0/1 column (table row {k + 2})",
            )
        )
    v = values[values.isin([0, 1])]
    pos, neg = int((v == 1).sum()), int((v == 0).sum())
    prevalence = pos / (pos + neg) if pos + neg else math.nan
    pos_weight = neg / pos if pos else None
    if pos + neg and (pos == 0 or neg == 0 or (pos_weight or 0) > th.imbalance or neg / max(pos, 1) < 1 / th.imbalance):
        ta.findings.append(
            Finding(
                "label_imbalance",
                (col,),
                f"'{col}': {pos} positives, {neg} negatives, prevalence {100 * prevalence:.2f}%"
                + (f", pos_weight {pos_weight:.1f}" if pos_weight else ""),
            )
        )
    return {
        "label": col,
        "kind": "binary",
        "n": pos + neg,
        "positives": pos,
        "negatives": neg,
        "prevalence": prevalence,
        "pos_weight": pos_weight,
    }


def _other_label(ta: TableAudit, col: str, values: Any, junk: Any) -> dict[str, Any]:
    """Check a multiclass or continuous column: values that are not numbers; returns its statistics."""
    df = ta.table
    for k in np.flatnonzero(junk.to_numpy()).tolist():
        ta.findings.append(
            Finding(
                "missing_label",
                (ta.name(k),),
                f"'{col}' = {_show(df[col].iloc[k])} is not a number (table row {k + 2})",
            )
        )
    v = values.dropna()
    counts = v.value_counts().sort_index()
    return {
        "label": col,
        "kind": "multiclass" if len(counts) <= 20 else "continuous",
        "n": int(len(v)),
        "classes": {str(c): int(n) for c, n in counts.items()} if len(counts) <= 20 else None,
    }


def _check_label(ta: TableAudit, col: str, th: Thresholds) -> None:
    """Findings and statistics of one label column, added to ``ta``."""
    import pandas as pd

    df = ta.table
    values = pd.to_numeric(df[col], errors="coerce")
    raw_missing = df[col].isna()
    junk = values.isna() & ~raw_missing
    for k in np.flatnonzero(raw_missing.to_numpy()).tolist():
        ta.findings.append(Finding("missing_label", (ta.name(k),), f"'{col}' is empty/NaN (table row {k + 2})"))
    if binary_like(df[col]):
        ta.label_stats.append(_binary_label(ta, col, values, junk, th))
    else:
        ta.label_stats.append(_other_label(ta, col, values, junk))


def audit_table(
    labels: str | os.PathLike[str],
    root: Path,
    files: Sequence[str],
    image_col: str | None = None,
    group: str | None = None,
    split: str | None = None,
    label_cols: Sequence[str] | None = None,
    thresholds: Thresholds | None = None,
) -> TableAudit:
    """Read the label table, match its rows to the listed files and check its rows and label columns.

    Needs the file names only (no pixels), so `run_audit` calls it before the scan: a mistyped column fails at
    once. Rows are matched to files by the join rules of `medkit.data.table.FileIndex` (relative path, name, stem,
    zero-padded stem, stem with another image suffix).

    Args:
        labels: The table (CSV/TSV/parquet), one row per image.
        root: The data folder (image paths in the table are relative to it).
        files: The audit names of the listed files.
        image_col: Image path/id column (None: the id column whose values match the files best).
        group: Patient column (None: detected).
        split: Split column (None: detected).
        label_cols: Label columns (None: detected, see `label_columns`).
        thresholds: Finding thresholds.

    Returns:
        The `TableAudit`.

    Raises:
        DataError: When the table cannot be read or a named column is not in it.
    """
    from medkit.data.table import detect_spec, id_text, load_table

    th = thresholds or Thresholds()
    df = load_table(labels)
    try:
        spec = detect_spec(df, image=image_col, group=group, split=split)
    except DataError as exc:
        raise DataError(f"{labels}: {exc.message}", hint=exc.hint) from None
    cols = label_columns(df, spec, label_cols, labels)
    col = image_col or choose_image_column(df, root, set(files), spec.image)
    join = _join_rows(df, col, files)
    ta = TableAudit(
        table=df,
        path=Path(labels),
        spec=spec,
        image_col=col,
        label_cols=cols,
        ids=[id_text(v) or "" for v in df[col].tolist()],
        row_file=[files[i] if i is not None else None for i in join.index],
        join_rules=join.rules,
    )
    ta.findings += _file_findings(ta, root, files, join.ambiguous)
    for c in cols:
        _check_label(ta, c, th)
    return ta

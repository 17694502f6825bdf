"""`make_split`: a dataset table file in, a fold table file and a report out (what `medkit split` runs).

The steps around `split_table`: read the table (converting the RSNA long format), work out the group column and
the columns to balance, read the duplicates table, split, write the table with its fold column when the
certificate is clean, and build the report. Notes and warnings go to stderr through `medkit.console`.
This module imports numpy (and pandas inside functions), not torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.console import info, warn
from medkit.errors import DataError
from medkit.split._frame import SplitResult, parse_holdout, split_table
from medkit.split._labels import MAX_CLASSES, expand_separated, joint_parts, label_matrix
from medkit.split._report import SplitReport, build_report

__all__ = [
    "SplitOptions",
    "LabelChoice",
    "SplitOutcome",
    "make_split",
    "choose_labels",
    "read_duplicates",
    "default_output",
]

_TABLE_SUFFIXES = (".csv.gz", ".tsv.gz", ".csv", ".tsv", ".parquet", ".pq")


@dataclass(frozen=True)
class SplitOptions:
    """How `make_split` splits a table; one field per `medkit split` option.

    Attributes:
        n_folds: Number of folds (ignored with ``holdout``).
        holdout: Train/val(/test) shares instead of folds, ``"0.2"`` or ``"0.2,0.1"`` (see `parse_holdout`).
        group: Group column kept in one fold; None: the detected patient column; ``"none"``: no grouping.
        label_cols: Label columns to balance; ``"auto"``: the detected numeric label columns; None: ``"auto"``
            unless ``labels_from`` is given.
        labels_from: Column of separated labels to expand into multi-hot labels (NIH ``Finding Labels``).
        sep: Separator of ``labels_from``.
        strata: Extra columns to balance, one-hot; ``a*b`` balances every combination of ``a`` and ``b``.
        duplicates: ``duplicates.csv`` from ``medkit audit`` (``image``, ``cluster``): clusters stay whole.
        image_col: Image column (default: detected).
        rsna_long: Convert the RSNA long format first; None: when the table looks like it.
        passes: Local-search rounds after the greedy pass.
        size_weight: Weight of equal fold sizes against even label prevalence.
        seed: Seed of the tie-breaks.
        out: Output table; None: ``<table stem>.folds.csv`` (``.split.csv`` with a holdout) next to the table.
        partial_duplicates: The table holds only part of the images of ``duplicates``: images of multi-image
            clusters that match no row are warned about instead of making the split fail.
    """

    n_folds: int = 5
    holdout: str | None = None
    group: str | None = None
    label_cols: Sequence[str] | str | None = None
    labels_from: str | None = None
    sep: str = "|"
    strata: Sequence[str] = ()
    duplicates: Path | None = None
    image_col: str | None = None
    rsna_long: bool | None = None
    passes: int = 20
    size_weight: float = 1.0
    seed: int = 42
    out: Path | None = None
    partial_duplicates: bool = False


@dataclass
class LabelChoice:
    """The columns a split balances.

    Attributes:
        columns: Label columns of the table.
        strata: Stratum columns (``a*b`` for a joint stratum).
        extra: Multi-hot columns expanded from ``labels_from`` (a DataFrame aligned with the table), or None.
        skipped: Detected numeric columns left out because they have more than `MAX_CLASSES` values.
        constant: Detected label columns left out because they hold one value (all 0: nothing to balance).
    """

    columns: list[str]
    strata: list[str]
    extra: Any = None
    skipped: list[str] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every label column balanced: the table's, then the expanded ones."""
        return [*self.columns, *([] if self.extra is None else list(map(str, self.extra.columns)))]


@dataclass
class SplitOutcome:
    """What `make_split` did.

    Attributes:
        result: The split itself (fold of every row, units, indicators, certificate).
        report: The report `medkit split` prints.
        output: The written table, or None when the split is impossible (the certificate is not clean).
    """

    result: SplitResult
    report: SplitReport
    output: Path | None

    @property
    def ok(self) -> bool:
        """Whether the certificate is clean and the table was written."""
        return self.result.ok


def default_output(table: str | os.PathLike[str], holdout: bool) -> Path:
    """``<stem>.folds.csv`` (``<stem>.split.csv`` for a holdout) next to the table, the table's suffixes dropped."""
    table = Path(table)
    name = table.name
    for suffix in _TABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return table.with_name(f"{name}.{'split' if holdout else 'folds'}.csv")


def _read_table(table: Path, rsna_long: bool | None) -> tuple[Any, bool]:
    """The table, converted from the RSNA long format when asked (or, by default, when it looks like it)."""
    from medkit.competitions.rsna import RSNA_SUBTYPES, from_rsna_long, looks_like_rsna_long
    from medkit.data.table import load_table

    df = load_table(table)
    converted = False
    if rsna_long or (rsna_long is None and looks_like_rsna_long(df)):
        df = from_rsna_long(df)
        converted = True
        info(f"{table}: RSNA long format converted to {len(df)} images x {len(RSNA_SUBTYPES)} subtypes")
    if not len(df):
        raise DataError(f"{table}: the table has no rows to split", hint="pass the table with one row per image")
    return df, converted


def _group_column(spec: Any, group: str | None) -> str | None:
    """The group column in force (``"none"`` switches grouping off), said on stderr."""
    group_col = None if group == "none" else spec.group
    if group is None and group_col:
        info(f"group column: '{group_col}' (detected; --group none to switch off)")
    elif group_col is None and group != "none":
        warn("no group column: each image is its own unit (pass --group COL when a patient has several images)")
    return group_col


def _auto_labels(
    df: Any, spec: Any, group_col: str | None, strata: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """The detected numeric label columns, minus the group, the strata, the fold/split columns and constants.

    Returns:
        The columns to balance, those skipped for having too many values, and the constant ones (each warned).
    """
    used = {group_col, spec.fold, spec.split, *(part for c in strata for part in joint_parts(c))}
    # A constant column (all 0, all True) has nothing to balance.
    candidates = [c for c in spec.labels if c not in used and c != "fold"]
    constant = [c for c in candidates if df[c].nunique(dropna=False) <= 1]
    for c in constant:
        value = df[c].iloc[0]
        warn(
            f"label column '{c}' is constant ({value} in all {len(df)} rows): nothing to balance; "
            "a label with no positives often means rows were lost upstream (check the table against the images)"
        )
    candidates = [c for c in candidates if c not in constant]
    _, skipped = label_matrix(df, candidates, strict=False)
    if skipped:
        warn(f"not balanced (more than {MAX_CLASSES} values, not a label): {', '.join(skipped)}")
    return [c for c in candidates if c not in skipped], skipped, constant


def _explicit_labels(label_cols: Sequence[str] | str | None) -> list[str]:
    if label_cols is None or label_cols == "auto":
        return []
    if isinstance(label_cols, str):
        return [c.strip() for c in label_cols.split(",") if c.strip()]
    return list(label_cols)


def choose_labels(df: Any, spec: Any, group_col: str | None, options: SplitOptions, table: Any = None) -> LabelChoice:
    """The label, stratum and expanded columns to balance, checked against the table.

    Args:
        df: The table.
        spec: Its detected column roles (`medkit.data.table.detect_spec`).
        group_col: The group column in force (never balanced).
        options: ``label_cols``, ``labels_from``, ``sep`` and ``strata`` are read.
        table: The file the table came from, named in errors.

    Returns:
        The columns to balance.

    Raises:
        DataError: When a named column is missing (the message suggests the closest column).
    """
    from medkit.data.table import require_columns

    auto = options.label_cols == "auto" or (options.label_cols is None and not options.labels_from)
    explicit = _explicit_labels(options.label_cols)
    strata = list(options.strata)
    require_columns(df.columns, explicit, "label", table)
    require_columns(df.columns, [part for c in strata for part in joint_parts(c)], "stratum", table)
    choice = LabelChoice(explicit, strata)
    if options.labels_from:
        require_columns(df.columns, [options.labels_from], "--labels-from", table)
        choice.extra = expand_separated(df[options.labels_from], options.sep)
        names = ", ".join(map(str, choice.extra.columns))
        info(f"'{options.labels_from}' expanded into {choice.extra.shape[1]} labels: {names}")
    if not explicit and auto:
        choice.columns, choice.skipped, choice.constant = _auto_labels(df, spec, group_col, strata)
    if not choice.columns and choice.extra is None and not strata:
        what = "no label column left to balance" if choice.constant else "no label columns found"
        warn(f"{what}: only fold sizes are balanced (name them with --label-cols or --labels-from)")
    return choice


def read_duplicates(path: str | os.PathLike[str]) -> Any:
    """The duplicates table of ``medkit audit`` (columns ``image`` and ``cluster``).

    Raises:
        DataError: When the file cannot be read or lacks a column.
    """
    from medkit.data.table import load_table

    dup = load_table(path)
    for col in ("image", "cluster"):
        if col not in dup.columns:
            raise DataError(
                f"{path}: no '{col}' column (columns: {', '.join(map(str, dup.columns))})",
                hint="pass the duplicates.csv written by `medkit audit --out`, with columns image and cluster",
            )
    return dup


def _warn_merges(result: SplitResult, options: SplitOptions, table: Path, group_col: str | None) -> None:
    dm = result.duplicates
    if dm is not None:
        for line in dm.notes:
            info(f"{options.duplicates}: {line}")
        if dm.unplaced and not options.partial_duplicates:
            warn(
                f"{options.duplicates}: {dm.unplaced} image(s) of duplicate clusters match no row of {table} "
                f"(e.g. {', '.join(dm.unplaced_examples)}): their clusters cannot be kept whole; nothing is written "
                "(pass the table the audit saw, or --partial-duplicates when the table holds only part of the images)"
            )
        elif result.unmatched_duplicates:
            warn(
                f"{options.duplicates}: {result.unmatched_duplicates} rows name an image that is not in {table}; "
                "ignored"
            )
    if result.units.merged_units:
        warn(
            f"{result.units.merged_units} units merge several '{group_col}' groups because "
            f"{result.units.conflicting_clusters} duplicate clusters span groups; each unit stays in one fold"
        )


def _warn_conflicts(df: Any, spec: Any, choice: LabelChoice, table: Path) -> None:
    """Warn about ids listed more than once with different labels (kept in one fold, but trained on twice)."""
    from medkit.data.table import describe_conflicts, duplicate_id_conflicts

    cols = [c for c in choice.columns if c in df.columns]
    conflicts = duplicate_id_conflicts(df, spec.image, cols)
    if conflicts:
        warn(
            f"{table}: {describe_conflicts(conflicts, df, cols)}; they stay in one fold, but a model trained on "
            "the table sees both labels (`medkit audit --labels` lists them as duplicate_id_conflict)"
        )


def _certify_written(
    target: Path, fold_col: str, result: SplitResult, image: str | None, duplicates: Any, options: SplitOptions
) -> dict[str, int]:
    """The leakage certificate recomputed from the written file: its fold column, groups and duplicate clusters."""
    import pandas as pd

    from medkit.split._certificate import leakage_certificate
    from medkit.split._units import match_duplicates

    # Read back as text (parquet keeps its types): ids and groups are compared as they were written.
    if target.name.lower().endswith((".parquet", ".pq")):
        written = pd.read_parquet(target)
    else:
        written = pd.read_csv(target, dtype=str)  # save_table writes CSV whatever the suffix
    names = {n: i for i, n in enumerate(result.fold_names)}
    fold = np.array([names[str(v)] for v in written[fold_col].tolist()], dtype=np.int64)
    groups = written[result.group].to_numpy() if result.group else None
    clusters = None
    unplaced = 0
    if duplicates is not None:
        images = written[image].to_numpy() if image is not None else np.arange(len(written))
        dm = match_duplicates(images, duplicates)
        clusters, unplaced = dm.cluster, (0 if options.partial_duplicates else dm.unplaced)
    cert = leakage_certificate(fold, len(result.fold_names), groups, clusters)
    cert["duplicates_unplaced"] = unplaced
    return cert


def _write_folds(df: Any, result: SplitResult, target: Path, fold_col: str) -> Path:
    """A copy of the table with the fold column (fold numbers, or train/val/test names for a holdout)."""
    from medkit.data.table import save_table

    outdf = df.copy()
    names = np.asarray(result.fold_names, dtype=object)
    outdf[fold_col] = names[result.fold] if fold_col == "split" else result.fold
    return save_table(outdf, target)


def make_split(table: str | os.PathLike[str], options: SplitOptions | None = None) -> SplitOutcome:
    """Split a dataset table file into leak-free, stratified folds (or a holdout) and write the fold table.

    The input is never modified; nothing is written when the split is impossible (a fold would be empty).

    Args:
        table: Dataset table (CSV, CSV.gz, TSV, parquet), one row per image (or the RSNA long format).
        options: How to split; defaults to `SplitOptions()`.

    Returns:
        The split, its report and the written path (None when the certificate is not clean).

    Raises:
        DataError: When the table, a named column or the duplicates table is missing or unreadable.
        UsageError: When ``holdout`` does not parse or a column has too many values to balance.
    """
    from medkit.data.table import detect_spec

    start = time.perf_counter()
    options = options or SplitOptions()
    from medkit._io import refuse_overwrite_inputs

    table = Path(table)
    target = options.out or default_output(table, options.holdout is not None)
    refuse_overwrite_inputs([target], [table, options.duplicates])
    df, converted = _read_table(table, options.rsna_long)
    ratios = parse_holdout(options.holdout) if options.holdout else None
    group_arg = None if options.group in (None, "none", "") else options.group
    try:
        spec = detect_spec(df, image=options.image_col, group=group_arg, labels="auto")
    except DataError as exc:
        raise DataError(f"{table}: {exc.message}", hint=exc.hint) from None
    group_col = _group_column(spec, options.group)
    choice = choose_labels(df, spec, group_col, options, table)
    duplicates = read_duplicates(options.duplicates) if options.duplicates is not None else None
    _warn_conflicts(df, spec, choice, table)
    fold_col = "split" if ratios is not None else "fold"
    if fold_col in df.columns:
        warn(f"{table}: the existing '{fold_col}' column is replaced in the output")
    result = split_table(
        df,
        folds=options.n_folds,
        holdout=ratios,
        image=spec.image,
        group=group_col,
        labels=choice.columns,
        strata=choice.strata,
        extra_labels=choice.extra,
        duplicates=duplicates,
        seed=options.seed,
        passes=options.passes,
        size_weight=options.size_weight,
        partial_duplicates=options.partial_duplicates,
    )
    _warn_merges(result, options, table, group_col)
    written = None
    if result.ok:
        written = _write_folds(df, result, target, fold_col)
        result.certificate = _certify_written(written, fold_col, result, spec.image, duplicates, options)
        if not result.ok:  # what was written is not what was planned: never leave it for training
            written.unlink()
            written = None
    report = build_report(
        result,
        table,
        written,
        options.seed,
        seconds=round(time.perf_counter() - start, 3),
        rsna_long_converted=converted,
        label_columns=choice.names,
        strata=choice.strata,
        fold_column=fold_col,
    )
    return SplitOutcome(result, report, written)

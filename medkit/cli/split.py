"""`medkit split TABLE`: patient-grouped, multilabel-stratified, duplicate-aware folds with a leakage certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.cli._options import JsonOpt, OutOpt, SeedOpt
from medkit.console import info, out, print_json, warn
from medkit.errors import DataError

__all__ = ["split"]


def _default_out(table: Path, holdout: bool) -> Path:
    name = table.name
    for suffix in (".csv.gz", ".tsv.gz", ".csv", ".tsv", ".parquet", ".pq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return table.with_name(f"{name}.{'split' if holdout else 'folds'}.csv")


def _columns(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def _need(df: Any, columns: list[str], role: str, table: Path) -> None:
    cols = [str(c) for c in df.columns]
    for c in columns:
        if c not in cols:
            close = [x for x in cols if x.lower() == c.lower()]
            hint = f"did you mean '{close[0]}'?" if close else f"columns are: {', '.join(cols[:20])}"
            raise DataError(f"{table}: {role} column '{c}' is not in the table", hint=hint)


def _report(result: Any, out_path: Path | None, table: Path, info_extra: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from medkit.split import max_deviation, prevalence_table

    k = len(result.fold_names)
    sizes = np.bincount(result.fold, minlength=k)
    unit_fold = np.full(result.units.count, -1)
    unit_fold[result.units.of_row] = result.fold
    unit_sizes = np.bincount(unit_fold[unit_fold >= 0], minlength=k)
    overall, per_fold = prevalence_table(result.labels.values, result.fold, k)
    abs_dev, rel_dev = max_deviation(result.labels.values, result.fold, k)
    labels = []
    for j, name in enumerate(result.labels.names):
        col = per_fold[:, j]
        dev = np.nanmax(np.abs(col - overall[j])) if np.isfinite(col).any() else 0.0
        labels.append(
            {
                "name": name,
                "positives": int(round(overall[j] * len(result.fold))),
                "overall": float(overall[j]),
                "per_fold": [None if np.isnan(v) else float(v) for v in col],
                "max_abs_dev": float(dev),
            }
        )
    n = max(len(result.fold), 1)
    return {
        "table": str(table),
        "output": str(out_path) if out_path else None,
        "mode": "holdout" if result.fold_names[0] == "train" else "kfold",
        "rows": int(len(result.fold)),
        "units": int(result.units.count),
        "largest_unit_rows": int(np.bincount(result.units.of_row).max()) if len(result.fold) else 0,
        "seed": info_extra["seed"],
        "group_column": result.group,
        "folds": [
            {
                "name": name,
                "rows": int(sizes[i]),
                "units": int(unit_sizes[i]),
                "share": float(sizes[i] / n),
                "target_share": float(result.ratios[i]),
            }
            for i, name in enumerate(result.fold_names)
        ],
        "labels": labels,
        "max_abs_dev": abs_dev,
        "max_rel_dev": rel_dev,
        "certificate": {
            **result.certificate,
            "merged_units": result.units.merged_units,
            "conflicting_clusters": result.units.conflicting_clusters,
            "unmatched_duplicates": result.unmatched_duplicates,
        },
        "ok": result.ok,
        **{k: v for k, v in info_extra.items() if k != "seed"},
    }


def _print_report(rep: dict[str, Any]) -> None:
    from rich.table import Table

    names = [f["name"] for f in rep["folds"]]
    sizes = Table(
        title=f"{rep['rows']} rows, {rep['units']} units (largest {rep['largest_unit_rows']} rows), seed {rep['seed']}"
    )
    for col in ("fold", "rows", "units", "share", "target"):
        sizes.add_column(col, justify="right")
    for f in rep["folds"]:
        sizes.add_row(f["name"], str(f["rows"]), str(f["units"]), f"{f['share']:.4f}", f"{f['target_share']:.4f}")
    out.print(sizes)
    if rep["labels"]:
        prev = Table(title="prevalence per fold")
        prev.add_column("label", no_wrap=True)
        prev.add_column("pos", justify="right")
        prev.add_column("all", justify="right")
        for name in names:
            prev.add_column(name, justify="right")
        prev.add_column("max |dev|", justify="right")
        for lab in rep["labels"]:
            cells = ["-" if v is None else f"{v:.4f}" for v in lab["per_fold"]]
            prev.add_row(
                lab["name"], str(lab["positives"]), f"{lab['overall']:.4f}", *cells, f"{lab['max_abs_dev']:.5f}"
            )
        out.print(prev)
        out.print(f"largest prevalence deviation: {rep['max_abs_dev']:.5f} absolute, {rep['max_rel_dev']:.2%} relative")
    cert = rep["certificate"]

    def mark(value: int) -> str:
        return "[green]0[/green]" if value == 0 else f"[bold red]{value}[/bold red]"

    out.print("leakage certificate:")
    group = rep["group_column"] or "none (each image is its own unit)"
    out.print(f"  groups shared between folds: {mark(cert['groups_shared'])}   (group column: {group})")
    out.print(f"  duplicate clusters split:    {mark(cert['duplicate_clusters_split'])}")
    if cert["empty_folds"]:
        out.print(f"  empty folds:                 {mark(cert['empty_folds'])}   (more folds than units)")
    out.print(
        f"  merged units: {cert['merged_units']} (duplicate clusters spanning groups: {cert['conflicting_clusters']})"
    )
    if rep["output"]:
        out.print(f"wrote {rep['output']}")
    else:
        out.print("[bold red]no file written[/bold red]: the split is impossible as asked")


def split(
    table: Annotated[Path, typer.Argument(help="Dataset table (CSV, CSV.gz, TSV, parquet), one row per image.")],
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds.", min=2)] = 5,
    holdout: Annotated[
        str | None,
        typer.Option("--holdout", help="Train/val(/test) holdout instead of folds: '0.2' or '0.2,0.1' (val,test)."),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="Group column kept in one fold (default: detected patient column; 'none')."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Label columns to balance, comma-separated, or 'auto' (numeric columns)."),
    ] = None,
    labels_from: Annotated[
        str | None, typer.Option("--labels-from", help="Column of separated labels to expand (NIH 'Finding Labels').")
    ] = None,
    sep: Annotated[str, typer.Option("--sep", help="Separator of --labels-from.")] = "|",
    strata: Annotated[
        str | None,
        typer.Option(
            "--strata",
            help="Extra columns to balance, comma-separated (data_provider); a*b balances every combination.",
        ),
    ] = None,
    duplicates: Annotated[
        Path | None,
        typer.Option("--duplicates", help="duplicates.csv from `medkit audit` (image, cluster): clusters stay whole."),
    ] = None,
    image_col: Annotated[str | None, typer.Option("--image-col", help="Image column (default: detected).")] = None,
    rsna_long: Annotated[
        bool | None,
        typer.Option("--rsna-long/--no-rsna-long", help="Convert the RSNA long format first (default: detect)."),
    ] = None,
    passes: Annotated[int, typer.Option("--passes", help="Local-search rounds after the greedy pass.", min=0)] = 20,
    size_weight: Annotated[
        float,
        typer.Option(
            "--size-weight",
            help="Weight of equal fold sizes against even label prevalence (below 1: rare labels evener, sizes less).",
            min=0.0,
        ),
    ] = 1.0,
    seed: SeedOpt = 42,
    out_path: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Split a table into patient-grouped, label-stratified, duplicate-aware folds with a leakage certificate."""
    import time

    import numpy as np

    from medkit.split import expand_separated, joint_parts, looks_like_rsna_long, parse_holdout, split_table
    from medkit.data.table import detect_spec, from_rsna_long, load_table, save_table

    start = time.perf_counter()
    df = load_table(table)
    converted = False
    if rsna_long or (rsna_long is None and looks_like_rsna_long(df)):
        df = from_rsna_long(df)
        converted = True
        info(f"{table}: RSNA long format converted to {len(df)} images x 6 subtypes")
    if not len(df):
        raise DataError(f"{table}: the table has no rows to split", hint="pass the table with one row per image")
    ratios = parse_holdout(holdout) if holdout else None
    group_arg = None if group in (None, "none", "") else group
    try:
        spec = detect_spec(df, image=image_col, group=group_arg, labels="auto")
    except DataError as exc:
        raise DataError(f"{table}: {exc.message}", hint=exc.hint) from None
    group_col = None if group == "none" else spec.group
    if group is None and group_col:
        info(f"group column: '{group_col}' (detected; --group none to switch off)")
    elif group_col is None:
        warn("no group column: each image is its own unit (pass --group COL when a patient has several images)")

    label_cols = _columns(labels) if labels and labels != "auto" else []
    strata_cols = _columns(strata)
    _need(df, label_cols, "label", table)
    _need(df, [part for c in strata_cols for part in joint_parts(c)], "stratum", table)
    extra = None
    if labels_from:
        _need(df, [labels_from], "--labels-from", table)
        extra = expand_separated(df[labels_from], sep)
        info(f"'{labels_from}' expanded into {extra.shape[1]} labels: {', '.join(map(str, extra.columns))}")
    skipped: list[str] = []
    if not label_cols and (labels == "auto" or (labels is None and not labels_from)):
        # Auto labels: the detected numeric label columns, minus anything used as group, strata or the split itself.
        from medkit.split import label_matrix

        used = {group_col, spec.fold, spec.split, *(part for c in strata_cols for part in joint_parts(c))}
        # A constant column (all 0, all True) has nothing to balance.
        candidates = [c for c in spec.labels if c not in used and c != "fold" and df[c].nunique(dropna=False) > 1]
        _, skipped = label_matrix(df, candidates, strict=False)
        label_cols = [c for c in candidates if c not in skipped]
        if skipped:
            warn(f"not balanced (more than 50 values, not a label): {', '.join(skipped)}")
    if not label_cols and extra is None and not strata_cols:
        warn("no label columns found: only fold sizes are balanced (name them with --labels or --labels-from)")

    dup_df = None
    if duplicates is not None:
        dup_df = load_table(duplicates)
        for col in ("image", "cluster"):
            if col not in dup_df.columns:
                raise DataError(
                    f"{duplicates}: no '{col}' column (columns: {', '.join(map(str, dup_df.columns))})",
                    hint="pass the duplicates.csv written by `medkit audit --out`, with columns image and cluster",
                )
    fold_col = "split" if ratios is not None else "fold"
    if fold_col in df.columns:
        warn(f"{table}: the existing '{fold_col}' column is replaced in the output")

    result = split_table(
        df,
        folds=folds,
        holdout=ratios,
        image=spec.image,
        group=group_col,
        labels=label_cols,
        strata=strata_cols,
        extra_labels=extra,
        duplicates=dup_df,
        seed=seed,
        passes=passes,
        size_weight=size_weight,
    )
    if result.unmatched_duplicates:
        warn(f"{duplicates}: {result.unmatched_duplicates} rows name an image that is not in {table}; ignored")
    if result.units.merged_units:
        warn(
            f"{result.units.merged_units} units merge several '{group_col}' groups because "
            f"{result.units.conflicting_clusters} duplicate clusters span groups; each unit stays in one fold"
        )

    target = out_path or _default_out(table, ratios is not None)
    written: Path | None = None
    if result.ok:
        outdf = df.copy()
        names = np.asarray(result.fold_names, dtype=object)
        outdf[fold_col] = names[result.fold] if ratios is not None else result.fold
        written = save_table(outdf, target)
    rep = _report(
        result,
        written,
        table,
        {
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 3),
            "rsna_long_converted": converted,
            "label_columns": [*label_cols, *([] if extra is None else list(map(str, extra.columns)))],
            "strata": strata_cols,
            "fold_column": fold_col,
        },
    )
    if json_out:
        print_json(rep)
    else:
        _print_report(rep)
    if not result.ok:
        raise typer.Exit(1)

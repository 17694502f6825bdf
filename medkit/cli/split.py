"""`medkit split TABLE`: patient-grouped, multilabel-stratified, duplicate-aware folds with a leakage certificate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medkit.cli._options import ImageColOpt, JsonOpt, LabelColsOpt, OutOpt, SeedOpt, split_columns
from medkit.console import out, print_json

if TYPE_CHECKING:
    from medkit.split import SplitReport

__all__ = ["split"]


def _print_sizes(rep: SplitReport) -> None:
    from rich.table import Table

    title = f"{rep.rows} rows, {rep.units} units (largest {rep.largest_unit_rows} rows), seed {rep.seed}"
    sizes = Table(title=title)
    for col in ("fold", "rows", "units", "share", "target"):
        sizes.add_column(col, justify="right")
    for f in rep.folds:
        sizes.add_row(f.name, str(f.rows), str(f.units), f"{f.share:.4f}", f"{f.target_share:.4f}")
    out.print(sizes)


def _print_prevalence(rep: SplitReport) -> None:
    from rich.table import Table

    prev = Table(title="prevalence per fold")
    prev.add_column("label", no_wrap=True)
    prev.add_column("pos", justify="right")
    prev.add_column("all", justify="right")
    for f in rep.folds:
        prev.add_column(f.name, justify="right")
    prev.add_column("max |dev|", justify="right")
    for lab in rep.labels:
        cells = ["-" if v is None else f"{v:.4f}" for v in lab.per_fold]
        prev.add_row(lab.name, str(lab.positives), f"{lab.overall:.4f}", *cells, f"{lab.max_abs_dev:.5f}")
    out.print(prev)
    out.print(f"largest prevalence deviation: {rep.max_abs_dev:.5f} absolute, {rep.max_rel_dev:.2%} relative")


def _print_certificate(rep: SplitReport) -> None:
    cert = rep.certificate

    def mark(value: int) -> str:
        return "[green]0[/green]" if value == 0 else f"[bold red]{value}[/bold red]"

    out.print("leakage certificate:")
    group = rep.group_column or "none (each image is its own unit)"
    out.print(f"  groups shared between folds: {mark(cert.groups_shared)}   (group column: {group})")
    out.print(f"  duplicate clusters split:    {mark(cert.duplicate_clusters_split)}")
    if cert.duplicates_unplaced:
        out.print(f"  duplicates not in the table: {mark(cert.duplicates_unplaced)}   (see the warning above)")
    if cert.empty_folds:
        out.print(f"  empty folds:                 {mark(cert.empty_folds)}   (more folds than units)")
    out.print(f"  merged units: {cert.merged_units} (duplicate clusters spanning groups: {cert.conflicting_clusters})")


def _print_report(rep: SplitReport) -> None:
    _print_sizes(rep)
    if rep.labels:
        _print_prevalence(rep)
    _print_certificate(rep)
    if rep.output:
        out.print(f"wrote {rep.output}")
    else:
        out.print("[bold red]no file written[/bold red]: the split is impossible as asked")


# Options only `medkit split` has; the shared ones (--label-cols, --image-col, --seed, --out, --json) come from
# _options, so --labels and --folds keep their meaning there: tables, not columns and a count.
TableArg = Annotated[Path, typer.Argument(help="Dataset table (CSV, CSV.gz, TSV, parquet), one row per image.")]
NFoldsOpt = Annotated[int, typer.Option("--n-folds", "-k", help="Number of folds.", min=2)]
HoldoutOpt = Annotated[
    str | None,
    typer.Option("--holdout", help="Train/val(/test) holdout instead of folds: '0.2' or '0.2,0.1' (val,test)."),
]
GroupOpt = Annotated[
    str | None,
    typer.Option("--group", "-g", help="Group column kept in one fold (default: detected patient column; 'none')."),
]
LabelsFromOpt = Annotated[
    str | None, typer.Option("--labels-from", help="Column of separated labels to expand (NIH 'Finding Labels').")
]
SepOpt = Annotated[str, typer.Option("--sep", help="Separator of --labels-from.")]
StrataOpt = Annotated[
    str | None,
    typer.Option(
        "--strata", help="Extra columns to balance, comma-separated (data_provider); a*b balances every combination."
    ),
]
DuplicatesOpt = Annotated[
    Path | None,
    typer.Option("--duplicates", help="duplicates.csv from `medkit audit` (image, cluster): clusters stay whole."),
]
PartialDuplicatesOpt = Annotated[
    bool,
    typer.Option(
        "--partial-duplicates",
        help="The table holds only part of the audited images: duplicates of images not in it are ignored "
        "(default: the split fails when a duplicate cluster names an image that matches no row).",
    ),
]
RsnaLongOpt = Annotated[
    bool | None,
    typer.Option("--rsna-long/--no-rsna-long", help="Convert the RSNA long format first (default: detect)."),
]
PassesOpt = Annotated[int, typer.Option("--passes", help="Local-search rounds after the greedy pass.", min=0)]
SizeWeightOpt = Annotated[
    float,
    typer.Option(
        "--size-weight",
        help="Weight of equal fold sizes against even label prevalence (below 1: rare labels evener, sizes less).",
        min=0.0,
    ),
]


def split(
    table: TableArg,
    n_folds: NFoldsOpt = 5,
    holdout: HoldoutOpt = None,
    group: GroupOpt = None,
    label_cols: LabelColsOpt = None,
    labels_from: LabelsFromOpt = None,
    sep: SepOpt = "|",
    strata: StrataOpt = None,
    duplicates: DuplicatesOpt = None,
    partial_duplicates: PartialDuplicatesOpt = False,
    image_col: ImageColOpt = None,
    rsna_long: RsnaLongOpt = None,
    passes: PassesOpt = 20,
    size_weight: SizeWeightOpt = 1.0,
    seed: SeedOpt = 42,
    out_path: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Split a table into patient-grouped, label-stratified, duplicate-aware folds with a leakage certificate.

    Columns balanced: --label-cols (default 'auto': the numeric label columns), --labels-from, --strata.
    Exit code 1, and nothing written, when the split is impossible as asked.
    """
    from medkit._io import check_writable_file
    from medkit.split import SplitOptions, make_split

    if out_path is not None:
        # --out is a file or a folder (an existing one, or a name without a suffix): folder/folds.csv.
        if out_path.is_dir() or (not out_path.exists() and not out_path.suffix):
            out_path = out_path / ("split.csv" if holdout else "folds.csv")
        check_writable_file(out_path)
    options = SplitOptions(
        n_folds=n_folds,
        holdout=holdout,
        group=group,
        label_cols="auto" if label_cols is not None and label_cols.strip() == "auto" else split_columns(label_cols),
        labels_from=labels_from,
        sep=sep,
        strata=split_columns(strata) or (),
        duplicates=duplicates,
        partial_duplicates=partial_duplicates,
        image_col=image_col,
        rsna_long=rsna_long,
        passes=passes,
        size_weight=size_weight,
        seed=seed,
        out=out_path,
    )
    outcome = make_split(table, options)
    if json_out:
        print_json(outcome.report.to_dict())
    else:
        _print_report(outcome.report)
    if not outcome.ok:
        raise typer.Exit(1)

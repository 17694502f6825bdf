"""`medkit ensemble PREDS...`: blend prediction files, with weights searched on OOF predictions and a
cross-validated estimate of the blend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medkit.cli._options import JsonOpt, OutOpt, SeedOpt
from medkit.console import out, print_json

if TYPE_CHECKING:
    from medkit.ensemble import CVScore, EnsembleReport, ThresholdReport

__all__ = ["ensemble"]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _fmt_cv(cv: CVScore | None) -> tuple[str, str]:
    if cv is None:
        return "", ""
    return f"{cv.mean:.4f} ± {cv.std:.4f}", f"{cv.pooled:.4f}"


def _weight(value: float | list[float]) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "per label"


def _print_report(rep: EnsembleReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    direction = "higher" if rep.greater_is_better else "lower"
    scored = rep.cv is not None
    out.print(f"{rep.method} blend of {len(rep.members)} members: {rep.rows} rows, {rep.target}")
    if scored:
        out.print(f"metric {rep.metric} ({direction} is better) on {rep.oof_rows} OOF rows")
    title = "members, the mean and the blend" if scored else "members"
    table = Table(title=title)
    table.add_column("", no_wrap=True)
    table.add_column("weight", justify="right")
    if scored:
        for col in ("OOF", "held-out folds", "held-out pooled"):
            table.add_column(col, justify="right")
    for i, m in enumerate(rep.members):
        cells = [_fmt(m.oof_score), *_fmt_cv(rep.cv.members[i])] if rep.cv is not None else []
        table.add_row(escape(m.predictions), _weight(m.weight), *cells)
    if rep.cv is not None:
        table.add_row("mean (equal weights)", "", _fmt(rep.mean_oof), *_fmt_cv(rep.cv.mean))
        table.add_row("blend, fitted on all OOF rows", "", _fmt(rep.blend_oof), "", "")
        table.add_row("[bold]blend, cross-validated[/bold]", "", "", *_fmt_cv(rep.cv.blend))
    out.print(table)
    if rep.per_label:
        _print_label_weights(rep)
    if rep.cv is not None:
        out.print(f"weights: {rep.search or 'equal'}; held-out folds: {rep.cv.source}")
    else:
        out.print("no --oof: equal weights, nothing scored")
    if rep.cut_points is not None:
        cuts = ", ".join(f"{c:.3f}" for c in rep.cut_points)
        out.print(f"cut points of the expected grade: {cuts} (OOF {rep.metric} with them: {_fmt(rep.cut_oof)})")
    if rep.thresholds is not None:
        _print_thresholds(rep.thresholds, rep.oof_rows)
    for path in rep.outputs.values():
        out.print(f"wrote {escape(path)}")


def _print_label_weights(rep: EnsembleReport) -> None:
    from rich.table import Table

    table = Table(title="weights per label")
    table.add_column("label", no_wrap=True)
    for i in range(len(rep.members)):
        table.add_column(f"#{i + 1}", justify="right")
    for j, label in enumerate(rep.label_names):
        table.add_row(label, *(f"{m.weight[j]:.3f}" for m in rep.members if isinstance(m.weight, list)))
    out.print(table)


def _print_thresholds(th: ThresholdReport, rows: int) -> None:
    import math

    from rich.markup import escape
    from rich.table import Table

    def cell(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"

    table = Table(title=f"thresholds per label for {th.criterion} on {rows} OOF rows")
    table.add_column("label", no_wrap=True)
    for col in ("threshold", "at 0.5", "at threshold (OOF, optimistic)", "cross-validated", "cv pooled"):
        table.add_column(col, justify="right")
    for t in th.labels:
        cv = f"{cell(t.cv_mean)} ± {cell(t.cv_std)}" if t.cv_folds else ""
        table.add_row(
            escape(t.label), f"{t.threshold:.4f}", cell(t.at_default), cell(t.at_threshold), cv, cell(t.cv_pooled)
        )
    out.print(table)
    out.print("cross-validated: thresholds (and weights) chosen on the other folds, scored on the held-out one")


PredsArg = Annotated[
    list[Path], typer.Argument(help="Prediction tables to blend (preds.csv from `medkit predict`), same ids.")
]
OofOpt = Annotated[
    list[Path] | None,
    typer.Option("--oof", help="OOF table (oof.csv or a run folder) of each member, repeated in PREDS order."),
]
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="mean | weighted | rank | geometric | power.")]
PowerOpt = Annotated[float, typer.Option("--power", help="Exponent P of --method power.")]
MetricOpt = Annotated[
    str | None, typer.Option("--metric", help="Metric to search and score (default: competition's, else members').")
]
CompetitionOpt = Annotated[str | None, typer.Option("--competition", help="Competition whose metric is the default.")]
SearchOpt = Annotated[str, typer.Option("--search", help="Weight search on the OOF: hill | nelder-mead.")]
PerLabelOpt = Annotated[bool, typer.Option("--per-label", help="One weight vector per label column (multilabel).")]
ThresholdsOpt = Annotated[
    str | None,
    typer.Option(
        "--thresholds",
        help="Choose each label's threshold on the blended OOF for f1 | f2 | youden | accuracy (binary, multilabel); "
        "writes <out>_labels.csv.",
    ),
]
CvFoldsOpt = Annotated[
    int, typer.Option("--cv-folds", help="Folds of the CV estimate when the OOF has no 'fold' column.", min=2)
]


def ensemble(
    preds: PredsArg,
    oof: OofOpt = None,
    method: MethodOpt = "mean",
    power: PowerOpt = 2.0,
    metric: MetricOpt = None,
    competition: CompetitionOpt = None,
    search: SearchOpt = "hill",
    per_label: PerLabelOpt = False,
    thresholds: ThresholdsOpt = None,
    cv_folds: CvFoldsOpt = 5,
    seed: SeedOpt = 0,
    out_path: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Blend prediction files (mean, weighted, rank, geometric, power); weights searched on OOF, scored by CV.

    With --oof (one per member, in PREDS order) every method but mean searches its weights on the OOF predictions.
    The table shows each member, the plain mean and the blend, also on held-out folds of the OOF rows.
    Writes --out (default blend.csv), its sidecar blend.json (weights, scores) and, with --oof, blend_oof.csv.
    --thresholds CRITERION also chooses one threshold per label on the blended OOF and writes the 0/1 decisions
    to blend_labels.csv (one member with its --oof works too).
    """
    from medkit.ensemble import EnsembleOptions
    from medkit.ensemble import ensemble as run_ensemble

    options = EnsembleOptions(
        method=method,
        power=power,
        metric=metric,
        competition=competition,
        search=search,
        per_label=per_label,
        cv_folds=cv_folds,
        seed=seed,
        out=out_path or Path("blend.csv"),
        thresholds=thresholds,
    )
    report = run_ensemble(preds, oof or [], options)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report)

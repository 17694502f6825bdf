"""`medkit audit DATA`: find what is wrong with a dataset (images and label table) before training on it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medkit.cli._options import ImageColOpt, JsonOpt, LabelColsOpt, LabelsOpt, OutOpt, WorkersOpt, split_columns

if TYPE_CHECKING:
    from medkit.audit import AuditReport
    from medkit.console import Progress

__all__ = ["audit"]

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


class _ScanBar:
    """The scan's progress bar, opened once the audit knows how many files it reads."""

    def __init__(self) -> None:
        self.bar: Progress | None = None

    def start(self, total: int) -> None:
        from medkit.console import Progress

        self.bar = Progress(total=total, description="audit", unit="img").__enter__()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def audit(
    data: Annotated[
        Path,
        typer.Argument(
            help="Data folder, scanned recursively (PNG, JPEG, TIFF, NPY/NPZ, DICOM), or one file; MedMNIST .npz "
            "archives are audited image by image."
        ),
    ],
    labels: LabelsOpt = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Patient column (default: detected, e.g. patient_id).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split column (default: detected 'split'; else train/valid/test folder names)."),
    ] = None,
    image_col: ImageColOpt = None,
    label_cols: LabelColsOpt = None,
    out: OutOpt = None,
    json_out: JsonOpt = False,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Finding kinds that make the exit code 1 (comma-separated, 'all' or 'none').",
            envvar="MEDKIT_AUDIT_FAIL_ON",
        ),
    ] = (
        "no_images,unreadable,label_conflict,leakage,missing_file,ambiguous_file,duplicate_id,duplicate_id_conflict"
    ),  # medkit.audit.DEFAULT_FAIL_ON (a test keeps them equal)
    near: Annotated[
        int, typer.Option("--near", help="Near-duplicate pHash Hamming threshold (of 64 bits).", min=0, max=16)
    ] = 6,
    near_align: Annotated[
        float,
        typer.Option(
            "--near-align",
            help="Crops and shifts: smallest correlation of two images after alignment for a near duplicate "
            "(0 turns the alignment stage off).",
            min=0.0,
            max=1.0,
        ),
    ] = 0.8,  # medkit.audit.align.DEFAULT_ALIGN
    workers: WorkersOpt = None,
) -> None:
    """Find unreadable, blank and duplicate images, label conflicts, leakage and header problems."""
    from medkit._io import check_writable_dir, refuse_overwrite_inputs
    from medkit._lock import run_lock
    from medkit.audit import Thresholds, parse_kinds, run_audit, write_outputs
    from medkit.audit.outputs import planned_outputs
    from medkit.console import info, print_json

    kinds = parse_kinds(fail_on)
    if out is not None:
        refuse_overwrite_inputs(planned_outputs(out), [labels, data if data.is_file() else None])
        check_writable_dir(out)  # before the scan, not after it
    bar = _ScanBar()
    # One writer per --out: a second audit into the same folder stops at once instead of mixing the outputs.
    with run_lock(out, "medkit audit") if out is not None else contextlib.nullcontext():
        try:
            report = run_audit(
                data,
                labels=labels,
                group=group,
                split=split,
                image_col=image_col,
                label_cols=split_columns(label_cols),
                workers=workers,
                thresholds=Thresholds(near=near),
                on_start=bar.start,
                on_progress=bar.advance,
                exclude=out,
                near_align=near_align,
            )
        finally:
            bar.close()
        written = write_outputs(report, out) if out is not None else []
    for path in written:
        info(f"wrote {path}")
    if json_out:
        print_json(report.to_dict(kinds) | {"outputs": [str(p) for p in written]})
    else:
        _print_summary(report, kinds)
    if report.failed(kinds):
        raise typer.Exit(1)


def _print_summary(report: AuditReport, kinds: tuple[str, ...]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from medkit._names import escape_name, escape_text
    from medkit.audit import KINDS
    from medkit.console import out

    d = report.to_dict(kinds, max_findings=0)
    table = Table(title=f"medkit audit: {d['files']} files under {escape(d['root'])} ({d['readable']} readable)")
    table.add_column("kind", no_wrap=True)
    table.add_column("severity")
    table.add_column("count", justify="right")
    table.add_column("example")
    examples = report.examples()
    for kind, n in d["counts"].items():
        sev = KINDS[kind][0]
        mark = " (fail)" if kind in kinds else ""
        f = examples[kind]
        example = f"{escape_name(f.files[0])}: {f.detail}" if f.files else f.detail
        table.add_row(kind, f"[{_SEVERITY_STYLE[sev]}]{sev}[/]{mark}", str(n), escape(escape_text(example[:160])))
    if not d["counts"]:
        table.add_row("-", "-", "0", "no findings")
    out.print(table)
    if report.label_stats:
        out.print(_label_table(report))
    status = "problems found" if d["failed"] else "no failing findings"
    splits = (
        f"splits from {d['split_source']}"
        if d["split_source"]
        else "no splits or folds (no split/fold column, no train/valid/test folders)"
    )
    out.print(
        f"{d['duplicate_clusters']} duplicate clusters ({d['exact_duplicate_clusters']} exact); {splits}; "
        f"fail-on {','.join(kinds) or 'none'}: {status}"
    )


def _label_table(report: AuditReport) -> Any:
    from rich.table import Table

    lt = Table(title=f"labels ({report.table_path})")
    for c in ("label", "n", "positives", "prevalence", "pos_weight"):
        lt.add_column(c, justify="left" if c == "label" else "right")
    for s in report.label_stats:
        if s["kind"] == "binary":
            pw = f"{s['pos_weight']:.2f}" if s["pos_weight"] is not None else "-"
            lt.add_row(s["label"], str(s["n"]), str(s["positives"]), f"{100 * s['prevalence']:.2f}%", pw)
        else:
            classes = s.get("classes") or {}
            lt.add_row(s["label"], str(s["n"]), ", ".join(f"{k}:{v}" for k, v in list(classes.items())[:8]), "-", "-")
    return lt

"""`medkit submit PREDS --competition NAME`: a checked submission file, sent to Kaggle with the official client.

Also `--download` (the competition's files), `--status` (recent submissions and scores) and `--kernel` (the
offline notebook bundle of a code competition). The validation report goes to stderr, results to stdout.
Exit codes: 0 written (and sent), 1 the submission is invalid (nothing sent) or Kaggle failed to score it,
2 usage, credential or network errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medkit.cli._options import JsonOpt, OutOpt
from medkit.console import console, info, out, print_json
from medkit.errors import UsageError

if TYPE_CHECKING:
    from medkit.competitions import Competition
    from medkit.submit import KernelBundle, PreparedSubmission, SubmitResult, ValidationReport

__all__ = ["submit"]

_PANEL_KAGGLE = "Kaggle"
_PANEL_KERNEL = "Code competitions (--kernel)"

PredsArg = Annotated[
    Path | None,
    typer.Argument(help="Predictions from medkit predict / ensemble (or a submission CSV to check).", dir_okay=False),
]
CompetitionOpt = Annotated[
    str,
    typer.Option(
        "--competition", "-c", help="Preset (rsna, ranzcr, panda, siim-isic; see `medkit list competitions`) or slug."
    ),
]
SampleOpt = Annotated[
    Path | None,
    typer.Option("--sample", help="The competition's sample submission: ids, row and column order.", dir_okay=False),
]
MessageOpt = Annotated[str | None, typer.Option("--message", "-m", help="Submission description.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Write and validate only; send nothing.")]
ClipOpt = Annotated[
    float | None,
    typer.Option(
        "--clip", help="Clip probabilities to [EPS, 1-EPS] (default: the preset's; 0 = off).", min=0, max=0.49
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Seconds to wait for the score after submitting (0 = don't).", min=0.0),
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Download the competition's files to --out.", rich_help_panel=_PANEL_KAGGLE)
]
FileOpt = Annotated[
    str | None,
    typer.Option("--file", help="With --download: only this file (e.g. the sample).", rich_help_panel=_PANEL_KAGGLE),
]
StatusOpt = Annotated[
    bool, typer.Option("--status", help="List your recent submissions and scores.", rich_help_panel=_PANEL_KAGGLE)
]
LimitOpt = Annotated[
    int, typer.Option("--limit", help="With --status: how many submissions.", min=1, rich_help_panel=_PANEL_KAGGLE)
]
KernelOpt = Annotated[
    bool,
    typer.Option(
        "--kernel", help="Build (and push) the offline notebook bundle into --out.", rich_help_panel=_PANEL_KERNEL
    ),
]
RunOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--run", help="Run folder to bundle (repeatable; default: the runs named by the predictions' sidecar).",
        file_okay=False, rich_help_panel=_PANEL_KERNEL,
    ),
]  # fmt: skip
OwnerOpt = Annotated[
    str | None,
    typer.Option("--owner", help="Kaggle user owning the notebook (default: yours).", rich_help_panel=_PANEL_KERNEL),
]
WheelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--wheels", help="Folder of wheels to bundle (medkit's, dependencies').", file_okay=False,
        rich_help_panel=_PANEL_KERNEL,
    ),
]  # fmt: skip
TileArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--tile-args", help="`medkit tile` options for the test slides (default: those the runs were trained on).",
        rich_help_panel=_PANEL_KERNEL,
    ),
]  # fmt: skip
BuildWheelOpt = Annotated[
    bool,
    typer.Option(
        "--build-wheel", help="Build medkit's wheel from its source tree (offline).", rich_help_panel=_PANEL_KERNEL
    ),
]


def submit(
    competition: CompetitionOpt,
    preds: PredsArg = None,
    sample: SampleOpt = None,
    message: MessageOpt = None,
    dry_run: DryRunOpt = False,
    clip: ClipOpt = None,
    wait: WaitOpt = 60.0,
    download: DownloadOpt = False,
    file: FileOpt = None,
    status: StatusOpt = False,
    limit: LimitOpt = 10,
    kernel: KernelOpt = False,
    run: RunOpt = None,
    owner: OwnerOpt = None,
    wheels: WheelsOpt = None,
    build_wheel: BuildWheelOpt = False,
    tile_args: TileArgsOpt = None,
    out_path: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate predictions as a competition's submission and send them to Kaggle (or download, status, kernel).

    The predictions are converted to the competition's layout (RSNA's long ID_<image>_<subtype> rows, the wide
    columns of the sample submission), checked (ids, columns, values) and written to --out (submission.csv).
    Invalid: the report, exit code 1, nothing sent. Code competitions take a notebook: --kernel builds it.
    """
    from medkit.competitions import resolve_competition

    comp = resolve_competition(competition)
    if download or status:
        if preds is not None or kernel or (download and status):
            raise UsageError("--download and --status take no predictions and go alone", hint="run them separately")
        if download:
            _download(comp, out_path, file, json_out)
        else:
            _status(comp, limit, json_out)
        return
    if kernel:
        bundle_opts = _BundleOptions(run or [], owner, wheels, build_wheel, tile_args)
        _kernel(comp, preds, sample, clip, bundle_opts, dry_run, message, out_path, json_out)
        return
    if preds is None:
        raise UsageError("medkit submit needs the predictions to send", hint="medkit submit preds.csv -c COMPETITION")
    if comp.code and not dry_run:
        raise UsageError(
            f"{comp.name} is a code competition: Kaggle takes a notebook, not a file",
            hint="check the file with --dry-run, then build the notebook with --kernel --run RUN",
        )
    prepared = _prepare(comp, preds, sample, clip, out_path or Path("submission.csv"))
    _print_written(prepared, json_out)
    result = None
    if prepared.report.ok and not dry_run:
        from medkit import __version__
        from medkit.submit import find_credentials, submit_file

        creds = find_credentials()
        info(f"submitting {prepared.path} to {comp.slug} as {creds.username or 'the token user'} ({creds.method})")
        text = message or f"medkit {__version__}: {preds.name}"
        result = submit_file(creds, comp.slug, prepared.path, text, wait=wait)
    _print_outcome(prepared, result, dry_run, json_out)
    if not prepared.report.ok or (result is not None and result.info is not None and result.info.status == "ERROR"):
        raise typer.Exit(1)


def _prepare(comp: Competition, preds: Path, sample: Path | None, clip: float | None, dest: Path) -> Any:
    from medkit._io import refuse_overwrite_inputs
    from medkit.submit import prepare_submission

    refuse_overwrite_inputs([dest], [preds, sample])
    prepared = prepare_submission(preds, comp, dest, sample_path=sample, clip_eps=clip)
    _print_report(prepared.report)
    return prepared


def _print_report(report: ValidationReport) -> None:
    """The validation report on stderr: one row per problem (check, count, first examples), then the notes."""
    from rich.markup import escape
    from rich.table import Table

    for note in report.notes:
        info(f"note: {escape(note)}")
    if report.ok:
        return
    table = Table(title=f"{report.competition}: submission is NOT valid ({report.rows} rows)", title_justify="left")
    for col in ("check", "count", "problem", "first examples"):
        table.add_column(col, overflow="fold")
    for p in report.problems:
        table.add_row(p.check, str(p.count), escape(p.message), escape(", ".join(p.examples)))
    console.print(table)


def _result_dict(result: SubmitResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    polled = result.info
    return {
        "ref": result.ref,
        "message": result.message,
        "status": polled.status if polled else None,
        "public_score": polled.public_score if polled else None,
        "private_score": polled.private_score if polled else None,
        "error": polled.error if polled and polled.error else None,
    }


def _print_written(prepared: PreparedSubmission, json_out: bool) -> None:
    """The file and its verdict, printed before anything is sent (so a failed upload still shows them)."""
    report = prepared.report
    if json_out:
        return
    verdict = "valid" if report.ok else f"[bold red]NOT valid[/bold red] ({len(report.problems)} problems)"
    out.print(f"wrote {prepared.path}: {report.rows} rows, {verdict} ({prepared.competition.slug})")


def _print_outcome(prepared: PreparedSubmission, result: SubmitResult | None, dry_run: bool, json_out: bool) -> None:
    report = prepared.report
    if json_out:
        record = {"path": str(prepared.path), "source": prepared.source, **report.to_dict()}
        print_json({**record, "submitted": _result_dict(result)})
        return
    if not report.ok:
        out.print("nothing was sent")
    elif dry_run:
        out.print("dry run: nothing was sent")
    elif result is not None:
        line = f"submitted: ref {result.ref}"
        if result.info is not None:
            line += f", status {result.info.status}, public score {result.info.public_score or '-'}"
            if result.info.error:
                line += f", error: {result.info.error}"
        out.print(line)


def _download(comp: Competition, dest: Path | None, file: str | None, json_out: bool) -> None:
    from medkit.submit import download_files, find_credentials

    creds = find_credentials()
    folder = dest or Path(comp.slug)
    info(f"downloading {f'{file} of' if file else 'the files of'} {comp.slug} to {folder}")
    files = download_files(creds, comp.slug, folder, file)
    if json_out:
        print_json({"competition": comp.name, "slug": comp.slug, "out": str(folder), "files": [str(f) for f in files]})
        return
    for f in files:
        out.print(str(f))


def _status(comp: Competition, limit: int, json_out: bool) -> None:
    from dataclasses import asdict

    from rich.table import Table

    from medkit.submit import find_credentials, list_submissions

    subs = list_submissions(find_credentials(), comp.slug, limit)
    if json_out:
        print_json({"competition": comp.name, "slug": comp.slug, "submissions": [asdict(s) for s in subs]})
        return
    table = Table(title=f"{comp.slug}: your last {len(subs)} submissions")
    for col in ("ref", "date", "status", "public", "private", "description"):
        table.add_column(col, justify="right" if col in ("ref", "public", "private") else "left")
    for s in subs:
        table.add_row(str(s.ref), s.date, s.status, s.public_score or "-", s.private_score or "-", s.description)
    out.print(table)


def _runs_of(preds: Path | None) -> list[Path]:
    """The run folders a prediction table's sidecar names as its sources."""
    from medkit.data.predictions import read_meta

    meta = read_meta(preds) if preds is not None else None
    found = []
    for source in meta.sources if meta else ():
        for candidate in (Path(source), preds.parent / source):
            if (candidate / "run.json").is_file():
                found.append(candidate)
                break
    return found


@dataclass(frozen=True)
class _BundleOptions:
    """What --kernel bundles: --run, --owner, --wheels, --build-wheel, --tile-args."""

    runs: list[Path]
    owner: str | None
    wheels: Path | None
    build_wheel: bool
    tile_args: str | None


def _kernel(
    comp: Competition,
    preds: Path | None,
    sample: Path | None,
    clip: float | None,
    opts: _BundleOptions,
    dry_run: bool,
    message: str | None,
    dest: Path | None,
    json_out: bool,
) -> None:
    """Check the runs, the owner and the predictions (when given), build the notebook bundle, and push it unless
    --dry-run. Nothing is left in the bundle folder when a check fails."""
    import shlex

    from medkit.submit import (
        CredentialsError,
        build_kernel_bundle,
        check_kernel_runs,
        find_credentials,
        push_kernel_bundle,
    )

    folder = dest or Path(f"medkit-{comp.name}-kernel")
    runs = opts.runs or _runs_of(preds)
    tile_args = shlex.split(opts.tile_args) if opts.tile_args else None
    check_kernel_runs(comp, runs, tile_args)  # before submission.csv is written
    creds = None
    try:
        creds = find_credentials()
    except CredentialsError:
        if not dry_run:
            raise
    owner = opts.owner or (creds.username if creds else None)
    if not owner:
        raise UsageError("the notebook needs an owner", hint="pass --owner with your Kaggle user name")
    local = folder / "submission.csv"
    had_local = local.exists()
    prepared = _prepare(comp, preds, sample, clip, local) if preds is not None else None
    if prepared is not None and not prepared.report.ok:
        _print_written(prepared, json_out)
        _print_outcome(prepared, None, True, json_out)
        raise typer.Exit(1)
    try:
        bundle = build_kernel_bundle(
            comp, runs, folder, owner, wheels_from=opts.wheels, build_wheel=opts.build_wheel, tile_args=tile_args
        )
    except BaseException:
        if prepared is not None and not had_local:
            local.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    pushed = None
    if not dry_run and creds is not None:
        from medkit import __version__

        pushed = push_kernel_bundle(creds, bundle.dataset_dir, bundle.kernel_dir, message or f"medkit {__version__}")
    _print_kernel(comp, bundle, pushed, json_out)


def _print_kernel(comp: Competition, bundle: KernelBundle, pushed: Any, json_out: bool) -> None:
    from dataclasses import asdict

    if json_out:
        print_json({"competition": comp.name, "bundle": bundle.to_dict(), "pushed": asdict(pushed) if pushed else None})
        return
    out.print(f"wrote the kernel bundle {bundle.root}: notebook {bundle.kernel_id}, dataset {bundle.dataset_id}")
    out.print(f"  runs: {', '.join(bundle.runs)}; wheels: {', '.join(bundle.wheels) or 'none'}")
    if bundle.missing:
        out.print(f"  no wheel for: {', '.join(bundle.missing)} (expected on the Kaggle image, else add to --wheels)")
    if pushed is None:
        out.print("dry run: nothing was pushed")
        return
    out.print(f"pushed: dataset {pushed.dataset_url or pushed.dataset}, notebook {pushed.kernel_url or pushed.kernel}")
    out.print(
        f"when the notebook run finishes, submit its submission.csv from its page, or: kaggle competitions submit "
        f"{comp.slug} -k {pushed.kernel} -v {pushed.version} -f submission.csv -m MESSAGE"
    )

"""`medkit inspect FILE...`: what the medkit readers make of image files (layout, dtype, range, DICOM header).

The reading is `medkit.io.inspect.describe_files`; this module parses the options and prints tables or JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medkit.cli._options import JsonOpt
from medkit.console import out, print_json

if TYPE_CHECKING:
    from medkit.io.inspect import FileInfo, Unreadable

__all__ = ["inspect"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def inspect(
    files: Annotated[list[Path], typer.Argument(help="Image files: PNG, JPEG, TIFF/SVS, NPY, NPZ, DICOM.")],
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            "-w",
            help="DICOM windows to report, comma-separated: presets (brain, subdural, soft_tissue, bone, lung, "
            "mediastinum, stroke), dicom (the file's own), minmax, or CENTER/WIDTH. "
            "Default: brain,subdural,soft_tissue for CT, the file's window otherwise.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Read images with the medkit readers and show reader, shape, dtype, range and the DICOM header.

    Exit code 1 when any file could not be read.
    """
    from medkit.console import error, progress
    from medkit.io.inspect import Unreadable, describe_files
    from medkit.io.windows import parse_windows

    names = parse_windows(window) if window else None
    # One file is read at once: a progress line would only repeat it.
    shown = progress(files, description="inspect", unit="file") if len(files) > 1 else files
    rows = list(describe_files(shown, names))
    failed = [r for r in rows if isinstance(r, Unreadable)]
    if json_out:
        print_json([r.to_dict() for r in rows])
    else:
        _print_tables(rows)
        for r in failed:
            error(r.error, r.hint)
    if failed:
        raise typer.Exit(1)


def _print_tables(rows: list[FileInfo | Unreadable]) -> None:
    from rich.table import Table

    from medkit.io.inspect import Unreadable

    table = Table(title="images")
    for col in ("file", "reader", "shape", "dtype", "min", "max", "notes"):
        table.add_column(col, no_wrap=col != "notes", justify="right" if col in ("min", "max") else "left")
    for r in rows:
        if isinstance(r, Unreadable):
            table.add_row(r.file, "[red]unreadable[/red]", "", "", "", "", r.error)
            continue
        table.add_row(r.file, r.reader, _fmt(r.shape), r.dtype, _fmt(r.min), _fmt(r.max), "; ".join(_notes(r)))
    out.print(table)
    dicoms = [r for r in rows if not isinstance(r, Unreadable) and r.header is not None]
    if not dicoms:
        return
    cols = (
        "Modality",
        "InstanceNumber",
        "ImagePositionPatient",
        "SliceThickness",
        "PixelSpacing",
        "PhotometricInterpretation",
        "BitsStored",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "WindowCenter",
        "WindowWidth",
        "TransferSyntaxUID",
    )
    short = {
        "InstanceNumber": "inst",
        "ImagePositionPatient": "position",
        "SliceThickness": "thick",
        "PixelSpacing": "spacing",
        "PhotometricInterpretation": "photometric",
        "BitsStored": "bits",
        "PixelRepresentation": "signed",
        "RescaleSlope": "slope",
        "RescaleIntercept": "intercept",
        "WindowCenter": "WC",
        "WindowWidth": "WW",
        "TransferSyntaxUID": "transfer syntax",
    }
    header_table = Table(title="DICOM header (all fields with --json)")
    header_table.add_column("file", no_wrap=True)
    for c in cols:
        header_table.add_column(short.get(c, c))
    for r in dicoms:
        header_table.add_row(Path(r.file).name, *(_header_cell(c, r.header.get(c)) for c in cols))
    out.print(header_table)


def _notes(r: FileInfo) -> list[str]:
    notes = []
    if r.gray_in_rgb:
        notes.append("grey content in 3 equal channels")
    if r.note:
        notes.append(r.note)
    if r.windows is not None:
        notes.append(" ".join(f"{n}=[{lo},{hi}]" for n, (lo, hi) in r.windows.items()))
    if r.pages is not None and len(r.pages) > 1:
        notes.append("pages: " + ", ".join(f"{_fmt(p.shape)} {p.dtype}" for p in r.pages))
    if r.arrays is not None:
        notes.append("arrays: " + ", ".join(f"{k} {_fmt(v.shape)} {v.dtype}" for k, v in r.arrays.items()))
    if r.medmnist is not None:
        splits = (f"{s} {_fmt(v.images)} labels {_fmt(v.labels)}" for s, v in r.medmnist.items())
        notes.append("MedMNIST: " + ", ".join(splits))
    return notes


def _header_cell(name: str, value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:.4g}" for v in value)
    if name == "TransferSyntaxUID" and value:
        from medkit.io.dicom import transfer_syntax_name

        return transfer_syntax_name(value)
    return _fmt(value)

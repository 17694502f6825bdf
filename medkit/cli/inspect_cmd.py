"""`medkit inspect FILE...`: what the medkit readers make of image files (layout, dtype, range, DICOM header)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.cli._options import JsonOpt
from medkit.console import out, print_json

__all__ = ["inspect"]

_CT_WINDOWS = "brain,subdural,soft_tissue"


def _describe(path: Path, windows: list[str] | None) -> dict[str, Any]:
    import numpy as np

    from medkit.io.readers import detect_reader, read_image, tiff_pages

    row: dict[str, Any] = {"file": str(path), "reader": None, "shape": None, "dtype": None, "min": None, "max": None}
    name = detect_reader(path)
    row["reader"] = name
    if name == "tiff":
        row["pages"] = [{"shape": list(shape), "dtype": dtype} for shape, dtype in tiff_pages(path)]
    if name == "npz":
        from medkit.io.readers import ImageReadError, load_medmnist

        try:
            data = load_medmnist(path)
        except ImageReadError:
            data = None
        if data is not None:
            row["medmnist"] = {
                split: {"images": list(x.shape), "labels": list(y.shape), "classes": int(len(np.unique(y)))}
                for split, (x, y) in data.items()
            }
            first = next(iter(data.values()))[0]
            row.update(shape=list(first.shape), dtype=str(first.dtype), min=first.min().item(), max=first.max().item())
            return row
        try:
            with np.load(path, allow_pickle=False) as npz:
                if len(npz.files) > 1:  # a generic archive: list its arrays rather than guess one
                    row["arrays"] = {k: {"shape": list(npz[k].shape), "dtype": str(npz[k].dtype)} for k in npz.files}
                    return row
        except Exception:  # broken archive: read_image below reports it as unreadable, naming the file
            pass
    arr = read_image(path, reader=name)
    row.update(shape=list(arr.shape), dtype=str(arr.dtype))
    if arr.size:
        row.update(min=_scalar(arr.min()), max=_scalar(arr.max()))
    if name == "dicom":
        import pydicom

        from medkit.io.dicom import dicom_windows, file_window, header_mapping

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        header = dict(header_mapping(ds))
        row["header"] = header
        if not str(header.get("PhotometricInterpretation") or "").startswith("MONOCHROME"):
            return row  # colour: no grey-level windows
        own = bool(file_window(ds) or ds.get("VOILUTSequence"))
        if windows is None:
            names = _CT_WINDOWS.split(",") if header.get("Modality") == "CT" else ["dicom" if own else "minmax"]
        else:
            names = [n for n in windows if n != "dicom" or own]
            if len(names) < len(windows):
                row["note"] = "no WindowCenter/WindowWidth or VOI LUT in the file: 'dicom' window skipped"
        if names:
            win = dicom_windows(path, names)
            row["windows"] = {n: [int(win[..., k].min()), int(win[..., k].max())] for k, n in enumerate(names)}
    elif arr.ndim == 3 and arr.shape[-1] == 3 and arr.size:
        # Many chest X-ray PNGs are grey images saved as RGB; worth knowing before picking in_chans.
        row["gray_in_rgb"] = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    return row


def _scalar(value: Any) -> int | float:
    # float32 extremes printed at float32 precision: -1024.0, not -1023.9999389648438
    if value.dtype.kind == "f":
        return float(f"{float(value):.7g}")
    return value.item()


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
    from medkit.io.dicom import parse_windows
    from medkit.errors import MedkitError

    names = parse_windows(window) if window else None
    rows: list[dict[str, Any]] = []
    for path in progress(files, description="inspect", unit="file"):
        try:
            rows.append(_describe(path, names))
        except MedkitError as exc:
            rows.append({"file": str(path), "error": exc.message, "hint": exc.hint})
    failed = [r for r in rows if r.get("error")]
    if json_out:
        print_json(rows)
    else:
        _print_tables(rows)
        for r in failed:
            error(r["error"], r.get("hint"))
    if failed:
        raise typer.Exit(1)


def _print_tables(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="images")
    for col in ("file", "reader", "shape", "dtype", "min", "max", "notes"):
        table.add_column(col, no_wrap=col != "notes", justify="right" if col in ("min", "max") else "left")
    for r in rows:
        if r.get("error"):
            table.add_row(r["file"], "[red]unreadable[/red]", "", "", "", "", r["error"])
            continue
        notes = []
        if r.get("gray_in_rgb"):
            notes.append("grey content in 3 equal channels")
        if r.get("note"):
            notes.append(r["note"])
        if "windows" in r:
            notes.append(" ".join(f"{n}=[{lo},{hi}]" for n, (lo, hi) in r["windows"].items()))
        if len(r.get("pages", [])) > 1:
            notes.append("pages: " + ", ".join(f"{_fmt(p['shape'])} {p['dtype']}" for p in r["pages"]))
        if "arrays" in r:
            notes.append("arrays: " + ", ".join(f"{k} {_fmt(v['shape'])} {v['dtype']}" for k, v in r["arrays"].items()))
        if "medmnist" in r:
            notes.append(
                "MedMNIST: "
                + ", ".join(f"{s} {_fmt(v['images'])} labels {_fmt(v['labels'])}" for s, v in r["medmnist"].items())
            )
        table.add_row(
            r["file"], r["reader"], _fmt(r["shape"]), r["dtype"], _fmt(r["min"]), _fmt(r["max"]), "; ".join(notes)
        )
    out.print(table)
    dicoms = [r for r in rows if "header" in r]
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
        h = r["header"]
        header_table.add_row(
            Path(r["file"]).name,
            *(_header_cell(c, h.get(c)) for c in cols),
        )
    out.print(header_table)


def _header_cell(name: str, value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:.4g}" for v in value)
    if name == "TransferSyntaxUID" and value:
        from pydicom.uid import UID

        return UID(value).name
    return _fmt(value)

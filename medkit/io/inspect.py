"""What the medkit readers make of a file: reader, layout, dtype, value range, and per format the facts worth knowing.

`describe` reads one file and returns a `FileInfo` (TIFF pages, the splits of a MedMNIST archive or the arrays of
another ``.npz``, the DICOM header and the 8-bit range of each window, grey content stored as RGB); `describe_files`
does it for many files and turns an unreadable one into an `Unreadable` instead of stopping. Nothing here prints:
`medkit inspect` (medkit.cli.inspect_cmd) shows the results as tables or JSON.

numpy is imported at module level; the decoders (cv2, tifffile, pydicom) only when a file needs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import ImageReadError, MedkitError

__all__ = ["CT_WINDOWS", "ArrayInfo", "SplitInfo", "FileInfo", "Unreadable", "describe", "describe_files"]

#: Windows reported for a CT file when none are asked for: the three channels of the RSNA hemorrhage solutions.
CT_WINDOWS: tuple[str, ...] = ("brain", "subdural", "soft_tissue")


@dataclass(frozen=True)
class ArrayInfo:
    """Shape and dtype of an array that was not read: a TIFF page or a member of an ``.npz`` archive.

    Attributes:
        shape: The array's shape.
        dtype: The numpy dtype name (``uint8``, ``bool``, ...).
    """

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """``{"shape": [...], "dtype": ...}`` for JSON."""
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SplitInfo:
    """One split of a MedMNIST archive.

    Attributes:
        images: Shape of the images array, (N, H, W[, C]).
        labels: Shape of the labels array, (N, K).
        classes: Number of distinct label values.
    """

    images: tuple[int, ...]
    labels: tuple[int, ...]
    classes: int

    def to_dict(self) -> dict[str, Any]:
        """``{"images": [...], "labels": [...], "classes": n}`` for JSON."""
        return {"images": list(self.images), "labels": list(self.labels), "classes": self.classes}


@dataclass
class FileInfo:
    """What the readers make of one file. The optional fields are None where they do not apply.

    Attributes:
        file: The path as given.
        reader: The READERS name chosen for it.
        shape: Shape of the array `read_image` returns (of the first split's images for MedMNIST); None for an
            archive of several arrays, which is listed in ``arrays`` instead.
        dtype: Its dtype name.
        min: Smallest value (float32 extremes at float32 precision); None for an empty array.
        max: Largest value.
        pages: TIFF: every page (pyramid levels, label and macro images of a slide).
        medmnist: MedMNIST archive: each split present.
        arrays: Other ``.npz`` archive of several arrays: each array by name.
        header: DICOM: the header fields of `medkit.io.dicom.header_mapping`.
        note: DICOM: why an asked-for window was skipped.
        windows: DICOM (grey-level): window name -> (min, max) of its 8-bit output.
        gray_in_rgb: Three-channel non-DICOM images: whether the three channels are equal (grey content).
    """

    file: str
    reader: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    min: int | float | None = None
    max: int | float | None = None
    pages: list[ArrayInfo] | None = None
    medmnist: dict[str, SplitInfo] | None = None
    arrays: dict[str, ArrayInfo] | None = None
    header: dict[str, Any] | None = None
    note: str | None = None
    windows: dict[str, tuple[int, int]] | None = None
    gray_in_rgb: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``medkit inspect --json``: file, reader, shape, dtype, min, max, then the fields set."""
        out: dict[str, Any] = {
            "file": self.file,
            "reader": self.reader,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "min": self.min,
            "max": self.max,
        }
        if self.pages is not None:
            out["pages"] = [p.to_dict() for p in self.pages]
        if self.medmnist is not None:
            out["medmnist"] = {split: s.to_dict() for split, s in self.medmnist.items()}
        if self.arrays is not None:
            out["arrays"] = {name: a.to_dict() for name, a in self.arrays.items()}
        if self.header is not None:
            out["header"] = self.header
        if self.note is not None:
            out["note"] = self.note
        if self.windows is not None:
            out["windows"] = {name: list(lo_hi) for name, lo_hi in self.windows.items()}
        if self.gray_in_rgb is not None:
            out["gray_in_rgb"] = self.gray_in_rgb
        return out


@dataclass(frozen=True)
class Unreadable:
    """A file `describe` could not read.

    Attributes:
        file: The path as given.
        error: The error message (it names the file).
        hint: How to fix it, or None.
    """

    file: str
    error: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"file", "error", "hint"}`` for JSON."""
        return {"file": self.file, "error": self.error, "hint": self.hint}


def describe(path: str | os.PathLike[str], windows: Sequence[str] | None = None) -> FileInfo:
    """Read one file with the medkit readers and describe the result.

    Args:
        path: The file.
        windows: DICOM windows to report (names already checked, see `medkit.io.windows.parse_windows`). None:
            `CT_WINDOWS` for CT, else the file's own window (WindowCenter/WindowWidth or VOI LUT) or ``minmax``.
            An asked-for ``dicom`` window is skipped, with a ``note``, for a file without one.

    Returns:
        The `FileInfo`.

    Raises:
        MedkitError: When the file cannot be read (an `ImageReadError` naming the file, most often).
    """
    from medkit.io.readers import detect_reader, read_image, tiff_pages

    path = Path(path)
    name = detect_reader(path)
    info = FileInfo(file=str(path), reader=name)
    if name == "tiff":
        info.pages = [ArrayInfo(shape, dtype) for shape, dtype in tiff_pages(path)]
    if name == "npz" and _describe_archive(path, info):
        return info
    arr = read_image(path, reader=name)
    info.shape, info.dtype = tuple(arr.shape), str(arr.dtype)
    if arr.size:
        info.min, info.max = _scalar(arr.min()), _scalar(arr.max())
    if name == "dicom":
        _describe_dicom(path, info, windows)
    elif arr.ndim == 3 and arr.shape[-1] == 3 and arr.size:
        # Many chest X-ray PNGs are grey images saved as RGB; worth knowing before picking in_chans.
        info.gray_in_rgb = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    return info


def describe_files(
    paths: Iterable[str | os.PathLike[str]], windows: Sequence[str] | None = None
) -> Iterator[FileInfo | Unreadable]:
    """`describe` each file in turn; a file that cannot be read gives an `Unreadable` and the rest go on.

    Args:
        paths: The files (an iterable, so a progress bar can wrap it).
        windows: As for `describe`.

    Yields:
        One `FileInfo` or `Unreadable` per path, in order.
    """
    for path in paths:
        try:
            yield describe(path, windows)
        except MedkitError as exc:
            yield Unreadable(file=str(path), error=exc.message, hint=exc.hint)


def _describe_archive(path: Path, info: FileInfo) -> bool:
    """Fill in a MedMNIST archive's splits, or the arrays of an archive of several; False when it holds one array."""
    from medkit.io.medmnist import load_medmnist

    try:
        data = load_medmnist(path)
    except ImageReadError:
        data = None
    if data is not None:
        info.medmnist = {
            split: SplitInfo(tuple(x.shape), tuple(y.shape), int(len(np.unique(y)))) for split, (x, y) in data.items()
        }
        first = next(iter(data.values()))[0]
        info.shape, info.dtype = tuple(first.shape), str(first.dtype)
        info.min, info.max = first.min().item(), first.max().item()
        return True
    try:
        with np.load(path, allow_pickle=False) as npz:
            if len(npz.files) > 1:  # a generic archive: list its arrays rather than guess one
                info.arrays = {k: ArrayInfo(tuple(npz[k].shape), str(npz[k].dtype)) for k in npz.files}
                return True
    except Exception:  # broken archive: read_image reports it as unreadable, naming the file
        pass
    return False


def _describe_dicom(path: Path, info: FileInfo, windows: Sequence[str] | None) -> None:
    """Add the header and, for grey-level files, the 8-bit range of each window."""
    import pydicom

    from medkit.io.dicom import dicom_windows, file_window, header_mapping

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    header = dict(header_mapping(ds))
    info.header = header
    if not str(header.get("PhotometricInterpretation") or "").startswith("MONOCHROME"):
        return  # colour: no grey-level windows
    own = bool(file_window(ds) or ds.get("VOILUTSequence"))
    if windows is None:
        names = list(CT_WINDOWS) if header.get("Modality") == "CT" else ["dicom" if own else "minmax"]
    else:
        names = [n for n in windows if n != "dicom" or own]
        if len(names) < len(windows):
            info.note = "no WindowCenter/WindowWidth or VOI LUT in the file: 'dicom' window skipped"
    if names:
        win = dicom_windows(path, names)
        info.windows = {n: (int(win[..., k].min()), int(win[..., k].max())) for k, n in enumerate(names)}


def _scalar(value: Any) -> int | float:
    # float32 extremes printed at float32 precision: -1024.0, not -1023.9999389648438
    if value.dtype.kind == "f":
        return float(f"{float(value):.7g}")
    return value.item()

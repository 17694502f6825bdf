"""DICOM: stored pixels to Hounsfield units, CT windows, header tables, and a fast windowing path.

The pipeline follows the DICOM display chain: stored value -> modality transform (RescaleSlope/Intercept, or a
Modality LUT) -> VOI window -> presentation (MONOCHROME1 is shown inverted). For CT the modality output is in
Hounsfield units (HU); radiographs (CR/DX) have no HU and use their own window (``dicom``) or ``minmax``.

`window` maps values to uint8 as ``round(255 * (clip(x, c - w/2, c + w/2) - (c - w/2)) / w)`` (halves round
up), the convention of the RSNA intracranial hemorrhage solutions; `multi_window` stacks several windows as
channels (brain, subdural and soft tissue for head CT). `dicom_windows` gives the same result from a file
several times faster: it folds bit masking, the rescale and every window into one lookup table indexed by the
raw 16-bit stored values, so the image is touched once (benchmarks/bench_dicom.py).

The window presets and name checks live in `medkit.io.windows` (no numpy, no pydicom) and are re-exported here.
pydicom is imported inside the functions. This module imports `medkit.io.windows` and `medkit.io._checks`, never
`medkit.io.readers`: the readers register `read_dicom_image` from here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, ImageReadError
from medkit.io._checks import MAX_PIXELS, check_pixels
from medkit.io.windows import FILE_WINDOWS, WINDOWS, check_window, fixed_window, parse_windows
from medkit.parallel import pool_size, process_pool

__all__ = [
    "WINDOWS",
    "FILE_WINDOWS",
    "CODECS_HINT",
    "window",
    "multi_window",
    "resolve_window",
    "parse_windows",
    "read_dicom",
    "read_dicom_image",
    "dicom_windows",
    "has_intercept_defect",
    "voi_lut",
    "file_window",
    "dicom_header",
    "dicom_headers",
    "HEADER_FIELDS",
    "header_mapping",
    "transfer_syntax_name",
]

CODECS_HINT = 'install the DICOM codecs: pip install "medkit[dicom-codecs]" (pylibjpeg) or python-gdcm'

HEADER_FIELDS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "ImagePositionPatient",
    "InstanceNumber",
    "SliceThickness",
    "PixelSpacing",
    "Modality",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
    "TransferSyntaxUID",
)


# ---------------------------------------------------------------------------------------------- windows
def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values (HU for CT) to uint8 with a linear window: ``center - width/2`` -> 0, ``center + width/2`` -> 255.

    Args:
        hu: Values after the modality rescale, any shape.
        center: Window center (level).
        width: Window width, > 0.

    Returns:
        uint8 array of the same shape: ``floor(255 * (clip(x, lo, hi) - lo) / width + 0.5)`` with lo/hi the edges.

    Raises:
        ValueError: For a width that is not positive.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = np.float32(center - width / 2.0)
    scale = np.float32(255.0 / width)
    x = np.asarray(hu, dtype=np.float32)
    y = (x - lo) * scale
    np.clip(y, 0.0, 255.0, out=y)
    y += np.float32(0.5)
    return np.floor(y, out=y).astype(np.uint8)


def resolve_window(
    name: str | tuple[float, float], ds: Any = None, *, values: np.ndarray | None = None, check_only: bool = False
) -> tuple[float, float]:
    """(center, width) for a window name, a ``"C/W"`` string or a pair.

    Args:
        name: Preset name, ``dicom``, ``minmax``, ``"C/W"`` or a (center, width) pair.
        ds: The pydicom dataset, needed for ``dicom`` (first value of multi-valued WindowCenter/WindowWidth).
        values: The modality values, needed for ``minmax``.
        check_only: Only validate the name (returns (0, 1) for file windows).

    Raises:
        UnknownWindowError: For an unknown name (see `medkit.io.windows.check_window`).
        DataError: When ``dicom`` is asked for a file without WindowCenter/WindowWidth.
    """
    if not isinstance(name, str):
        c, w = name  # a (center, width) pair
        return float(c), float(w)
    fixed = fixed_window(name)
    if fixed is not None:
        return fixed
    check_window(name)  # raises for anything but the file windows, with a suggestion
    if check_only:
        return 0.0, 1.0
    if name == "dicom":
        cw = file_window(ds)
        if cw is None:
            raise DataError(
                f"{_ds_name(ds)}: no WindowCenter/WindowWidth in the file for the 'dicom' window",
                hint="pick a preset (brain, bone, lung, ...), 'minmax', or CENTER/WIDTH",
            )
        return cw
    if values is None or values.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.min(values)), float(np.max(values))
    return (lo + hi) / 2.0, max(hi - lo, 1e-6)


def file_window(ds: Any) -> tuple[float, float] | None:
    """The file's own WindowCenter/WindowWidth (the first pair when the tags are multi-valued), or None."""
    if ds is None:
        return None
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None or c == "" or w == "":
        return None
    c = _first(c)
    w = _first(w)
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def multi_window(
    hu: np.ndarray, names: Sequence[str | tuple[float, float]], ds: Any = None, *, inverted: bool | None = None
) -> np.ndarray:
    """Stack several windows of one image as channels: (H, W) -> (H, W, len(names)) uint8.

    Args:
        hu: (H, W) values after rescale (HU for CT).
        names: Window names (see `parse_windows`) or (center, width) pairs, e.g. brain, subdural, soft_tissue.
        ds: The pydicom dataset, for the ``dicom`` window.
        inverted: Whether MONOCHROME1 values were inverted (as `read_image` returns them). None: inverted when
            ``ds`` is MONOCHROME1. The file's own window (or VOI LUT) is defined on the values before inversion,
            so for inverted values it is mirrored, which gives what a viewer shows (up to rounding of halves).

    Returns:
        uint8 (H, W, len(names)); channel k is `window` with the k-th window.
    """
    hu = np.asarray(hu)
    out = np.empty((*hu.shape, len(names)), dtype=np.uint8)
    mirror = None
    mono1 = ds is not None and str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if mono1 and inverted is not False:
        mirror = _monochrome1_pivot(ds)
    for k, name in enumerate(names):
        if name == "dicom" and _uses_voi_lut(ds):
            out[..., k] = voi_lut(hu, ds) if mirror is None else 255 - voi_lut(mirror - hu, ds)
            continue
        c, w = resolve_window(name, ds, values=hu)
        if name == "dicom" and mirror is not None:
            c = mirror - c
        out[..., k] = window(hu, c, w)
    return out


def _monochrome1_pivot(ds: Any) -> float | None:
    """lo + hi of the modality value range, the pivot of the MONOCHROME1 inversion in `read_dicom`."""
    if "ModalityLUTSequence" in ds:
        return None  # read_dicom inverts such files about the image's own range, unknown here
    m = _meta(ds)
    s_lo, s_hi = _stored_range(m)
    return (s_lo * m.slope + m.intercept) + (s_hi * m.slope + m.intercept)


def _uses_voi_lut(ds: Any) -> bool:
    # A VOI LUT Sequence (common on CR/DX) stands in for the window when the file has no WindowCenter/Width.
    return ds is not None and file_window(ds) is None and bool(ds.get("VOILUTSequence"))


def voi_lut(values: np.ndarray, ds: Any) -> np.ndarray:
    """Apply the file's first VOI LUT (VOILUTSequence) to modality values and scale its output to uint8.

    Args:
        values: Modality values (after rescale), any shape.
        ds: The pydicom dataset holding the VOI LUT Sequence.

    Returns:
        uint8 array: ``LUTData[clip(round(x) - first_mapped, 0, entries - 1)]`` scaled from the table's
        2^bits - 1 range to 0..255.
    """
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2^16 entries
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype="<u2").astype(np.float64)
    else:
        table = np.asarray(data if isinstance(data, (list, tuple)) or hasattr(data, "__len__") else [data], np.float64)
    table = table[:entries]
    idx = np.clip(np.rint(np.asarray(values, dtype=np.float64)) - first, 0, len(table) - 1).astype(np.int64)
    top = float((1 << bits) - 1) if bits > 0 else float(table.max() or 1)
    y = table[idx] * (255.0 / top)
    return np.floor(np.clip(y, 0, 255) + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- pixels
def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _ds_name(ds: Any) -> str:
    return str(getattr(ds, "filename", None) or "DICOM dataset")


def _dcmread(path: Path, **kw: Any) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file", hint="check the path")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)", hint="the file was not fully written; copy it again")
    try:
        return pydicom.dcmread(path, **kw)
    except InvalidDicomError:
        # Some exports leave out the 128-byte preamble and 'DICM'; the data set itself may still be fine.
        try:
            return pydicom.dcmread(path, force=True, **kw)
        except Exception as exc:
            raise ImageReadError(f"{path}: not a DICOM file ({exc})", hint="check the file type") from exc
    except Exception as exc:
        raise ImageReadError(
            f"{path}: cannot parse DICOM ({type(exc).__name__}: {exc})",
            hint="the file is truncated or corrupt; re-download or re-export it",
        ) from exc


def _is_compressed(ds: Any) -> bool:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(tsuid is not None and tsuid.is_compressed)


def _transfer_syntax(ds: Any) -> str:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return f"{tsuid.name} ({tsuid})" if tsuid is not None else "unknown transfer syntax"


def _pixel_array(ds: Any, path: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(
            f"{path}: DICOM has no pixel data (a {ds.get('Modality', '?')} {ds.get('SOPClassUID', '')} object)",
            hint="it is a report, presentation state or similar object, not an image; leave it out of the data",
        )
    try:
        return ds.pixel_array
    except Exception as exc:
        msg = str(exc)
        if _is_compressed(ds) and ("plugin" in msg or "dependenc" in msg or "not supported" in msg or "install" in msg):
            raise ImageReadError(
                f"{path}: cannot decode {_transfer_syntax(ds)} pixel data: no decoder installed",
                hint=CODECS_HINT,
            ) from exc
        raise ImageReadError(
            f"{path}: cannot decode the pixel data ({type(exc).__name__}: {exc})",
            hint="the file is truncated or corrupt; re-download it"
            + (f" (or {CODECS_HINT})" if _is_compressed(ds) else ""),
        ) from exc


@dataclasses.dataclass(frozen=True)
class _Meta:
    """The pixel-module tags, read once: each pydicom attribute access costs microseconds."""

    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    rows: int
    cols: int
    frames: int
    modality: str
    slope: float
    intercept: float
    has_intercept: bool
    modality_lut: bool
    compressed: bool
    little_endian: bool


def _meta(ds: Any) -> _Meta:
    def num(name: str, default: int) -> int:
        value = ds.get(name, default)
        try:
            return int(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return default

    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits_allocated = num("BitsAllocated", 16)
    slope, intercept = _rescale(ds)
    return _Meta(
        samples=num("SamplesPerPixel", 1),
        bits_allocated=bits_allocated,
        bits_stored=num("BitsStored", bits_allocated),
        signed=num("PixelRepresentation", 0) == 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        rows=num("Rows", 0),
        cols=num("Columns", 0),
        frames=max(num("NumberOfFrames", 1), 1),
        modality=str(ds.get("Modality", "") or "").upper(),
        slope=slope,
        intercept=intercept,
        has_intercept=ds.get("RescaleIntercept") not in (None, ""),
        modality_lut="ModalityLUTSequence" in ds,
        compressed=bool(tsuid is not None and tsuid.is_compressed),
        little_endian=bool(tsuid is None or tsuid.is_little_endian),
    )


def has_intercept_defect(ds: Any) -> bool:
    """Whether a CT has the 12-bit RescaleIntercept defect of some head CT scanners (RSNA ICH data).

    In these CT files BitsStored is 12, PixelRepresentation 0 (unsigned) and RescaleIntercept is about 0 instead of
    about -1000, and the stored values are HU kept modulo 4096: air (about -1000 HU) and everything below 0 HU
    wrapped round to the top of the 12-bit range, so a naive rescale shows air as dense bone.
    """
    return _defect(_meta(ds))


def _defect(m: _Meta) -> bool:
    # Only CT (or no Modality): MR and others legitimately store 12-bit unsigned values with intercept 0.
    if not m.has_intercept or m.modality not in ("CT", ""):
        return False
    return m.bits_stored == 12 and not m.signed and int(m.intercept) > -100


def _fix_intercept(stored: np.ndarray) -> tuple[np.ndarray, float]:
    # The correction used by the RSNA intracranial hemorrhage solutions (from J. Howard's "cleaning the data"
    # kernel): add 1000, take away 4096 from what reaches 4096, and set RescaleIntercept to -1000. For the
    # 12-bit values 0..4095 this is (s + 1000) mod 4096 - 1000: values 0..3095 keep their HU, values
    # 3096..4095 unwrap to -1000..-1 HU.
    s = (stored.astype(np.int32) & 0xFFF) + 1000
    s[s >= 4096] -= 4096
    return s, -1000.0


def _rescale(ds: Any) -> tuple[float, float]:
    slope = ds.get("RescaleSlope", 1.0)
    intercept = ds.get("RescaleIntercept", 0.0)
    try:
        slope = float(_first(slope)) if slope not in (None, "") else 1.0
        intercept = float(_first(intercept)) if intercept not in (None, "") else 0.0
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    return slope, intercept


def _stored_range(m: _Meta) -> tuple[int, int]:
    if m.signed:
        return -(1 << (m.bits_stored - 1)), (1 << (m.bits_stored - 1)) - 1
    return 0, (1 << m.bits_stored) - 1


def read_dicom(
    path: str | os.PathLike[str],
    *,
    frame: int | None = None,
    rescale: bool = True,
    invert_monochrome1: bool = True,
    fix_intercept: bool = True,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Read a DICOM image as float32 modality values (HU for CT), MONOCHROME1 inverted.

    Args:
        path: The file.
        frame: One frame of a multi-frame file (default: all frames).
        rescale: Apply RescaleSlope/Intercept (or the Modality LUT Sequence). Off: the stored values.
        invert_monochrome1: For MONOCHROME1 (radiographs where low values are white) return
            ``lo + hi - x`` with lo/hi the range the stored bits can hold after rescale, so bright means dense.
        fix_intercept: Correct the 12-bit intercept defect (see `has_intercept_defect`).
        max_pixels: Refuse files with more pixels (all frames) than this (None: no limit).

    Returns:
        float32 (H, W); (frames, H, W) for multi-frame files; (H, W, 3) RGB (no rescale) for colour files.

    Raises:
        ImageReadError: For an unreadable file, missing pixel data, or a compressed transfer syntax without a
            decoder (the hint names the package to install).
    """
    path = Path(path)
    ds = _dcmread(path)
    return _values(ds, _meta(ds), path, frame, rescale, invert_monochrome1, fix_intercept, max_pixels)


def read_dicom_image(
    path: Path,
    *,
    frame: int | None = None,
    invert_monochrome1: bool = True,
    fix_intercept: bool = True,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """DICOM via pydicom: float32 after the modality rescale (HU for CT), MONOCHROME1 inverted; frames first.

    The ``dicom`` entry of `medkit.registries.READERS` (registered by `medkit.io.readers`).

    Args:
        path: The file.
        frame: Read this one frame of a multi-frame file.
        invert_monochrome1: Invert MONOCHROME1 images so that bright means dense, as for MONOCHROME2.
        fix_intercept: Correct the 12-bit RescaleIntercept defect of some head CT scanners (see `has_intercept_defect`).
        max_pixels: Refuse images with more pixels (all frames) than this (None: no limit).

    Returns:
        float32 (H, W), (frames, H, W), or (H, W, 3) / (frames, H, W, 3) for colour files.

    Raises:
        ImageReadError: As `read_dicom`.
    """
    return read_dicom(
        path, frame=frame, invert_monochrome1=invert_monochrome1, fix_intercept=fix_intercept, max_pixels=max_pixels
    )


def _values(
    ds: Any,
    m: _Meta,
    path: Path,
    frame: int | None,
    rescale: bool,
    invert_monochrome1: bool,
    fix_intercept: bool,
    max_pixels: int | None,
) -> np.ndarray:
    if max_pixels is not None and m.rows * m.cols * (1 if frame is not None else m.frames) > max_pixels:
        check_pixels(path, (m.frames, m.rows, m.cols), max_pixels)
    arr = _pixel_array(ds, path)
    if frame is not None:
        if not 0 <= frame < m.frames:
            raise ImageReadError(f"{path}: frame {frame} does not exist ({m.frames} frames)", hint="pass 0..frames-1")
        if m.frames > 1:
            arr = arr[frame]
    if m.samples > 1 or not rescale:
        return arr.astype(np.float32)
    if m.modality_lut:
        from pydicom.pixels import apply_modality_lut

        hu = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        lo, hi = float(hu.min()), float(hu.max())
    else:
        slope, intercept = m.slope, m.intercept
        if fix_intercept and _defect(m):
            arr, intercept = _fix_intercept(arr)
        hu = arr.astype(np.float32)
        hu *= np.float32(slope)
        hu += np.float32(intercept)
        s_lo, s_hi = _stored_range(m)
        lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
    if invert_monochrome1 and m.photometric == "MONOCHROME1":
        hu = np.float32(lo + hi) - hu
    return hu


# ---------------------------------------------------------------------------------------------- fast path
def _native_u16(ds: Any, m: _Meta) -> np.ndarray | None:
    """The raw 16-bit pixel words of an uncompressed single-sample file, without pydicom's decoder machinery."""
    if m.compressed or m.bits_allocated != 16 or m.samples != 1 or "PixelData" not in ds:
        return None
    data = ds.PixelData
    n = m.rows * m.cols * m.frames
    if len(data) < 2 * n:
        return None  # truncated: let pydicom produce its own error message
    arr = np.frombuffer(data, dtype="<u2" if m.little_endian else ">u2", count=n)
    return arr.reshape((m.frames, m.rows, m.cols) if m.frames > 1 else (m.rows, m.cols))


@functools.lru_cache(maxsize=64)
def _lut(
    bits: int, signed: bool, slope: float, intercept: float, defect: bool, windows: tuple[tuple[float, float], ...]
) -> np.ndarray:
    """Lookup table raw 16-bit word -> stored value -> modality value -> each window, packed for one gather.

    Returns (65536,) uint8 for one window, uint16 for two and little-endian uint32 for three or four (one byte
    per window, so one gather fetches every channel), else (65536, n) uint8. Cached: every slice of a series
    shares its parameters, so the table is built once per series.
    """
    raw = np.arange(65536, dtype=np.int64)
    stored = raw & ((1 << bits) - 1)  # bits above BitsStored may hold overlays or garbage
    if signed:
        stored = np.where(stored >= (1 << (bits - 1)), stored - (1 << bits), stored)
    if defect:
        stored, intercept = _fix_intercept(stored)
    # The same float32 operations as read_dicom, so the table equals window(read_dicom(...)) value for value.
    hu = stored.astype(np.float32)
    hu *= np.float32(slope)
    hu += np.float32(intercept)
    n = len(windows)
    planes = np.zeros((65536, 4 if n in (3, 4) else n), dtype=np.uint8)
    for k, (c, w) in enumerate(windows):
        planes[:, k] = window(hu, c, w)
    if n == 1:
        lut = planes[:, 0].copy()
    elif n == 2:
        lut = planes.view("<u2")[:, 0].copy()
    elif n in (3, 4):
        lut = planes.view("<u4")[:, 0].copy()
    else:
        lut = planes
    lut.setflags(write=False)
    return lut


def _apply_lut(lut: np.ndarray, raw: np.ndarray, n: int) -> np.ndarray:
    if lut.ndim == 2:
        return np.take(lut, raw, axis=0)
    packed = lut.take(raw)  # one gather per pixel, every window at once
    if n == 1:
        return packed[..., None]
    out = packed.view(np.uint8).reshape(*raw.shape, packed.itemsize)
    if n == 3:
        import cv2

        # Dropping the padding byte with numpy is a slow strided copy; OpenCV's RGBA->RGB is a vector copy.
        flat = out.reshape(-1, raw.shape[-1], 4)
        out = cv2.cvtColor(flat, cv2.COLOR_RGBA2RGB).reshape(*raw.shape, 3)
    return out


def dicom_windows(
    path: str | os.PathLike[str],
    names: Sequence[str | tuple[float, float]] = ("brain", "subdural", "soft_tissue"),
    *,
    fix_intercept: bool = True,
    invert_monochrome1: bool = True,
) -> np.ndarray:
    """DICOM file -> (H, W, len(names)) uint8 windows, the fast way (one lookup per pixel).

    Equal to ``multi_window(read_dicom(path), names)`` for MONOCHROME2 files. For MONOCHROME1 the windows apply
    to the modality values and the result is inverted (``255 - y``), as a DICOM viewer shows it. Uncompressed
    16-bit files go through one 65536-entry table per window; other files (compressed, 8-bit, Modality LUT,
    ``minmax``) take the float path.

    Args:
        path: The file.
        names: Window names (see `parse_windows`) or (center, width) pairs.
        fix_intercept: Correct the 12-bit intercept defect (see `has_intercept_defect`).
        invert_monochrome1: Invert the windowed output of MONOCHROME1 files.

    Returns:
        uint8 (H, W, len(names)); (frames, H, W, len(names)) for multi-frame files.
    """
    path = Path(path)
    ds = _dcmread(path)
    names = list(names)
    m = _meta(ds)
    if m.samples > 1:
        raise DataError(
            f"{path}: colour DICOM ({m.photometric}) has no grey-level windows",
            hint="read it with read_image(path), which returns (H, W, 3)",
        )
    raw = None
    lut_ok = "minmax" not in names and not m.modality_lut and not ("dicom" in names and _uses_voi_lut(ds))
    if lut_ok and m.bits_allocated == 16:
        raw = _native_u16(ds, m)
        if raw is None and m.compressed:
            decoded = _pixel_array(ds, path)
            raw = decoded.view(np.uint16) if decoded.dtype.itemsize == 2 else None
    if raw is not None:
        windows = tuple(resolve_window(name, ds) for name in names)
        defect = bool(fix_intercept and _defect(m))
        lut = _lut(m.bits_stored, m.signed, m.slope, m.intercept, defect, windows)
        out = _apply_lut(lut, raw, len(names))
    else:
        values = _values(ds, m, path, None, True, False, fix_intercept, None)
        if m.frames > 1:
            out = np.stack([multi_window(v, names, ds, inverted=False) for v in values])
        else:
            out = multi_window(values, names, ds, inverted=False)
    if invert_monochrome1 and m.photometric == "MONOCHROME1":
        np.subtract(np.uint8(255), out, out=out)
    return out


# ---------------------------------------------------------------------------------------------- headers
def _header_value(ds: Any, name: str) -> Any:
    if name == "TransferSyntaxUID":
        tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        return str(tsuid) if tsuid is not None else None
    value = ds.get(name)
    if value is None or value == "":
        return None
    if name in ("ImagePositionPatient", "PixelSpacing"):
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None
    if name in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "SliceThickness"):
        try:
            return float(_first(value))
        except (TypeError, ValueError):
            return None
    if name in ("InstanceNumber", "BitsStored", "PixelRepresentation", "Rows", "Columns"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return str(value)


def dicom_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header fields medkit uses, read without the pixel data.

    Args:
        path: The file.

    Returns:
        ``{field: value}`` for each of `HEADER_FIELDS` (None when absent): UIDs and names as str;
        ImagePositionPatient (x, y, z) and PixelSpacing (row, column) as float tuples; WindowCenter/WindowWidth
        the first value when multi-valued; integers for InstanceNumber, BitsStored, PixelRepresentation, Rows,
        Columns.

    Raises:
        ImageReadError: When the file cannot be parsed as DICOM.
    """
    ds = _dcmread(Path(path), stop_before_pixels=True)
    return {name: _header_value(ds, name) for name in HEADER_FIELDS}


def _header_row(path: str) -> dict[str, Any]:
    try:
        row = dicom_header(path)
        row["error"] = None
    except ImageReadError as exc:
        row = {name: None for name in HEADER_FIELDS}
        row["error"] = exc.message
    return {"path": path, **row}


def dicom_headers(paths: Iterable[str | os.PathLike[str]], workers: int | None = None, errors: str = "raise") -> Any:
    """Header fields of many files as a table, read in parallel processes.

    Args:
        paths: DICOM files.
        workers: Processes (None: every usable core, see `medkit.parallel.pool_size`; 0 or 1: in this process).
        errors: ``"raise"`` on the first unreadable file, or ``"record"`` its message in an ``error`` column.

    Returns:
        pandas DataFrame, one row per path in input order: ``path``, the `HEADER_FIELDS` with
        ImagePositionPatient split into ``ImagePositionPatient_x/_y/_z`` and PixelSpacing into
        ``PixelSpacing_row/_col`` (flat columns for CSV), and ``error`` when ``errors="record"``.

    Raises:
        ImageReadError: For an unreadable file when ``errors="raise"``.
    """
    import pandas as pd

    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    items = [os.fspath(p) for p in paths]
    workers = pool_size(workers, len(items))
    # Process start-up costs more than parsing a few dozen headers.
    if workers <= 1 or len(items) < 64:
        rows = [_header_row(p) for p in items]
    else:
        with process_pool(workers) as pool:  # workers die with this process; Ctrl-C stops them at once
            rows = list(pool.map(_header_row, items, chunksize=max(1, len(items) // (workers * 8))))
    if errors == "raise":
        for row in rows:
            if row["error"]:
                raise ImageReadError(row["error"], hint="pass errors='record' to list every unreadable file")
    frame = pd.DataFrame(rows, columns=["path", *HEADER_FIELDS, "error"])
    for col, parts in (("ImagePositionPatient", ("x", "y", "z")), ("PixelSpacing", ("row", "col"))):
        values = frame.pop(col).tolist()
        at = (
            frame.columns.get_loc("InstanceNumber")
            if col == "ImagePositionPatient"
            else frame.columns.get_loc("Modality")
        )
        for i, part in reversed(list(enumerate(parts))):
            frame.insert(at, f"{col}_{part}", [v[i] if v is not None and len(v) > i else np.nan for v in values])
    if errors == "raise":
        frame = frame.drop(columns="error")
    return frame


def header_mapping(ds: Any) -> Mapping[str, Any]:
    """Header fields of an already read dataset (same keys as `dicom_header`)."""
    return {name: _header_value(ds, name) for name in HEADER_FIELDS}


def transfer_syntax_name(uid: str) -> str:
    """The name of a transfer syntax UID (``"1.2.840.10008.1.2.1"`` -> ``"Explicit VR Little Endian"``).

    Args:
        uid: The TransferSyntaxUID as a string (what `dicom_header` returns).

    Returns:
        pydicom's name for it, or the UID itself when pydicom does not know it.
    """
    from pydicom.uid import UID

    return UID(uid).name

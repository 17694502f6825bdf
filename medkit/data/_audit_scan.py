"""The per-file half of `medkit audit`: read one image, return a small summary (never the pixels).

`summarize_file` runs in worker processes, so everything it returns is plain Python (numbers, strings, tuples)
and cheap to send back: intensity statistics on the file's own scale, an exact pixel digest, a perceptual hash,
the shape, and for DICOM the header fields the header checks need.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarize_file", "summarize_array", "summarize_chunk", "DICOM_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_LEVEL_BINS = 4096  # float and wide-integer images are binned this finely for percentiles and the mode


def _gray(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A 2-D (or frame-stack) grey view, the stored channel count and the effective one (1 for grey content)."""
    channels_last = arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4) or arr.ndim == 4
    if not channels_last:
        return arr, 1, 1
    c = arr.shape[-1]
    if c == 1:
        return arr[..., 0], 1, 1
    base = arr[..., 0]
    colour = 0 if c < 3 else 3
    if c >= 3 and np.array_equal(base, arr[..., 1]) and np.array_equal(base, arr[..., 2]):
        colour = 0
    alpha = 0
    if c in (2, 4):
        a = arr[..., -1]
        full = np.iinfo(a.dtype).max if np.issubdtype(a.dtype, np.integer) else 1.0
        alpha = 0 if np.all(a == full) else 1
    eff = (colour or 1) + alpha
    if colour:
        gray = (0.299 * arr[..., 0].astype(np.float32) + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]).astype(np.float32)
    else:
        gray = base
    return gray, c, eff


def _digest(arr: np.ndarray, gray_content: bool) -> str:
    """Digest of the pixel values alone: the same picture in PNG, TIFF or NPY, grey or grey-as-RGB, matches."""
    a = arr[..., 0] if gray_content and arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) else arr
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            a = a.astype(np.uint8, copy=False)
        elif lo >= 0 and hi <= 65535:
            a = a.astype(np.uint16, copy=False)
        else:
            a = a.astype(np.int64, copy=False)
    else:
        a = a.astype(np.float32, copy=False)
    h = hashlib.sha256()  # SHA-NI makes it about twice as fast as blake2b here
    h.update(repr((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:32]


def _level_stats(gray: np.ndarray) -> dict[str, float]:
    """min, max, 1st/99th percentile, mean, std, share of the commonest level and entropy on the image's own range."""
    x = gray.ravel()
    if x.dtype == bool:
        x = x.astype(np.uint8)
    n = x.size
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            x = x[finite]
            n = x.size
    if n == 0:
        return {
            "min": 0.0,
            "max": 0.0,
            "p01": 0.0,
            "p99": 0.0,
            "mean": 0.0,
            "std": 0.0,
            "mode_frac": 1.0,
            "entropy": 0.0,
        }
    if x.dtype in (np.uint8, np.uint16):
        hist = np.bincount(x, minlength=256 if x.dtype == np.uint8 else 65536)
        levels = np.arange(len(hist), dtype=np.float64)
        lo_level, step = 0.0, 1.0
    else:
        mn, mx = float(x.min()), float(x.max())
        step = (mx - mn) / (_LEVEL_BINS - 1) if mx > mn else 1.0
        q = ((x.astype(np.float64) - mn) / step).astype(np.int64) if mx > mn else np.zeros(n, np.int64)
        hist = np.bincount(q, minlength=_LEVEL_BINS)
        levels = mn + np.arange(len(hist), dtype=np.float64) * step
        lo_level = mn
    nz = np.flatnonzero(hist)
    vmin, vmax = float(levels[nz[0]]), float(levels[nz[-1]])
    cum = np.cumsum(hist)
    p01 = float(levels[np.searchsorted(cum, 0.01 * n)])
    p99 = float(levels[min(np.searchsorted(cum, 0.99 * n), len(hist) - 1)])
    w = hist[nz].astype(np.float64)
    vals = levels[nz]
    mean = float((w * vals).sum() / n)
    std = float(np.sqrt(max((w * (vals - mean) ** 2).sum() / n, 0.0)))
    mode_frac = float(w.max() / n)
    # Entropy over 256 bins spanning the image's own range: 0 for a constant image, 1 bit for a two-level mask,
    # 5-7 bits for a natural image whatever its bit depth or brightness.
    span = nz[-1] - nz[0] + 1
    bins = ((nz - nz[0]) * 256 // span) if span > 256 else (nz - nz[0])
    p = np.bincount(bins, weights=w) / n
    p = p[p > 0]
    entropy = float(-(p * np.log2(p)).sum())
    del lo_level, step
    return {
        "min": vmin,
        "max": vmax,
        "p01": p01,
        "p99": p99,
        "mean": mean,
        "std": std,
        "mode_frac": mode_frac,
        "entropy": entropy,
    }


def _thumb16(gray: np.ndarray) -> bytes:
    """16x16 thumbnail (from the 32x32 pHash input) on its own range, as 256 bytes (checks pHash matches cheaply)."""
    import cv2

    t = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA)
    lo, hi = float(t.min()), float(t.max())
    if hi <= lo:
        return bytes(256)
    return np.round((t - lo) * (255.0 / (hi - lo))).astype(np.uint8).tobytes()


def _dicom_fields(path: Path) -> dict[str, Any]:
    """Header fields for the DICOM checks, kept raw enough to see multi-valued or missing tags."""
    import pydicom

    ds = pydicom.dcmread(path, force=True)

    def num(name: str) -> float | None:
        v = ds.get(name)
        if v is None or v == "":
            return None
        try:
            return float(v[0] if type(v).__name__ == "MultiValue" else v)
        except (TypeError, ValueError, IndexError):
            return None

    def window(name: str) -> tuple[str, int]:
        v = ds.get(name)
        if v is None or v == "":
            return "", 0
        if type(v).__name__ == "MultiValue":
            return "\\".join(str(x) for x in v), len(v)
        return str(v), 1

    pos = ds.get("ImagePositionPatient")
    try:
        z = float(pos[2]) if pos is not None and len(pos) >= 3 else None
    except (TypeError, ValueError):
        z = None
    wc, nwc = window("WindowCenter")
    ww, nww = window("WindowWidth")
    from medkit.data.dicom import has_intercept_defect

    return {
        "raw_range": _raw_words_range(ds),
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or "").upper(),
        "bits_stored": num("BitsStored"),
        "bits_allocated": num("BitsAllocated"),
        "pixel_representation": num("PixelRepresentation"),
        "slope": num("RescaleSlope"),
        "intercept": num("RescaleIntercept"),
        "window_center": wc,
        "window_width": ww,
        "window_values": max(nwc, nww),
        "series": str(ds.get("SeriesInstanceUID", "") or ""),
        "instance": num("InstanceNumber"),
        "z": z,
        "intercept_defect": bool(has_intercept_defect(ds)),
    }


def _raw_words_range(ds: Any) -> tuple[float, float] | None:
    """min/max of the 16-bit words as stored (uncompressed files): pydicom masks bits above HighBit, this does not."""
    try:
        tsuid = ds.file_meta.TransferSyntaxUID
        if tsuid.is_compressed or not tsuid.is_little_endian or "PixelData" not in ds:
            return None
        if int(ds.get("BitsAllocated", 0) or 0) != 16 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return None
        words = np.frombuffer(ds.PixelData, dtype="<i2" if int(ds.get("PixelRepresentation", 0) or 0) else "<u2")
        return (float(words.min()), float(words.max())) if words.size else None
    except Exception:
        return None


def _stored_range(dcm: dict[str, Any], vmin: float, vmax: float) -> tuple[float, float] | None:
    """Stored (pre-rescale) pixel range of a single-sample DICOM: the raw words, else undoing the reader's rescale."""
    if dcm.get("raw_range") is not None:
        return dcm["raw_range"]
    if dcm.get("intercept_defect"):
        return None  # the reader rewrote the values; the defect is its own finding
    slope = dcm.get("slope") or 1.0
    intercept = dcm.get("intercept") or 0.0
    if dcm.get("photometric") == "MONOCHROME1":
        bits = int(dcm.get("bits_stored") or 16)
        signed = int(dcm.get("pixel_representation") or 0) == 1
        s_lo, s_hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
        vmin, vmax = lo + hi - vmax, lo + hi - vmin
    a, b = (vmin - intercept) / slope, (vmax - intercept) / slope
    return (min(a, b), max(a, b))


def summarize_array(arr: np.ndarray, dicom: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of an image array (see `summarize_file`), without the file-level fields."""
    from medkit.data.phash import phash64_small, resize32

    stack = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4))
    gray, channels, eff = _gray(arr)
    rec: dict[str, Any] = {
        "height": int(arr.shape[1] if stack else arr.shape[0]),
        "width": int(arr.shape[2] if stack else arr.shape[1]),
        "frames": int(arr.shape[0]) if stack else 1,
        "channels": channels,
        "eff_channels": eff,
        "dtype": str(arr.dtype),
    }
    rec.update(_level_stats(gray))
    rec["digest"] = _digest(arr, eff == 1)
    mid = gray[gray.shape[0] // 2] if stack else gray
    small = resize32(mid)
    rec["phash"] = phash64_small(small)
    rec["thumb"] = _thumb16(small)
    rec["tissue_frac"] = None
    if dicom is not None:
        rec["dicom"] = dicom
        if dicom.get("modality") == "CT":
            # Air is about -1000 HU and scanner padding lower still; anything above -500 HU is body.
            rec["tissue_frac"] = float(np.count_nonzero(gray > -500) / max(gray.size, 1))
        if channels == 1:
            rec["stored_range"] = _stored_range(dicom, rec["min"], rec["max"])
    return rec


def _quiet_cv2() -> None:
    """Silence OpenCV's own stderr warnings (a truncated PNG): the audit reports the file itself."""
    import contextlib

    import cv2

    with contextlib.suppress(AttributeError):  # builds without the logging module
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def summarize_file(path: str) -> dict[str, Any]:
    """Read one image and summarise it; unreadable files come back with ``ok=False`` and the reason.

    Args:
        path: The image file.

    Returns:
        ``{"path", "ok", "error", "bytes", height, width, frames, channels, eff_channels, dtype, min, max, p01,
        p99, mean, std, mode_frac, entropy, digest, phash, tissue_frac[, dicom, stored_range]}``.
    """
    from medkit.data.readers import ImageReadError, read_image
    from medkit.errors import MedkitError

    _quiet_cv2()
    p = Path(path)
    rec: dict[str, Any] = {"path": path, "ok": False, "error": None}
    try:
        rec["bytes"] = p.stat().st_size
        dicom = _dicom_fields(p) if p.suffix.lower() in DICOM_SUFFIXES and rec["bytes"] > 0 else None
    except Exception:  # an unparsable header is reported by the reader below with a better message
        dicom = None
    try:
        arr = read_image(p)
    except (ImageReadError, MedkitError) as exc:
        rec["error"] = exc.message
        return rec
    except Exception as exc:  # a decoder crash on a corrupt file must not end the audit
        rec["error"] = f"{p}: {type(exc).__name__}: {exc}"
        return rec
    if arr.size == 0:
        rec["error"] = f"{p}: the image has no pixels (shape {arr.shape})"
        return rec
    try:
        rec.update(summarize_array(arr, dicom))
    except Exception as exc:
        rec["error"] = f"{p}: cannot summarise the pixels ({type(exc).__name__}: {exc})"
        return rec
    rec["ok"] = True
    return rec


def summarize_chunk(paths: list[str]) -> list[dict[str, Any]]:
    """`summarize_file` over a chunk of paths (one task per chunk keeps inter-process traffic small)."""
    return [summarize_file(p) for p in paths]

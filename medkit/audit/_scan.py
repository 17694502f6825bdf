"""The per-file half of `medkit audit`: read one image, return a small summary (never the pixels).

`summarize_file` runs in worker processes, so everything it returns is plain Python (numbers, strings, tuples)
and cheap to send back: intensity statistics on the file's own scale, an exact pixel digest, a perceptual hash,
the shape, and for DICOM the header fields the header checks need.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medkit.audit.align import align_thumb
from medkit.audit.phash import phash64_small, resize32
from medkit.errors import MedkitError

# Imported here, in the parent, before the pool forks: the workers inherit OpenCV and the readers instead of each
# importing them again (about 50 ms of CPU per worker).
from medkit.io import readers
from medkit.io._checks import quiet_native_stderr

__all__ = [
    "summarize_file",
    "summarize_array",
    "summarize_member",
    "summarize_chunk",
    "archive_array",
    "init_worker",
    "DICOM_SUFFIXES",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_LEVEL_BINS = 4096  # float and wide-integer images are binned this finely for percentiles and the mode
_STATS_BLOCK = 1 << 22  # float pixels binned at a time (bounds the temporaries of a large image)
_EXACT_F32 = 1 << 24  # pixel counts up to this are exact in float32 (cv2.calcHist's output type)
_CV2_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif")  # what medkit's png and jpeg readers take


#: Grey stored as colour with a little noise (a few grey levels off between channels, from a lossy or colour-managed
#: export) is still grey: the channels may differ by at most this much anywhere, and this much on average (both on
#: a 0..255 scale). Real colour (stains, overlays, photographs) differs by tens of levels.
GREY_MAX_DIFF = 12.0
GREY_MEAN_DIFF = 1.0


def _channel_diff(arr: np.ndarray) -> tuple[float, float]:
    """Largest and mean absolute difference of channels 1 and 2 from channel 0, on a 0..255 scale.

    One channel-sized temporary at a time (cv2.absdiff keeps the dtype), so a large image costs no float copy.
    """
    scale = 255.0 / 65535.0 if arr.dtype == np.uint16 else 1.0
    dmax, dmean = 0.0, 0.0
    base = np.ascontiguousarray(arr[..., 0]) if arr.dtype in (np.uint8, np.uint16) else None
    for c in (1, 2):
        if base is not None:
            d = cv2.absdiff(base, np.ascontiguousarray(arr[..., c]))
            dmax = max(dmax, float(d.max()))
            dmean = max(dmean, float(cv2.mean(d)[0]))
        else:
            d = np.abs(arr[..., 0].astype(np.float64) - arr[..., c])
            dmax, dmean = max(dmax, float(np.nanmax(d))), max(dmean, float(np.nanmean(d)))
        del d
    if base is None and arr.dtype.kind == "f" and np.nanmax(np.abs(arr[..., :3])) <= 1.0:
        scale = 255.0
    return dmax * scale, dmean * scale


def _to_grey(arr: np.ndarray) -> np.ndarray:
    """Luma of an RGB(A) image in its own dtype for 8/16-bit and float32 data (no float copy), else float32."""
    if arr.dtype in (np.uint8, np.uint16, np.float32):
        code = cv2.COLOR_RGB2GRAY if arr.shape[-1] == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(arr), code)
    return (0.299 * arr[..., 0].astype(np.float32) + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]).astype(np.float32)


def _gray(arr: np.ndarray) -> tuple[np.ndarray, int, int, bool, tuple[float, float] | None]:
    """A 2-D (or frame-stack) grey view, the stored and effective channel counts (1 for grey content), whether
    the colour channels are exactly equal, and their measured difference (None for one stored channel).
    """
    channels_last = arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4) or arr.ndim == 4
    if not channels_last:
        return arr, 1, 1, True, None
    c = arr.shape[-1]
    if c == 1:
        return arr[..., 0], 1, 1, True, None
    base = arr[..., 0]
    colour = 0 if c < 3 else 3
    exact = c < 3
    diff: tuple[float, float] | None = None
    if c >= 3:
        exact = np.array_equal(base, arr[..., 1]) and np.array_equal(base, arr[..., 2])
        diff = (0.0, 0.0) if exact else _channel_diff(arr)
        if diff[0] <= GREY_MAX_DIFF and diff[1] <= GREY_MEAN_DIFF:
            colour = 0
    alpha = 0
    if c in (2, 4):
        a = arr[..., -1]
        full = np.iinfo(a.dtype).max if np.issubdtype(a.dtype, np.integer) else 1.0
        alpha = 0 if np.all(a == full) else 1
    eff = (colour or 1) + alpha
    if exact or arr.ndim == 4:
        gray = base if exact else (0.299 * base.astype(np.float32) + 0.587 * arr[..., 1] + 0.114 * arr[..., 2])
    else:
        gray = _to_grey(arr)
    return gray, c, eff, exact, diff


def _digest(arr: np.ndarray, gray_content: bool) -> str:
    """Digest of the pixel values alone: the same picture in PNG, TIFF or NPY, grey or grey-as-RGB, matches."""
    a = arr[..., 0] if gray_content and arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) else arr
    if a.dtype == bool:
        a = a.view(np.uint8)
    elif a.dtype != np.uint8 and np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            a = a.astype(np.uint8, copy=False)
        elif lo >= 0 and hi <= 65535:
            a = a.astype(np.uint16, copy=False)
        else:
            a = a.astype(np.int64, copy=False)
    elif a.dtype != np.uint8:
        a = a.astype(np.float32, copy=False)
    h = hashlib.sha256()  # SHA-NI makes it about twice as fast as blake2b here
    h.update(repr((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:32]


def _histogram(x: np.ndarray) -> np.ndarray:
    """Pixel count per level of a flat uint8 or uint16 array, as int64."""
    if x.size > _EXACT_F32:
        # In blocks: np.bincount widens every pixel to intp (8 bytes) first, calcHist counts in float32.
        return sum((_histogram(x[lo : lo + _EXACT_F32]) for lo in range(0, x.size, _EXACT_F32)), np.int64(0))
    if x.dtype == np.uint8:
        # calcHist counts 8-bit data about twice as fast as np.bincount; its float32 counts are exact below 2**24.
        return cv2.calcHist([x.reshape(1, -1)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(x, minlength=256 if x.dtype == np.uint8 else 65536)


def _level_stats(gray: np.ndarray) -> dict[str, float]:
    """min, max, 1st/99th percentile, mean, std, share of the commonest level and entropy on the image's own range.

    Everything comes from one histogram: exact for 8- and 16-bit data, 4096 levels between min and max otherwise.
    """
    x = gray.ravel()
    if x.dtype == bool:
        x = x.view(np.uint8)
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
        hist = _histogram(x)
        nz = np.flatnonzero(hist)
        vals = nz.astype(np.float64)  # the levels are the values themselves
        vmin, vmax = float(vals[0]), float(vals[-1])
    else:
        mn, mx = float(x.min()), float(x.max())
        step = (mx - mn) / (_LEVEL_BINS - 1) if mx > mn else 1.0
        hist = np.zeros(_LEVEL_BINS, dtype=np.int64)
        # In blocks: a float64 and an int64 copy of a whole large image would be 16 bytes per pixel.
        for lo in range(0, n, _STATS_BLOCK):
            part = x[lo : lo + _STATS_BLOCK]
            q = ((part.astype(np.float64) - mn) / step).astype(np.int64) if mx > mn else np.zeros(len(part), np.int64)
            hist += np.bincount(q, minlength=_LEVEL_BINS)[:_LEVEL_BINS]
        levels = mn + np.arange(len(hist), dtype=np.float64) * step
        nz = np.flatnonzero(hist)
        vals = levels[nz]
        # The true extremes, not their levels: (mx - mn) / step may round to just below the top level.
        vmin, vmax = mn, mx
    w = hist[nz].astype(np.float64)
    # Percentiles from the cumulative counts of the occupied levels only (a 16-bit histogram is mostly empty).
    cum = np.cumsum(hist[nz])
    p01 = float(vals[min(np.searchsorted(cum, 0.01 * n), len(nz) - 1)])
    p99 = float(vals[min(np.searchsorted(cum, 0.99 * n), len(nz) - 1)])
    mean = float((w * vals).sum() / n)
    std = float(np.sqrt(max((w * (vals - mean) ** 2).sum() / n, 0.0)))
    mode_frac = float(w.max() / n)
    # Entropy over 256 bins spanning the image's own range: 0 for a constant image, 1 bit for a two-level mask,
    # 5-7 bits for a natural image whatever its bit depth or brightness.
    span = nz[-1] - nz[0] + 1
    if span > 256:
        p = np.bincount((nz - nz[0]) * 256 // span, weights=w) / n
        p = p[p > 0]
    else:
        p = w / n  # one occupied level per bin already (always so for 8-bit data)
    entropy = float(-(p * np.log2(p)).sum())
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
    from medkit.io.dicom import has_intercept_defect

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
    stack = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4))
    gray, channels, eff, exact_grey, diff = _gray(arr)
    rec: dict[str, Any] = {
        "height": int(arr.shape[1] if stack else arr.shape[0]),
        "width": int(arr.shape[2] if stack else arr.shape[1]),
        "frames": int(arr.shape[0]) if stack else 1,
        "channels": channels,
        "eff_channels": eff,
        "dtype": str(arr.dtype),
        "chan_diff": diff,
    }
    rec.update(_level_stats(gray))
    rec["digest"] = _digest(arr, exact_grey and eff == 1)
    mid = gray[gray.shape[0] // 2] if stack else gray
    small = resize32(mid)
    rec["phash"] = phash64_small(small)
    rec["thumb"] = _thumb16(small)
    rec["align"] = align_thumb(mid)  # crops and shifts: medkit.audit.align
    rec["tissue_frac"] = None
    if dicom is not None:
        rec["dicom"] = dicom
        if dicom.get("modality") == "CT":
            # Air is about -1000 HU and scanner padding lower still; anything above -500 HU is body.
            rec["tissue_frac"] = float(np.count_nonzero(gray > -500) / max(gray.size, 1))
        if channels == 1:
            rec["stored_range"] = _stored_range(dicom, rec["min"], rec["max"])
    return rec


_WORKER_READY: list[bool] = []


def init_worker() -> None:
    """Prepare this process to summarise files: OpenCV's own warnings off (the audit reports the file itself)."""
    with contextlib.suppress(AttributeError):  # builds without the logging module
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    _WORKER_READY.append(True)


def _read_cv2_fast(path: str) -> np.ndarray | None:
    """A PNG or JPEG decoded as `medkit.io.readers` returns it (RGB order), or None to let the reader decide.

    The reader re-checks what the audit already knows (the file exists, is not empty, has a known suffix);
    skipping that saves about 5% of the per-file time on small images. Anything out of the ordinary (an undecodable
    file, too many pixels or bytes) returns None, and the reader then raises its own error naming the file.
    """
    data = np.fromfile(path, dtype=np.uint8)
    header = readers.png_header(data[:32].tobytes())
    if header is not None:
        (h, w), channels, itemsize = header
        if h * w > readers.MAX_PIXELS or h * w * channels * itemsize > readers.MAX_BYTES:
            return None  # refuse before decoding, as the reader does
    with quiet_native_stderr():
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    del data
    if img is None or img.shape[0] * img.shape[1] > readers.MAX_PIXELS or img.nbytes > readers.MAX_BYTES:
        return None
    return readers.rgb_order(img, inplace=True)


def summarize_file(path: str) -> dict[str, Any]:
    """Read one image and summarise it; unreadable files come back with ``ok=False`` and the reason.

    Args:
        path: The image file.

    Returns:
        ``{"path", "ok", "error", "bytes", height, width, frames, channels, eff_channels, dtype, min, max, p01,
        p99, mean, std, mode_frac, entropy, digest, phash, tissue_frac[, dicom, stored_range]}``.
    """
    if not _WORKER_READY:
        init_worker()
    p = Path(path)
    rec: dict[str, Any] = {"path": path, "ok": False, "error": None}
    try:
        rec["bytes"] = p.stat().st_size
        dicom = _dicom_fields(p) if p.suffix.lower() in DICOM_SUFFIXES and rec["bytes"] > 0 else None
    except Exception:  # an unparsable header is reported by the reader below with a better message
        dicom = None
    try:
        arr = None
        if rec.get("bytes") and p.suffix.lower() in _CV2_SUFFIXES:
            # Whatever goes wrong here goes wrong again in the reader, which words the error properly.
            with contextlib.suppress(Exception):
                arr = _read_cv2_fast(path)
        if arr is None:
            arr = readers.read_image(p)
    except MedkitError as exc:
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


# Arrays of image archives (MedMNIST .npz) by (path, key). The audit loads them in the parent before the pool
# forks, so the workers share them; a spawned worker loads each array once.
_ARCHIVES: dict[tuple[str, str], np.ndarray] = {}


def archive_array(path: str, key: str) -> np.ndarray:
    """One array of a .npz archive, loaded once per process."""
    arr = _ARCHIVES.get((path, key))
    if arr is None:
        with np.load(path, allow_pickle=False) as npz:
            arr = npz[key]
        _ARCHIVES[(path, key)] = arr
    return arr


def summarize_member(item: tuple[str, str, int]) -> dict[str, Any]:
    """`summarize_file` for image ``index`` of array ``key`` in the archive ``path`` (a MedMNIST split)."""
    path, key, index = item
    rec: dict[str, Any] = {"path": f"{path}:{key}[{index}]", "ok": False, "error": None}
    try:
        arr = archive_array(path, key)[index]
    except Exception as exc:
        rec["error"] = f"{path}: cannot read image {index} of '{key}' ({type(exc).__name__}: {exc})"
        return rec
    rec["bytes"] = int(arr.nbytes)
    try:
        rec.update(summarize_array(arr))
    except Exception as exc:
        rec["error"] = f"{path}: cannot summarise image {index} of '{key}' ({type(exc).__name__}: {exc})"
        return rec
    rec["ok"] = True
    return rec


def summarize_chunk(items: list[str | tuple[str, str, int]]) -> list[dict[str, Any]]:
    """Summaries of a chunk of files and archive members (one task per chunk keeps inter-process traffic small)."""
    return [summarize_file(p) if isinstance(p, str) else summarize_member(p) for p in items]

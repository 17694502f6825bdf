"""Image readers: one function per file format behind the READERS registry, and `read_image` to pick one.

Every reader returns a numpy array, **(H, W)** for one channel or **(H, W, C)** channels-last, in the file's
own dtype (uint8, uint16, ...); DICOM gives float32 after the modality rescale (Hounsfield units for CT). Stacks
put the frame/page axis first: (N, H, W) or (N, H, W, C). docs/readers.md lists the layout of every reader.

The reader is chosen by the file suffix, else by the first bytes of the file (PNG, JPEG, TIFF, numpy and zip
signatures, ``DICM`` at offset 128). Anything unreadable raises `ImageReadError` naming the file.

The DICOM reader (`read_dicom_image`) is defined in `medkit.io.dicom` and registered here; MedMNIST archives
are `medkit.io.medmnist` (`load_medmnist`, `medmnist_image_size`, re-exported). Neither imports this module, so
the imports inside `medkit.io` run one way. cv2, tifffile and pydicom are imported inside the readers: importing
this module stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import ImageReadError, UsageError
from medkit.io._checks import (
    MAX_BYTES,
    MAX_PIXELS,
    check_bytes,
    check_file,
    check_pixels,
    quiet_native_stderr,
    quiet_tifffile,
)
from medkit.io.dicom import read_dicom_image
from medkit.io.medmnist import load_medmnist, medmnist_image_size
from medkit.registries import READERS

__all__ = [
    "rgb_order",
    "ImageReadError",
    "MAX_PIXELS",
    "MAX_BYTES",
    "png_header",
    "read_image",
    "detect_reader",
    "tiff_pages",
    "load_medmnist",
    "medmnist_image_size",
    "read_png",
    "read_jpeg",
    "read_tiff",
    "read_npy",
    "read_npz",
    "read_dicom_image",
]

# ---------------------------------------------------------------------------------------------- detection
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_DICOM_OFFSET = 128


def _head(path: Path, n: int = 132) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _matches_magic(head: bytes, magic: tuple[tuple[int, bytes], ...]) -> bool:
    return any(head[offset : offset + len(sig)] == sig for offset, sig in magic)


def detect_reader(path: str | os.PathLike[str]) -> str:
    """The registry name of the reader for a file: by suffix, else by its first bytes.

    Args:
        path: The image file.

    Returns:
        A name registered in `medkit.registries.READERS`.

    Raises:
        ImageReadError: When the file is missing or empty, or neither its suffix nor its content is known.
    """
    path = Path(path)
    check_file(path)
    return _detect(path)


def _detect(path: Path) -> str:
    suffix = path.suffix.lower()
    by_suffix, by_magic = _detection_tables()
    if suffix in by_suffix:
        return by_suffix[suffix]
    head = _head(path)
    for name, magic in by_magic:
        if _matches_magic(head, magic):
            return name
    known = sorted(by_suffix)
    raise ImageReadError(
        f"{path}: unsupported image format (suffix '{suffix or '(none)'}', content not recognised)",
        hint=f"medkit reads {', '.join(known)}; pass reader=NAME to force one (`medkit list readers`)",
    )


_TABLES: list[tuple[dict[str, str], list[tuple[str, Any]]]] = []


def _detection_tables() -> tuple[dict[str, str], list[tuple[str, Any]]]:
    # Built once: read_image runs per sample in data loaders, so detection must be cheap.
    if not _TABLES:
        entries = READERS.entries()
        by_suffix: dict[str, str] = {}
        for entry in entries:
            for suffix in entry.flags.get("suffixes", ()):
                by_suffix.setdefault(suffix.lower(), entry.name)
        by_magic = [(e.name, e.flags["magic"]) for e in entries if e.flags.get("magic")]
        _TABLES.append((by_suffix, by_magic))
    return _TABLES[0]


def read_image(path: str | os.PathLike[str], *, reader: str | None = None, **kw: Any) -> np.ndarray:
    """Read an image file into a numpy array with the reader its suffix or content calls for.

    Args:
        path: The image file.
        reader: A READERS name (``png``, ``tiff``, ``dicom``, ...) to skip detection.
        **kw: Passed to the reader (``max_pixels``, ``page`` for TIFF, ``key`` for NPZ, ``frame`` for DICOM, ...).

    Returns:
        (H, W) or (H, W, C) channels-last; stacks are (N, H, W[, C]). The file's own dtype, except DICOM
        (float32 after rescale, MONOCHROME1 inverted).

    Raises:
        ImageReadError: Naming the file when it is missing, empty, truncated, unsupported or too large.
        UnknownNameError: For a ``reader`` name that is not registered.
    """
    path = Path(path)
    check_file(path)
    name = reader or _detect(path)
    factory = READERS.get(name).factory  # not READERS.create: it drops None, and max_pixels=None means "no limit"
    try:
        return factory(path, **kw)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise UsageError(
            f"reader '{name}' does not take that option ({exc}) for {path}",
            hint=f"see the options of the {name} reader in docs/readers.md",
        ) from None


# ---------------------------------------------------------------------------------------------- cv2 formats
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}  # IHDR colour type -> channels OpenCV decodes it to


def png_header(head: bytes) -> tuple[tuple[int, int], int, int] | None:
    """``((height, width), channels, bytes per sample)`` of a PNG as OpenCV decodes it, from its first 26 bytes.

    IHDR is always the first chunk: width and height are big-endian uint32 at bytes 16..24, then the bit depth and
    the colour type. None when ``head`` is not a PNG header.
    """
    if len(head) >= 26 and head[:8] == _PNG_MAGIC:
        size = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        return size, _PNG_CHANNELS.get(head[25], 4), 2 if head[24] == 16 else 1
    return None


def _read_cv2(path: Path, kind: str, max_pixels: int | None) -> np.ndarray:
    import cv2

    # imdecode on the bytes instead of imread: imread returns None silently on non-ASCII paths on some platforms.
    data = np.fromfile(path, dtype=np.uint8)
    header = png_header(data[:32].tobytes())
    if header is not None:
        check_pixels(path, header[0], max_pixels)
        check_bytes(path, *header, max_pixels)
    with quiet_native_stderr():  # libpng prints its own "libpng error: ..." line; the error below says it
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(
            f"{path}: cannot decode as {kind} (truncated or corrupt file)",
            hint="re-download or re-export the file; `medkit inspect FILE` shows what medkit sees",
        )
    check_pixels(path, img.shape[:2], max_pixels)
    check_bytes(path, img.shape[:2], img.shape[2] if img.ndim == 3 else 1, img.dtype.itemsize, max_pixels)
    return rgb_order(img, inplace=True)


@READERS.register("png", suffixes=(".png",), magic=((0, _PNG_MAGIC),))
def read_png(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """PNG, 8- or 16-bit, gray (H, W), RGB (H, W, 3) or RGBA (H, W, 4), via OpenCV.

    Args:
        path: The file.
        max_pixels: Refuse images with more pixels than this (None: no limit).

    Returns:
        uint8 or uint16 array, channels in RGB order.
    """
    return _read_cv2(Path(path), "PNG", max_pixels)


@READERS.register("jpeg", suffixes=(".jpg", ".jpeg", ".jpe", ".jfif"), magic=((0, _JPEG_MAGIC),))
def read_jpeg(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """JPEG, gray (H, W) or RGB (H, W, 3) uint8, via OpenCV.

    Args:
        path: The file.
        max_pixels: Refuse images with more pixels than this (None: no limit).

    Returns:
        uint8 array, channels in RGB order.
    """
    return _read_cv2(Path(path), "JPEG", max_pixels)


# ---------------------------------------------------------------------------------------------- TIFF
def _tiff_levels(tf: Any) -> str:
    parts = []
    for i, page in enumerate(tf.pages):
        parts.append(f"page {i}: {'x'.join(str(s) for s in page.shape)} {page.dtype}")
    return "; ".join(parts)


@READERS.register("tiff", suffixes=(".tif", ".tiff", ".svs"), magic=tuple((0, m) for m in _TIFF_MAGICS))
def read_tiff(path: Path, *, page: int | None = None, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """TIFF via tifffile: 8/16-bit/float, gray or colour; a multi-page file of equal pages as (N, H, W[, C]).

    Args:
        path: The file.
        page: Read this one page (a pyramid level of a slide, a frame of a stack) instead of the first series.
        max_pixels: Refuse arrays with more values per channel than this (None: no limit); a whole-slide
            level 0 is refused with a hint to use `medkit tile`.

    Returns:
        The file's dtype. One page: (H, W) or (H, W, C). A stack of equal pages: (N, H, W) or (N, H, W, C).
    """
    import tifffile

    path = Path(path)
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            if page is not None:
                if not 0 <= page < len(tf.pages):
                    raise ImageReadError(
                        f"{path}: page {page} does not exist ({len(tf.pages)} pages: {_tiff_levels(tf)})",
                        hint="pass a page number from the list",
                    )
                pg = tf.pages[page]
                check_pixels(path, _planar(pg.shape, pg.axes), max_pixels, f"page {page}")
                check_bytes(path, pg.shape, 1, pg.dtype.itemsize, max_pixels)
                arr, axes = pg.asarray(), pg.axes
            else:
                series = tf.series[0]
                shape = tuple(series.shape)
                pages = tf.pages
                slide = len(series.levels) > 1 or tf.is_svs or tf.is_ndpi
                same = len(pages) > 1 and all(p.shape == pages[0].shape and p.dtype == pages[0].dtype for p in pages)
                if slide:
                    check_pixels(path, shape[:2], max_pixels, "slide level 0")
                if same and not slide and len(series.shape) == len(pages[0].shape):
                    # Pages written one by one form one series each; equal pages are a stack (frames, slices).
                    check_pixels(path, (len(pages), *_planar(pages[0].shape, pages[0].axes)), max_pixels, "page stack")
                    check_bytes(path, (len(pages), *pages[0].shape), 1, pages[0].dtype.itemsize, max_pixels)
                    arr, axes = tf.asarray(key=slice(None)), "I" + pages[0].axes
                else:
                    check_pixels(path, _planar(shape, series.axes), max_pixels)
                    check_bytes(path, shape, 1, series.dtype.itemsize, max_pixels)
                    arr, axes = series.asarray(), series.axes
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error... on broken files
        raise ImageReadError(
            f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})",
            hint="the file is truncated or not a TIFF; re-export it",
        ) from exc
    return _channels_last(arr, axes)


def tiff_pages(path: str | os.PathLike[str]) -> list[tuple[tuple[int, ...], str]]:
    """Shape and dtype of every page of a TIFF (the pyramid levels, label and macro images of a slide), unread.

    Raises:
        ImageReadError: When the file cannot be opened as TIFF.
    """
    import tifffile

    path = Path(path)
    check_file(path)
    try:
        with tifffile.TiffFile(path) as tf:
            return [(tuple(int(s) for s in p.shape), str(p.dtype)) for p in tf.pages]
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})", hint="re-export it") from exc


def _planar(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    # Count pixels, not samples: the 'S' (channel) axis of an RGB page does not add to the size.
    if len(axes) != len(shape):
        return tuple(shape)
    return tuple(n for n, ax in zip(shape, axes, strict=True) if ax != "S")


def _channels_last(arr: np.ndarray, axes: str) -> np.ndarray:
    # tifffile keeps planar-configuration samples as an 'S' axis before Y and X; medkit is channels-last.
    if "S" in axes and "Y" in axes and axes.index("S") < axes.index("Y") and len(axes) == arr.ndim:
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------- numpy
@READERS.register("npy", suffixes=(".npy",), magic=((0, _NPY_MAGIC),))
def read_npy(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """NumPy .npy array as stored (any dtype, any layout; images are expected as (H, W) or (H, W, C)).

    Args:
        path: The file.
        max_pixels: Refuse arrays with more elements than this (None: no limit).

    Returns:
        The stored array (object arrays are refused).
    """
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        check_pixels(path, arr.shape, max_pixels, "array")
        check_bytes(path, arr.shape, 1, arr.dtype.itemsize, max_pixels)
        return np.array(arr)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{path}: cannot read as .npy ({type(exc).__name__}: {exc})",
            hint="the file is truncated, pickled (object dtype) or not a numpy file; re-save it with numpy.save",
        ) from exc


@READERS.register("npz", suffixes=(".npz",), magic=((0, _ZIP_MAGIC),))
def read_npz(
    path: Path, *, key: str | None = None, index: int | None = None, max_pixels: int | None = MAX_PIXELS
) -> np.ndarray:
    """NumPy .npz archive: one array by key, or one image of it by index (MedMNIST: see `load_medmnist`).

    Args:
        path: The file.
        key: The array to read; optional when the archive holds one array (or ``images``).
        index: Return only ``array[index]`` (one image of a stack such as ``train_images``).
        max_pixels: Refuse arrays with more elements than this (None: no limit).

    Returns:
        The stored array, or one element of its first axis.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is None:
                if len(keys) == 1:
                    key = keys[0]
                elif "images" in keys:
                    key = "images"
                else:
                    hint = "pass key=NAME"
                    if any(k.endswith("_images") for k in keys):
                        hint += "; for a MedMNIST file use medkit.io.readers.load_medmnist(path)"
                    raise ImageReadError(f"{path}: archive holds several arrays ({', '.join(keys)})", hint=hint)
            if key not in npz.files:
                raise ImageReadError(f"{path}: no array '{key}' (arrays: {', '.join(keys)})", hint="pass one of these")
            arr = npz[key]
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})",
            hint="the file is truncated or not a numpy archive; re-save it with numpy.savez",
        ) from exc
    if index is not None:
        if not -len(arr) <= index < len(arr):
            raise ImageReadError(f"{path}: index {index} out of range for '{key}' of length {len(arr)}")
        arr = arr[index]
    check_pixels(path, arr.shape, max_pixels, "array")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------- DICOM
# The adapter lives in medkit.io.dicom, which never imports this module: the dependency runs one way.
READERS.register("dicom", read_dicom_image, suffixes=(".dcm", ".dicom", ".dic"), magic=((_DICOM_OFFSET, b"DICM"),))


def rgb_order(img: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """An image OpenCV decoded (BGR / BGRA channel order) as medkit returns it: RGB / RGBA, one channel as (H, W).

    Args:
        img: The decoded image.
        inplace: Swap the channels in ``img``'s own buffer (a freshly decoded image nobody else holds): a large
            colour image then costs no second copy.
    """
    import cv2

    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] in (3, 4):
            code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            dst = img if inplace and img.flags.c_contiguous else None
            img = cv2.cvtColor(img, code, dst=dst)
    return np.ascontiguousarray(img)

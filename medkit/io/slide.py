"""Whole-slide image readers: pyramid levels, downsample factors, microns per pixel, and reads of one level or region.

`open_slide` opens pyramidal TIFF (PANDA ``.tiff``, OME-TIFF with sub-resolutions) and Aperio ``.svs`` with
tifffile, and any format OpenSlide knows when the optional ``openslide-python`` package is installed. A reader
never decodes level 0 unless level 0 is the level asked for: `Slide.read_level` decodes the pages of one level
and `Slide.read_region` decodes only the TIFF tiles (or strips) that a rectangle touches, so cutting 36 tiles from
a gigapixel level costs 36 small reads.

Coordinates are ``(top, left)`` in pixels of the level being read; rectangles may extend past the level's edges
and the outside is filled with ``fill`` (255 = white background for an H&E image, 0 for a label mask).
This module imports numpy and tifffile, not torch.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError
from medkit.io._checks import quiet_tifffile

__all__ = [
    "Level",
    "Slide",
    "TiffSlide",
    "OpenSlideSlide",
    "open_slide",
    "choose_level",
    "pyramid_problems",
    "quiet_tifffile",
    "SLIDE_SUFFIXES",
]

SLIDE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".svs")
OPENSLIDE_SUFFIXES: tuple[str, ...] = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")

_APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.eE+-]+)")


@dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes:
        index: Level number (0 = full resolution).
        height: Rows at this level.
        width: Columns at this level.
        downsample: Level-0 pixels per pixel of this level (1.0 for level 0).
        mpp: Microns per pixel at this level, or None when the file does not say.
    """

    index: int
    height: int
    width: int
    downsample: float
    mpp: float | None


class Slide:
    """A whole-slide image opened for reading (base class; use `open_slide`).

    Attributes:
        path: The slide file.
        levels: Pyramid levels, full resolution first.
        mpp: Microns per pixel at level 0, or None.
        backend: ``"tifffile"`` or ``"openslide"``.
    """

    path: Path
    levels: list[Level]
    mpp: float | None
    backend: str = ""

    def read_level(self, level: int, threads: int = 1) -> np.ndarray:
        """Decode a whole level as ``(H, W, C)`` (or ``(H, W)`` for one-channel files), the file's dtype.

        Args:
            level: Level index.
            threads: Decoder threads (readers that decode tile by tile use them).
        """
        raise NotImplementedError

    def read_region(self, level: int, top: int, left: int, height: int, width: int, fill: int = 255) -> np.ndarray:
        """Decode a rectangle of a level; parts outside the level are ``fill``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle."""

    def level(self, index: int) -> Level:
        """The `Level` with this index.

        Raises:
            DataError: When the slide has no such level (the message lists the levels it has).
        """
        if not 0 <= index < len(self.levels):
            have = ", ".join(f"{lv.index} ({lv.width}x{lv.height})" for lv in self.levels)
            raise DataError(
                f"{self.path}: no pyramid level {index}; the slide has levels {have}",
                hint="pick one of those with --level, or use --mpp to choose the closest level",
            )
        return self.levels[index]

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _mpp_from_page(page: Any) -> float | None:
    desc = page.description or ""
    match = _APERIO_MPP.search(desc)
    if match:
        try:
            value = float(match.group(1))
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    tags = page.tags
    xres = tags.get("XResolution")
    unit = tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    pixels_per_unit = num / den
    unit_value = int(unit.value)
    # TIFF units: 2 = inch, 3 = centimetre; 1 (none) carries no physical size.
    microns = {2: 25400.0, 3: 10000.0}.get(unit_value)
    if microns is None:
        return None
    mpp = microns / pixels_per_unit
    # Writers that leave the default 72 dpi (352.8 um) or 1 pixel per unit say nothing about the scan.
    return mpp if 0.01 < mpp < 100 else None


def _next_ifd(tif: Any, page: Any, size: int) -> int | None:
    """The offset of the page after ``page`` as its IFD records it (0: it is the last page); None if unreadable."""
    t = tif.tiff
    fh = tif.filehandle
    try:
        with fh.lock:
            fh.seek(page.offset)
            raw = fh.read(t.tagnosize)
            if len(raw) < t.tagnosize:
                return None
            (count,) = struct.unpack(t.tagnoformat, raw)
            at = page.offset + t.tagnosize + count * t.tagsize
            if at + t.offsetsize > size:
                return None
            fh.seek(at)
            (nxt,) = struct.unpack(t.offsetformat, fh.read(t.offsetsize))
        return int(nxt)
    except (struct.error, OSError, AttributeError, ValueError):
        return None


def pyramid_problems(tif: Any, level_pages: list[Any]) -> list[str]:
    """What makes an opened TIFF an incomplete slide: a page chain that points past the end of the file (the
    pages after the cut, often whole pyramid levels, are gone) and level pages whose tiles end past it.

    tifffile drops the pages it cannot reach with a log line only, so a cut pyramid looks like a complete slide with
    fewer levels, and the wrong level would be tiled.

    Args:
        tif: The open ``tifffile.TiffFile``.
        level_pages: The pages of the pyramid levels, full resolution first.

    Returns:
        One sentence per problem; empty for a complete file.
    """
    size = int(tif.filehandle.size)
    problems: list[str] = []
    pages = list(tif.pages)
    if pages:
        last = pages[-1]
        nxt = _next_ifd(tif, last, size)
        if nxt is None or nxt >= size or (nxt and nxt < 8):
            shown = "unreadable" if nxt is None else f"at byte {nxt:,}"
            problems.append(
                f"the page chain breaks after page {len(pages) - 1}: the next page is {shown} but the file has "
                f"{size:,} bytes, so pages (pyramid levels, label, macro) after it are missing"
            )
    for i, page in enumerate(level_pages):
        ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
        if ends and max(ends) > size:
            cut = sum(e > size for e in ends)
            problems.append(
                f"level {i} ({page.shape[1]}x{page.shape[0]}): {cut} of {len(ends)} tiles or strips end past the end "
                f"of the file ({max(ends):,} > {size:,} bytes)"
            )
    return problems


def _check_pyramid(tif: Any, path: Path, level_pages: list[Any]) -> None:
    """Raise when the slide file is cut short (`pyramid_problems`): tiling it would use the wrong level or data."""
    problems = pyramid_problems(tif, level_pages)
    if problems:
        raise DataError(
            f"{path}: the slide file is incomplete: " + "; ".join(problems),
            hint="the file was cut short (an interrupted download or copy); download or copy it again",
        )


def _hwc(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, int, int]:
    if axes.endswith("YXS"):
        return int(shape[-3]), int(shape[-2]), int(shape[-1])
    if axes.endswith("YX"):
        return int(shape[-2]), int(shape[-1]), 1
    raise DataError(
        f"{path}: unsupported TIFF layout (axes {axes}, shape {shape})",
        hint="medkit tile reads RGB or one-channel slides stored interleaved (YXS) or as gray (YX)",
    )


class TiffSlide(Slide):
    """A pyramidal TIFF or Aperio SVS read with tifffile.

    Levels are the first series' pyramid levels. An Aperio file whose main image has a single level also exposes
    its thumbnail page as the last level when the thumbnail is a reduced copy of the whole image (same aspect
    ratio), as in small SVS exports; OpenSlide would not list it.

    Args:
        path: The slide file.

    Raises:
        DataError: When tifffile cannot parse the file or the layout is not RGB/gray.
    """

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        try:
            with quiet_tifffile():  # "invalid page offset" and friends: the checks below say it in medkit's words
                self._tif = tifffile.TiffFile(self.path)
                len(self._tif.pages)  # reads the whole page chain now, under the quiet logger
        except (OSError, ValueError, tifffile.TiffFileError, IndexError, KeyError) as exc:
            raise DataError(
                f"{self.path}: not a readable TIFF/SVS slide ({type(exc).__name__}: {exc})",
                hint="check the file is complete (re-download it) or convert it to a pyramidal TIFF",
            ) from exc
        try:
            with quiet_tifffile():
                self._pages, self.levels, self.mpp = self._scan()
            _check_pyramid(self._tif, self.path, self._pages)
        except DataError:
            self._tif.close()
            raise
        except Exception as exc:  # tifffile raises assorted errors on corrupt headers
            self._tif.close()
            raise DataError(
                f"{self.path}: cannot read the slide structure ({type(exc).__name__}: {exc})",
                hint="check the file is complete (re-download it)",
            ) from exc
        self._cache: dict[int, np.ndarray] = {}

    def _scan(self) -> tuple[list[Any], list[Level], float | None]:
        tif = self._tif
        if not tif.series:
            raise DataError(
                f"{self.path}: the TIFF holds no readable image", hint="the file may be truncated; re-download it"
            )
        series = tif.series[0]
        pages = [lv.keyframe for lv in series.levels]
        shapes = [_hwc(tuple(lv.shape), lv.axes, self.path) for lv in series.levels]
        if tif.is_svs and len(pages) == 1:
            for other in tif.series[1:]:
                if other.name.lower() != "thumbnail":
                    continue
                h, w, c = _hwc(tuple(other.shape), other.axes, self.path)
                h0, w0, _ = shapes[0]
                if h < h0 and c == shapes[0][2] and abs(h / h0 - w / w0) < 0.01 * max(h / h0, w / w0):
                    pages.append(other.keyframe)
                    shapes.append((h, w, c))
        mpp0 = _mpp_from_page(pages[0])
        h0, w0, _ = shapes[0]
        levels = []
        for i, (h, w, _c) in enumerate(shapes):
            ds = 0.5 * (h0 / h + w0 / w)
            levels.append(Level(i, h, w, ds, None if mpp0 is None else mpp0 * ds))
        return pages, levels, mpp0

    def close(self) -> None:
        """Release the file handle and any cached page."""
        self._cache.clear()
        self._tif.close()

    def _decode_error(self, level: int, exc: Exception) -> DataError:
        return DataError(
            f"{self.path}: cannot decode level {level} ({type(exc).__name__}: {exc})",
            hint="the file may be truncated or use a codec imagecodecs lacks; re-download or convert it",
        )

    def read_level(self, level: int, threads: int = 1) -> np.ndarray:
        """Decode a whole level (only that level's pages; TIFF tiles decoded by ``threads`` threads)."""
        self.level(level)
        if level in self._cache:
            return self._cache[level]
        try:
            return self._pages[level].asarray(maxworkers=max(1, threads))
        except Exception as exc:  # truncated data, missing codec
            raise self._decode_error(level, exc) from exc

    def _chunked(self, level: int) -> bool:
        page = self._pages[level]
        return bool(page.planarconfig == 1 and page.imagedepth == 1 and len(page.dataoffsets) > 0)

    def read_region(self, level: int, top: int, left: int, height: int, width: int, fill: int = 255) -> np.ndarray:
        """Decode a rectangle, reading only the TIFF tiles it touches (whole page for strip-organised pages)."""
        lv = self.level(level)
        page = self._pages[level]
        channels = int(page.samplesperpixel) if page.planarconfig == 1 else 1
        shape = (height, width, channels) if channels > 1 else (height, width)
        out = np.full(shape, fill, dtype=page.dtype)
        y0, y1 = max(top, 0), min(top + height, lv.height)
        x0, x1 = max(left, 0), min(left + width, lv.width)
        if y0 >= y1 or x0 >= x1:
            return out
        try:
            if self._chunked(level):
                self._read_chunks(page, out, top, left, y0, y1, x0, x1)
            else:
                # Planar (RRR...GGG...) pages are rare in slides: decode once, crop.
                if level not in self._cache:
                    self._cache[level] = page.asarray()
                src = self._cache[level]
                out[y0 - top : y1 - top, x0 - left : x1 - left] = src[y0:y1, x0:x1]
        except DataError:
            raise
        except Exception as exc:
            raise self._decode_error(level, exc) from exc
        return out

    def _read_chunks(self, page: Any, out: np.ndarray, top: int, left: int, y0: int, y1: int, x0: int, x1: int) -> None:
        """Decode only the TIFF tiles (or strips: full-width tiles) that the rectangle touches into ``out``."""
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
        else:
            th, tw = int(page.rowsperstrip) or int(page.imagelength), int(page.imagewidth)
        across = -(-int(page.imagewidth) // tw)
        fh = self._tif.filehandle
        decode = page.decode
        offsets, counts = page.dataoffsets, page.databytecounts
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                index = ty * across + tx
                if counts[index] == 0:  # sparse tile: stays at the fill value
                    continue
                with fh.lock:
                    fh.seek(offsets[index])
                    data = fh.read(counts[index])
                seg, _idx, _shape = decode(data, index, jpegtables=page.jpegtables)
                # (1, rows, cols, samples); the last strip of a page may have fewer rows
                seg = seg.reshape(seg.shape[-3:]) if out.ndim == 3 else seg.reshape(seg.shape[-3:-1])
                sy0, sx0 = ty * th, tx * tw
                ya, yb = max(sy0, y0), min(sy0 + seg.shape[0], y1)
                xa, xb = max(sx0, x0), min(sx0 + seg.shape[1], x1)
                out[ya - top : yb - top, xa - left : xb - left] = seg[ya - sy0 : yb - sy0, xa - sx0 : xb - sx0]


class OpenSlideSlide(Slide):
    """A slide read with OpenSlide (optional ``openslide-python``): NDPI, MRXS, SCN and the TIFF/SVS flavours.

    Regions come back RGB; transparent pixels (outside scanned areas) become ``fill``.

    Args:
        path: The slide file.

    Raises:
        DataError: When openslide is not installed or cannot open the file.
    """

    backend = "openslide"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            import openslide
        except ImportError as exc:
            raise DataError(
                f"{self.path}: this slide needs OpenSlide, which is not installed",
                hint="pip install openslide-python openslide-bin",
            ) from exc
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError
            raise DataError(f"{self.path}: OpenSlide cannot open it ({exc})", hint="check the file") from exc
        props = self._osr.properties
        try:
            self.mpp = float(props.get("openslide.mpp-x", "")) or None
        except ValueError:
            self.mpp = None
        self.levels = [
            Level(i, int(h), int(w), float(ds), None if self.mpp is None else self.mpp * float(ds))
            for i, ((w, h), ds) in enumerate(zip(self._osr.level_dimensions, self._osr.level_downsamples, strict=True))
        ]

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._osr.close()

    def read_level(self, level: int, threads: int = 1) -> np.ndarray:
        """Decode a whole level as RGB (OpenSlide uses its own threads)."""
        lv = self.level(level)
        return self.read_region(level, 0, 0, lv.height, lv.width)

    def read_region(self, level: int, top: int, left: int, height: int, width: int, fill: int = 255) -> np.ndarray:
        """Decode a rectangle as RGB; OpenSlide takes the origin in level-0 pixels."""
        lv = self.level(level)
        origin = (int(round(left * lv.downsample)), int(round(top * lv.downsample)))
        rgba = np.asarray(self._osr.read_region(origin, level, (width, height)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = fill
        return rgb


def open_slide(path: str | os.PathLike[str], backend: str = "auto") -> Slide:
    """Open a whole-slide image with tifffile, or OpenSlide when asked or when tifffile cannot read it.

    Args:
        path: Slide file (``.tif``, ``.tiff``, ``.svs``; other OpenSlide formats with ``backend="openslide"``
            or ``"auto"`` when openslide-python is installed).
        backend: ``"auto"``, ``"tifffile"`` or ``"openslide"``.

    Raises:
        DataError: When the file is missing or no backend can read it.
        UsageError: For an unknown backend name.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"slide not found: {p}", hint="check the path")
    if backend not in ("auto", "tifffile", "openslide"):
        raise UsageError(f"unknown slide backend '{backend}'", hint="use auto, tifffile or openslide")
    if backend == "openslide" or (backend == "auto" and p.suffix.lower() in OPENSLIDE_SUFFIXES):
        return OpenSlideSlide(p)
    try:
        return TiffSlide(p)
    except DataError:
        if backend == "auto" and _openslide_available():
            return OpenSlideSlide(p)
        raise


def _openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except ImportError:
        return False
    return True


def choose_level(slide: Slide, level: int | None = None, mpp: float | None = None) -> int:
    """The level to tile: ``level`` as given, else the one closest to ``mpp`` (in log scale), else level 1.

    Without either, level 1 is the PANDA default (4x below full resolution); a single-level slide uses level 0.

    Raises:
        DataError: When the level does not exist, or ``mpp`` is asked for and the slide does not record it.
    """
    if level is not None:
        return slide.level(level).index
    if mpp is not None:
        if slide.mpp is None:
            raise DataError(
                f"{slide.path}: the slide does not record its microns per pixel",
                hint="choose the level with --level instead of --mpp",
            )
        return min(slide.levels, key=lambda lv: abs(math.log(lv.mpp / mpp))).index  # type: ignore[operator]
    return min(1, len(slide.levels) - 1)

"""Tissue rules and tile scores: every tile of a level gets a PANDA score and a tissue pixel count.

- ``score``: the sum of a tile's pixel values with padding counted as white (255); with ``tissue="white"`` the
  tiles with the lowest sum come first (the PANDA rule: white background, darker = more tissue);
- ``tissue``: the number of tissue pixels; a pixel is tissue when its gray value is below ``white_threshold``
  (``tissue="white"``) or when its HSV saturation is above an Otsu threshold (``tissue="otsu"``, for slides whose
  background is not white).

A level larger than ``max_level_bytes`` is scored band by band through `medkit.io.slide.Slide.read_region`, so
level 0 of a gigapixel slide is never held in memory. This module imports numpy and cv2 (inside functions),
not torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medkit.errors import DataError
from medkit.io.slide import Slide
from medkit.tile._grid import Grid, drop_alpha, make_grid, real_pixels, tile_sums

__all__ = [
    "TISSUE_METHODS",
    "MIN_SATURATION",
    "OTSU_LEVEL_BYTES",
    "THREADED_MIN_PIXELS",
    "tissue_mask",
    "otsu_saturation",
    "score_tiles",
    "score_slide_level",
]

TISSUE_METHODS = ("white", "otsu")
# Otsu on a slide with almost no tissue splits scanner noise; a floor keeps faint noise out of the tissue mask.
MIN_SATURATION = 20
# The Otsu threshold comes from the smallest level when it decodes to at most this much (a thumbnail-sized level).
OTSU_LEVEL_BYTES = 1 << 28
# Levels smaller than this many pixels are decoded and scored in one thread (thread start-up costs more).
THREADED_MIN_PIXELS = 1 << 22


def tissue_mask(img: np.ndarray, method: str, white_threshold: int = 230, otsu_threshold: float | None = None) -> Any:
    """Per-pixel tissue mask (uint8 0/1) and the threshold used.

    Args:
        img: ``(H, W, 3)`` RGB or ``(H, W)`` gray level.
        method: ``"white"`` (gray < white_threshold) or ``"otsu"`` (HSV saturation above Otsu's threshold).
        white_threshold: Gray level at and above which a pixel is background (white rule).
        otsu_threshold: Saturation threshold to use instead of computing Otsu's on ``img``.

    Returns:
        ``(mask, threshold)``.
    """
    import cv2

    if method == "white":
        gray = img if img.ndim == 2 else cv2.cvtColor(_rgb(img), cv2.COLOR_RGB2GRAY)
        return (gray < white_threshold).view(np.uint8), float(white_threshold)
    if img.ndim != 3 or img.shape[2] < 3:
        raise DataError("the otsu tissue rule needs an RGB slide", hint="use --tissue white for gray slides")
    sat = cv2.cvtColor(_rgb(img), cv2.COLOR_RGB2HSV)[..., 1]
    if otsu_threshold is None:
        otsu_threshold = otsu_saturation(sat)
    return (sat > otsu_threshold).view(np.uint8), float(otsu_threshold)


def _rgb(img: np.ndarray) -> np.ndarray:
    # cv2 takes row-strided views as they are; only an alpha channel forces a copy.
    return img if img.shape[2] == 3 else np.ascontiguousarray(img[..., :3])


def otsu_saturation(sat: np.ndarray) -> float:
    """Otsu's threshold of a saturation image, never below `MIN_SATURATION`."""
    import cv2

    thr, _ = cv2.threshold(np.ascontiguousarray(sat), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(max(thr, MIN_SATURATION))


def score_tiles(
    img: np.ndarray,
    grid: Grid,
    method: str = "white",
    white_threshold: int = 230,
    otsu_threshold: float | None = None,
    fill: int = 255,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Score every tile of an in-memory level (in ``threads`` bands of tile rows when > 1: same result).

    Returns:
        ``(score, tissue, threshold)``: row-major ``(rows * cols,)`` int64 pixel sums with padding counted as
        ``fill`` (the PANDA score), int64 tissue pixel counts, and the tissue threshold used.
    """
    if threads > 1 and grid.rows > 1 and (method == "white" or otsu_threshold is not None):
        return _score_tiles_threaded(img, grid, method, white_threshold, otsu_threshold, fill, threads)
    channels = img.shape[2] if img.ndim == 3 else 1
    pad = grid.size * grid.size - real_pixels(grid)
    score = tile_sums(img, grid) + pad * (fill * channels)
    mask, thr = tissue_mask(img, method, white_threshold, otsu_threshold)
    tissue = tile_sums(mask, grid)
    return score.reshape(-1), tissue.reshape(-1), thr


def _score_tiles_threaded(
    img: np.ndarray,
    grid: Grid,
    method: str,
    white_threshold: int,
    otsu_threshold: float | None,
    fill: int,
    threads: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """`score_tiles` over bands of tile rows in threads (numpy and OpenCV release the GIL); identical results."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = np.array_split(np.arange(grid.rows), min(threads, grid.rows))

    def band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        top = grid.top + int(rows[0]) * grid.size
        y0, y1 = max(top, 0), min(top + len(rows) * grid.size, grid.height)
        sub = Grid(len(rows), grid.cols, top - y0, grid.left, grid.size, y1 - y0, grid.width)
        return score_tiles(img[y0:y1], sub, method, white_threshold, otsu_threshold, fill)

    with ThreadPoolExecutor(len(chunks)) as pool:
        parts = list(pool.map(band, chunks))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), parts[0][2]


def score_slide_level(
    slide: Slide,
    level: int,
    size: int,
    method: str = "white",
    white_threshold: int = 230,
    max_level_bytes: int = 2 << 30,
    threads: int = 1,
) -> tuple[Grid, np.ndarray, np.ndarray, float, np.ndarray | None]:
    """Score every tile of one slide level, decoding it whole or (when larger than ``max_level_bytes``) by bands.

    A tiled TIFF level is decoded, and then scored, by ``threads`` threads.

    Returns:
        ``(grid, score, tissue, threshold, image)``; ``image`` is the decoded level, or None when it was scored
        by bands (then cut tiles with `Slide.read_region`).
    """
    lv = slide.level(level)
    grid = make_grid(lv.height, lv.width, size)
    otsu_thr = None
    if method == "otsu":
        # One threshold per slide from its smallest level, so whole-level and banded scoring agree.
        small = slide.levels[-1]
        if small.index != level and small.height * small.width * 3 <= OTSU_LEVEL_BYTES:
            img_small = slide.read_level(small.index)
            _, otsu_thr = tissue_mask(img_small, "otsu")
    channels = 3
    if lv.height * lv.width < THREADED_MIN_PIXELS:  # threads cost more than they save on a small level
        threads = 1
    if lv.height * lv.width * channels <= max_level_bytes:
        img = drop_alpha(slide.read_level(level, threads))
        view = as_8bit(img, data_bits(img)) if img.dtype != np.uint8 else img
        score, tissue, thr = score_tiles(view, grid, method, white_threshold, otsu_thr, threads=threads)
        return grid, score, tissue, thr, img
    if method == "otsu" and otsu_thr is None:
        raise DataError(
            f"{slide.path}: level {level} is too large to hold in memory and no small level gives an Otsu threshold",
            hint="use --tissue white, or a coarser --level",
        )
    score, tissue = _score_by_bands(slide, level, grid, method, white_threshold, otsu_thr)
    thr = float(white_threshold) if otsu_thr is None else otsu_thr
    return grid, score, tissue, thr, None


def data_bits(img: np.ndarray) -> int:
    """The bit depth the pixel values use (8, 10, 12, 14 or 16): a 12-bit scan in a 16-bit TIFF is 12-bit."""
    top = int(img.max()) if img.size else 0
    for bits in (8, 10, 12, 14, 16):
        if top <= (1 << bits) - 1:
            return bits
    return int(8 * img.dtype.itemsize)


def as_8bit(img: np.ndarray, bits: int) -> np.ndarray:
    """A wide-integer level on 0..255 over its real depth (``bits``): the white rule and the padding's 255 then mean
    the same as on an 8-bit slide (a 16-bit slide's padding would otherwise be the darkest, most "tissue-rich" tile).
    """
    import cv2

    scale = 255.0 / ((1 << bits) - 1)
    if img.dtype in (np.uint16, np.int16, np.float32, np.float64) or img.dtype == np.uint8:
        return cv2.convertScaleAbs(img, alpha=scale)
    return np.clip(np.round(img.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _pad_white(band: np.ndarray, grid: Grid, row: int) -> None:
    """Set the part of a band read outside the level to white (255) after the 8-bit scaling."""
    top = grid.top + row * grid.size
    y0, y1 = max(0, -top), min(grid.size, grid.height - top)
    x0, x1 = max(0, -grid.left), min(band.shape[1], grid.width - grid.left)
    if y0 > 0:
        band[:y0] = 255
    if y1 < grid.size:
        band[max(y1, 0) :] = 255
    if x0 > 0:
        band[:, :x0] = 255
    if x1 < band.shape[1]:
        band[:, max(x1, 0) :] = 255


def _score_by_bands(
    slide: Slide, level: int, grid: Grid, method: str, white_threshold: int, otsu_thr: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """`score_tiles` of a level read one band of tile rows at a time (padding read as white): same result."""
    size = grid.size
    scores, tissues = [], []
    band_grid = Grid(1, grid.cols, 0, 0, size, size, grid.cols * size)
    bits = None
    for r in range(grid.rows):
        band = drop_alpha(slide.read_region(level, grid.top + r * size, grid.left, size, grid.cols * size, fill=0))
        if band.dtype != np.uint8:
            # The depth of the whole slide (from its smallest level), so every band is scaled alike.
            bits = bits or data_bits(drop_alpha(slide.read_level(slide.levels[-1].index)))
            band = as_8bit(band, bits)
        _pad_white(band, grid, r)
        s, t, _ = score_tiles(band, band_grid, method, white_threshold, otsu_thr)
        scores.append(s)
        tissues.append(t)
    return np.concatenate(scores), np.concatenate(tissues)

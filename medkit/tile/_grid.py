"""The PANDA tile grid of one level, exact per-tile pixel sums, and cutting tiles and mosaics out of a level.

The grid follows the classic PANDA ``get_tiles``: the level is padded with background to a multiple of the tile
size, half of the padding on each side, so the first tile starts at ``(-pad_h // 2, -pad_w // 2)`` in level
pixels. Sums are exact integers computed on the unpadded level, without the padded, transposed copy that
``get_tiles`` makes. This module imports numpy, not torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = ["Grid", "make_grid", "tile_sums", "real_pixels", "drop_alpha", "cut_tile", "make_mosaic"]


@dataclass(frozen=True)
class Grid:
    """The tile grid of one level.

    Attributes:
        rows: Tile rows.
        cols: Tile columns.
        top: Level row of the first tile's top edge (<= 0: half of the padding goes above the image).
        left: Level column of the first tile's left edge (<= 0).
        size: Tile side in pixels.
        height: Level height.
        width: Level width.
    """

    rows: int
    cols: int
    top: int
    left: int
    size: int
    height: int
    width: int

    def origin(self, position: int) -> tuple[int, int]:
        """Level ``(y, x)`` of the top-left corner of the tile at a row-major position."""
        r, c = divmod(int(position), self.cols)
        return self.top + r * self.size, self.left + c * self.size

    @property
    def n(self) -> int:
        """Number of tiles in the grid."""
        return self.rows * self.cols


def make_grid(height: int, width: int, size: int) -> Grid:
    """The PANDA grid of a ``height x width`` level: padded to a multiple of ``size``, padding split in half."""
    if size < 1:
        raise UsageError(f"tile size must be positive, got {size}", hint="use e.g. --size 256")
    pad_h = (size - height % size) % size
    pad_w = (size - width % size) % size
    return Grid((height + pad_h) // size, (width + pad_w) // size, -(pad_h // 2), -(pad_w // 2), size, height, width)


def _spans(start: int, count: int, size: int, limit: int) -> list[tuple[int, int]]:
    return [(max(start + i * size, 0), min(start + (i + 1) * size, limit)) for i in range(count)]


def _sum_axis(arr: np.ndarray, spans: list[tuple[int, int]], size: int, axis: int, dtype: Any) -> np.ndarray:
    """Sums of ``arr`` over consecutive spans of an axis; full spans are summed through one reshape (no copy)."""
    n = len(spans)
    shape = list(arr.shape)
    shape[axis] = n
    out = np.empty(shape, dtype=dtype)
    full = [i for i, (a, b) in enumerate(spans) if b - a == size]
    idx = [slice(None)] * arr.ndim
    if full:
        f0, f1 = full[0], full[-1] + 1
        a0, b1 = spans[f0][0], spans[f1 - 1][1]
        idx[axis] = slice(a0, b1)
        block = arr[tuple(idx)]
        new_shape = list(block.shape)
        new_shape[axis : axis + 1] = [f1 - f0, size]
        oi = [slice(None)] * arr.ndim
        oi[axis] = slice(f0, f1)
        out[tuple(oi)] = block.reshape(new_shape).sum(axis=axis + 1, dtype=dtype)
    else:
        f0 = f1 = 0
    for i, (a, b) in enumerate(spans):
        if f0 <= i < f1:
            continue
        idx[axis] = slice(a, b)
        oi = [slice(None)] * arr.ndim
        oi[axis] = i
        out[tuple(oi)] = arr[tuple(idx)].sum(axis=axis, dtype=dtype)
    return out


def tile_sums(img: np.ndarray, grid: Grid) -> np.ndarray:
    """Exact per-tile sums of an unpadded level (all channels), shape ``(rows, cols)`` int64, padding excluded.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` integer array matching the grid's level size.
        grid: From `make_grid`.

    Raises:
        DataError: For a non-integer image.
    """
    h, w = img.shape[:2]
    channels = img.shape[2] if img.ndim == 3 else 1
    if img.dtype.kind not in "ui":
        raise DataError(f"cannot score tiles of a {img.dtype} image", hint="slides must hold integer pixels")
    # A band of `size` rows sums to at most size * maxval per element: uint16 when that fits (faster), else wider.
    bound = grid.size * int(np.iinfo(img.dtype).max)
    band_dtype = np.uint16 if bound <= 0xFFFF else np.uint32 if bound <= 0xFFFFFFFF else np.uint64
    flat = img.reshape(h, w * channels)
    bands = _sum_axis(flat, _spans(grid.top, grid.rows, grid.size, h), grid.size, 0, band_dtype)
    cols = [(a * channels, b * channels) for a, b in _spans(grid.left, grid.cols, grid.size, w)]
    return _sum_axis(bands, cols, grid.size * channels, 1, np.int64)


def real_pixels(grid: Grid) -> np.ndarray:
    """Pixels of every tile that lie inside the level, ``(rows, cols)`` (the rest is padding)."""
    hs = np.array([b - a for a, b in _spans(grid.top, grid.rows, grid.size, grid.height)], dtype=np.int64)
    ws = np.array([b - a for a, b in _spans(grid.left, grid.cols, grid.size, grid.width)], dtype=np.int64)
    return hs[:, None] * ws[None, :]


def drop_alpha(img: np.ndarray) -> np.ndarray:
    """RGB of an RGBA level (tiles, scores and mosaics are RGB); other arrays unchanged."""
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    return img


def cut_tile(img: np.ndarray, y: int, x: int, size: int, fill: int) -> np.ndarray:
    """A ``size x size`` tile of an in-memory level at ``(y, x)``, filled with ``fill`` outside the level."""
    h, w = img.shape[:2]
    out = np.full((size, size, *img.shape[2:]), fill, dtype=img.dtype)
    y0, y1, x0, x1 = max(y, 0), min(y + size, h), max(x, 0), min(x + size, w)
    if y0 < y1 and x0 < x1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
    return out


def make_mosaic(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles ``(rows * cols, s, s[, C])`` laid out row by row in rank order as one ``(rows*s, cols*s[, C])`` image."""
    k, s = tiles.shape[0], tiles.shape[1]
    if k != rows * cols:
        raise UsageError(f"a {rows}x{cols} mosaic needs {rows * cols} tiles, got {k}", hint="make --n = R * C")
    rest = tiles.shape[3:]
    grid = tiles.reshape(rows, cols, s, s, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(grid.reshape(rows * s, cols * s, *rest))

"""Cut whole-slide images into the N most tissue-rich tiles (PANDA style), with aligned mask tiles and mosaics.

The grid follows the classic PANDA ``get_tiles``: the level is padded with background to a multiple of the tile
size, half of the padding on each side, so the first tile starts at ``(-pad_h // 2, -pad_w // 2)`` in level
pixels. Every tile gets two numbers:

- ``score``: the sum of its pixel values with padding counted as white (255); with ``tissue="white"`` the tiles
  with the lowest sum come first (the PANDA rule: white background, darker = more tissue);
- ``tissue``: the number of tissue pixels; a pixel is tissue when its gray value is below ``white_threshold``
  (``tissue="white"``) or when its HSV saturation is above an Otsu threshold (``tissue="otsu"``, for slides whose
  background is not white). With ``tissue="otsu"`` the tiles with most tissue come first.

Ties are broken by tile position (row-major), so the selection is deterministic. Tiles whose tissue fraction is
below ``min_tissue`` are not taken; a slide with fewer eligible tiles than N is completed with background tiles
(image 255, mask 0).

Scores are exact integer sums computed on the unpadded level without the padded, transposed copy that
``get_tiles`` makes; a level larger than ``max_level_bytes`` is scored band by band through
`medkit.io.slide.Slide.read_region`, so level 0 of a gigapixel slide is never held in memory.

Per slide, `tile_slide` writes (all atomically, the index first and the done marker last)::

    OUT/index/<slide>.json        grid, level, downsample, mpp and the score and tissue count of EVERY tile
    OUT/tiles/<slide>/NNN.png     tiles in rank order (--format png), or OUT/tiles/<slide>.npz (--format npz)
    OUT/masks/<slide>/NNN.png     mask tiles cut at the same coordinates (PNG format with --masks)
    OUT/mosaics/<slide>.png       R x C mosaic of the tiles in rank order (+ <slide>_mask.png)
    OUT/index/<slide>.done.json   parameters and table rows; a finished slide is skipped on the next run

A later run with the same level, tile size and tissue rule but another N, minimum tissue, format or mosaic
re-selects from the index and reads only the chosen tiles' regions from the slide (no re-scoring).
This module imports numpy, tifffile and cv2 (inside functions), not torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit._io import atomic_write, write_json
from medkit.io.slide import Slide, choose_level, open_slide
from medkit.errors import DataError, UsageError

__all__ = [
    "Grid",
    "TileOptions",
    "SlideResult",
    "INDEX_VERSION",
    "make_grid",
    "tile_sums",
    "score_tiles",
    "score_slide_level",
    "select_tiles",
    "cut_tile",
    "make_mosaic",
    "slide_id_of",
    "find_mask",
    "tile_slide",
    "collect_slides",
    "tissue_mask",
    "drop_alpha",
]

INDEX_VERSION = 1
TISSUE_METHODS = ("white", "otsu")
FORMATS = ("png", "npz", "none")
# Otsu on a slide with almost no tissue splits scanner noise; a floor keeps faint noise out of the tissue mask.
MIN_SATURATION = 20
# The Otsu threshold comes from the smallest level when it decodes to at most this much (a thumbnail-sized level).
OTSU_LEVEL_BYTES = 1 << 28
# Levels smaller than this many pixels are decoded and scored in one thread (thread start-up costs more).
THREADED_MIN_PIXELS = 1 << 22


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


def drop_alpha(img: np.ndarray) -> np.ndarray:
    """RGB of an RGBA level (tiles, scores and mosaics are RGB); other arrays unchanged."""
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    return img


def _real_pixels(grid: Grid) -> np.ndarray:
    hs = np.array([b - a for a, b in _spans(grid.top, grid.rows, grid.size, grid.height)], dtype=np.int64)
    ws = np.array([b - a for a, b in _spans(grid.left, grid.cols, grid.size, grid.width)], dtype=np.int64)
    return hs[:, None] * ws[None, :]


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
    pad = grid.size * grid.size - _real_pixels(grid)
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
        score, tissue, thr = score_tiles(img, grid, method, white_threshold, otsu_thr, threads=threads)
        return grid, score, tissue, thr, img
    if method == "otsu" and otsu_thr is None:
        raise DataError(
            f"{slide.path}: level {level} is too large to hold in memory and no small level gives an Otsu threshold",
            hint="use --tissue white, or a coarser --level",
        )
    scores, tissues = [], []
    thr = float(white_threshold) if otsu_thr is None else otsu_thr
    band_grid = Grid(1, grid.cols, 0, 0, size, size, grid.cols * size)
    for r in range(grid.rows):
        band = drop_alpha(slide.read_region(level, grid.top + r * size, grid.left, size, grid.cols * size, fill=255))
        s, t, _ = score_tiles(band, band_grid, method, white_threshold, otsu_thr)
        scores.append(s)
        tissues.append(t)
    return grid, np.concatenate(scores), np.concatenate(tissues), thr, None


def select_tiles(
    score: np.ndarray, tissue: np.ndarray, n: int, method: str = "white", min_tissue: float = 0.0, size: int = 1
) -> np.ndarray:
    """Row-major positions of the best ``n`` tiles in rank order (fewer when fewer tiles qualify).

    White rule: lowest score first; otsu rule: most tissue first; ties go to the earlier position.
    Tiles with a tissue fraction below ``min_tissue`` (tissue pixels / ``size**2``) are left out.
    """
    positions = np.arange(score.size, dtype=np.int64)
    if min_tissue > 0:
        positions = positions[tissue >= min_tissue * size * size]
    if positions.size == 0 or n <= 0:
        return positions[:0]
    primary = score[positions] if method == "white" else -tissue[positions]
    # One int64 key (primary, position) makes argpartition + sort exact and tie-stable.
    key = (primary - primary.min()) * np.int64(score.size) + positions
    k = min(n, key.size)
    top = np.argpartition(key, k - 1)[:k] if k < key.size else np.arange(key.size)
    return positions[top[np.argsort(key[top])]]


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


def slide_id_of(path: str | os.PathLike[str]) -> str:
    """The slide id: the file name without its suffix (and without ``.ome`` for OME-TIFF)."""
    name = Path(path).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def find_mask(masks_dir: str | os.PathLike[str] | None, slide_id: str) -> Path | None:
    """The label mask of a slide in ``masks_dir`` (PANDA: ``<id>_mask.tiff``), or None."""
    if masks_dir is None:
        return None
    root = Path(masks_dir)
    for name in (f"{slide_id}_mask.tiff", f"{slide_id}_mask.tif", f"{slide_id}.tiff", f"{slide_id}.tif"):
        if (root / name).is_file():
            return root / name
    return None


@dataclass(frozen=True)
class TileOptions:
    """Everything `tile_slide` needs besides the slide (picklable, sent to worker processes).

    Attributes:
        out: Output folder.
        n: Tiles per slide.
        size: Tile side in pixels at the chosen level.
        level: Pyramid level, or None (then ``mpp`` or the default level).
        mpp: Target microns per pixel (closest level), or None.
        tissue: ``"white"`` or ``"otsu"``.
        min_tissue: Minimum tissue fraction of a kept tile.
        white_threshold: Gray level at and above which a pixel is background (white rule).
        fmt: ``"png"``, ``"npz"`` or ``"none"`` (mosaic only).
        mosaic: ``(rows, cols)`` or None.
        masks_dir: Folder of label masks, or None.
        backend: Slide reader backend.
        max_level_bytes: Above this a level is scored band by band.
        force: Redo slides that are already done (the index is still reused when it matches).
        threads: Decoder threads per slide (1 when slides already run in parallel processes).
    """

    out: str
    n: int = 36
    size: int = 256
    level: int | None = None
    mpp: float | None = None
    tissue: str = "white"
    min_tissue: float = 0.0
    white_threshold: int = 230
    fmt: str = "png"
    mosaic: tuple[int, int] | None = None
    masks_dir: str | None = None
    backend: str = "auto"
    max_level_bytes: int = 2 << 30
    force: bool = False
    threads: int = 1

    def output_key(self) -> dict[str, Any]:
        """The parameters a finished slide's outputs depend on beyond its index."""
        return {
            "n": self.n,
            "min_tissue": self.min_tissue,
            "format": self.fmt,
            "mosaic": list(self.mosaic) if self.mosaic else None,
            "masks_dir": self.masks_dir,
        }


@dataclass
class SlideResult:
    """What happened to one slide.

    Attributes:
        slide_id: The slide id.
        path: The slide file.
        status: ``"done"`` (tiled now), ``"skipped"`` (already done), ``"failed"``.
        message: Error message (failed) or note.
        hint: How to fix a failure.
        rows: Table rows for OUT/tiles.csv.
        n_tissue: Tiles taken from tissue (the rest are background padding).
        level: Level tiled.
        reused_index: Whether the index of an earlier run was used.
        seconds: Wall time.
    """

    slide_id: str
    path: str
    status: str
    message: str = ""
    hint: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_tissue: int = 0
    level: int | None = None
    reused_index: bool = False
    seconds: float = 0.0


def _index_key(path: Path, level: int, opts: TileOptions) -> dict[str, Any]:
    st = path.stat()
    return {
        "version": INDEX_VERSION,
        "file_size": st.st_size,
        "file_mtime_ns": st.st_mtime_ns,
        "level": level,
        "size": opts.size,
        "tissue": opts.tissue,
        "white_threshold": opts.white_threshold if opts.tissue == "white" else None,
    }


def _load_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _png_bytes(arr: np.ndarray) -> bytes:
    import cv2

    img = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError("cannot encode a PNG tile", hint="check the tile array")
    return buf.tobytes()


def _write_png(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(_png_bytes(arr))


def _mask_reader(mask_path: Path, slide: Slide, level: int, backend: str) -> tuple[Slide, Any]:
    """Open a mask slide and return ``(mask_slide, cut(y, x, size) -> (s, s) uint8)`` aligned with ``level``."""
    import cv2

    lv = slide.level(level)
    mask = open_slide(mask_path, backend)
    same = [m for m in mask.levels if (m.height, m.width) == (lv.height, lv.width)]

    def first_channel(a: np.ndarray) -> np.ndarray:
        # PANDA stores the label in the red channel of an RGB mask.
        return a if a.ndim == 2 else np.ascontiguousarray(a[..., 0])

    if same:
        mlevel = same[0].index

        def cut(y: int, x: int, size: int) -> np.ndarray:
            return first_channel(mask.read_region(mlevel, y, x, size, size, fill=0))

        return mask, cut
    # A mask stored at another resolution: nearest-neighbour resize of its closest level onto the image level.
    closest = min(mask.levels, key=lambda m: abs(np.log(max(m.downsample, 1e-9) / max(lv.downsample, 1e-9))))
    if closest.height * closest.width > 1 << 28:
        mask.close()
        raise DataError(
            f"{mask_path}: no mask level matches the image level {level} ({lv.width}x{lv.height})",
            hint="write the mask with the same pyramid as the image",
        )
    full = first_channel(mask.read_level(closest.index))
    resized = cv2.resize(full, (lv.width, lv.height), interpolation=cv2.INTER_NEAREST)

    def cut_resized(y: int, x: int, size: int) -> np.ndarray:
        return cut_tile(resized, y, x, size, 0)

    return mask, cut_resized


def tile_slide(path: str | os.PathLike[str], opts: TileOptions) -> SlideResult:
    """Tile one slide into ``opts.out`` (index, tiles, masks, mosaic, done marker); never raises for a bad slide.

    Returns:
        A `SlideResult`; a slide that cannot be read comes back with ``status="failed"`` and the message.
    """
    start = time.perf_counter()
    path = Path(path)
    sid = slide_id_of(path)
    try:
        result = _tile_slide(path, sid, opts)
    except DataError as exc:
        result = SlideResult(sid, str(path), "failed", exc.message, exc.hint or "")
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a corrupt slide must not stop the other slides
        result = SlideResult(sid, str(path), "failed", f"{path}: {type(exc).__name__}: {exc}", "check the file")
    result.seconds = time.perf_counter() - start
    return result


def _tile_slide(path: Path, sid: str, opts: TileOptions) -> SlideResult:
    out = Path(opts.out)
    index_path = out / "index" / f"{sid}.json"
    done_path = out / "index" / f"{sid}.done.json"
    mask_path = find_mask(opts.masks_dir, sid)
    with open_slide(path, opts.backend) as slide:
        level = choose_level(slide, opts.level, opts.mpp)
        key = _index_key(path, level, opts)
        done = _load_json(done_path) if not opts.force else None
        if (
            done
            and done.get("key") == key
            and done.get("outputs") == opts.output_key()
            and done.get("mask") == (mask_path.name if mask_path else None)
            and all((out / f).is_file() for f in done.get("files", []))
        ):
            return SlideResult(sid, str(path), "skipped", rows=done["rows"], n_tissue=done["n_tissue"], level=level)

        index = _load_json(index_path)
        img: np.ndarray | None = None
        reused = bool(index and index.get("key") == key)
        lv = slide.level(level)
        if reused:
            g = index["grid"]
            grid = Grid(g["rows"], g["cols"], g["top"], g["left"], g["size"], g["height"], g["width"])
            score = np.asarray(index["score"], dtype=np.int64)
            tissue = np.asarray(index["tissue"], dtype=np.int64)
        else:
            grid, score, tissue, thr, img = score_slide_level(
                slide, level, opts.size, opts.tissue, opts.white_threshold, opts.max_level_bytes, opts.threads
            )
            index = {
                "key": key,
                "slide": str(path),
                "slide_id": sid,
                "backend": slide.backend,
                "level": level,
                "level_shape": [lv.height, lv.width],
                "downsample": lv.downsample,
                "mpp": lv.mpp,
                "tissue_threshold": thr,
                "grid": asdict(grid),
                "order": "row-major; tile (r, c) has level origin (top + r*size, left + c*size)",
                "score": score.tolist(),
                "tissue": tissue.tolist(),
            }
            write_json(index_path, index)

        chosen = select_tiles(score, tissue, opts.n, opts.tissue, opts.min_tissue, opts.size)
        n_tissue = int(chosen.size)
        s = opts.size
        channels = 3
        tiles: list[np.ndarray] = []
        for pos in chosen:
            y, x = grid.origin(pos)
            if img is not None:
                tiles.append(cut_tile(img, y, x, s, 255))
            else:
                tiles.append(drop_alpha(slide.read_region(level, y, x, s, s, fill=255)))
        if tiles:
            channels = tiles[0].shape[2] if tiles[0].ndim == 3 else 1
        pad_tile = np.full((s, s, channels) if channels > 1 else (s, s), 255, dtype=np.uint8)
        tiles += [pad_tile] * (opts.n - n_tissue)
        stack = np.stack(tiles) if tiles else np.zeros((0, s, s, channels), np.uint8)
        del img

        masks: np.ndarray | None = None
        if mask_path is not None:
            mslide, cut = _mask_reader(mask_path, slide, level, opts.backend)
            with mslide:
                mtiles = [cut(*grid.origin(pos), s) for pos in chosen]
            mtiles += [np.zeros((s, s), np.uint8)] * (opts.n - n_tissue)
            masks = np.stack(mtiles) if mtiles else np.zeros((0, s, s), np.uint8)

        files, rows = _write_outputs(out, sid, opts, stack, masks, chosen, grid, score, tissue, level)
        done_doc = {
            "key": key,
            "outputs": opts.output_key(),
            "mask": mask_path.name if mask_path else None,
            "files": files,
            "rows": rows,
            "n_tissue": n_tissue,
        }
        write_json(done_path, done_doc)
    note = "" if mask_path is not None or opts.masks_dir is None else "no mask found"
    return SlideResult(sid, str(path), "done", note, rows=rows, n_tissue=n_tissue, level=level, reused_index=reused)


def _write_outputs(
    out: Path,
    sid: str,
    opts: TileOptions,
    stack: np.ndarray,
    masks: np.ndarray | None,
    chosen: np.ndarray,
    grid: Grid,
    score: np.ndarray,
    tissue: np.ndarray,
    level: int,
) -> tuple[list[str], list[dict[str, Any]]]:
    files: list[str] = []
    tile_refs: list[str] = []
    mask_refs: list[str] = []
    n = stack.shape[0]
    width = max(3, len(str(max(n - 1, 0))))
    if opts.fmt == "png":
        tile_dir, mask_dir = out / "tiles" / sid, out / "masks" / sid
        names = [f"{k:0{width}d}.png" for k in range(n)]
        for k, name in enumerate(names):
            _write_png(tile_dir / name, stack[k])
            if masks is not None:
                _write_png(mask_dir / name, masks[k])
        for folder in (tile_dir, mask_dir):
            _remove_stale(folder, set(names))
        tile_refs = [f"tiles/{sid}/{name}" for name in names]
        mask_refs = [f"masks/{sid}/{name}" for name in names] if masks is not None else []
    elif opts.fmt == "npz":
        arrays: dict[str, np.ndarray] = {
            "tiles": stack,
            "coords": _coords(chosen, grid, n),
            "padding": np.arange(n) >= chosen.size,
        }
        if masks is not None:
            arrays["masks"] = masks
        with atomic_write(out / "tiles" / f"{sid}.npz", "wb") as fh:
            np.savez(fh, **arrays)
        tile_refs = [f"tiles/{sid}.npz"] * n
        mask_refs = tile_refs if masks is not None else []
    files += sorted(set(tile_refs) | set(mask_refs))

    rows: list[dict[str, Any]] = []
    if opts.mosaic:
        r, c = opts.mosaic
        _write_png(out / "mosaics" / f"{sid}.png", make_mosaic(stack, r, c))
        row: dict[str, Any] = {
            "image": f"mosaics/{sid}.png",
            "slide_id": sid,
            "level": level,
            "n_tissue_tiles": int(chosen.size),
        }
        files.append(row["image"])
        if masks is not None:
            _write_png(out / "mosaics" / f"{sid}_mask.png", make_mosaic(masks, r, c))
            row["mask"] = f"mosaics/{sid}_mask.png"
            files.append(row["mask"])
        rows.append(row)
    elif opts.fmt != "none":
        coords = _coords(chosen, grid, n)
        for k in range(n):
            real = k < chosen.size
            pos = int(chosen[k]) if real else -1
            row = {
                "image": tile_refs[k],
                "slide_id": sid,
                "tile": k,
                "level": level,
                "y": int(coords[k, 0]) if real else None,
                "x": int(coords[k, 1]) if real else None,
                "score": int(score[pos]) if real else None,
                "tissue": round(float(tissue[pos]) / (grid.size * grid.size), 6) if real else 0.0,
                "padding": int(not real),
            }
            if masks is not None:
                row["mask"] = mask_refs[k]
            rows.append(row)
    return files, rows


def _coords(chosen: np.ndarray, grid: Grid, n: int) -> np.ndarray:
    """Level ``(y, x)`` of each output tile; background padding tiles (rank >= len(chosen)) get ``(0, 0)``."""
    coords = np.zeros((n, 2), dtype=np.int64)
    for k, pos in enumerate(chosen):
        coords[k] = grid.origin(pos)
    return coords


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete tiles of an earlier run with a larger N, so the folder holds exactly this run's tiles."""
    if not folder.is_dir():
        return
    for p in folder.glob("*.png"):
        if p.name not in keep:
            p.unlink()


def collect_slides(inputs: Sequence[str | os.PathLike[str]], suffixes: Sequence[str]) -> list[Path]:
    """Slide files from paths and folders (folders: files with a slide suffix, ``*_mask.*`` left out), sorted.

    Raises:
        DataError: When a path does not exist or nothing is found.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(
                f
                for f in p.iterdir()
                if f.is_file() and f.suffix.lower() in suffixes and not slide_id_of(f).endswith("_mask")
            )
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"slide path not found: {p}", hint="pass slide files or folders that hold them")
    if not found:
        raise DataError(
            f"no slides found in {', '.join(str(i) for i in inputs)}",
            hint=f"slides are files ending in {', '.join(suffixes)}",
        )
    return found

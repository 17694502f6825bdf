"""Tiling one slide: choose the level, score or reuse the index, select, cut tiles and masks, write outputs.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit._io import write_json
from medkit._names import escape_name
from medkit.errors import DataError, UsageError
from medkit.io.slide import Slide, choose_level, open_slide
from medkit.tile._grid import Grid, cut_tile, drop_alpha
from medkit.tile._outputs import SlideTiles, raise_if_output_error, write_outputs
from medkit.tile._score import score_slide_level
from medkit.tile._select import select_tiles

__all__ = ["INDEX_VERSION", "TileOptions", "SlideResult", "slide_id_of", "find_mask", "tile_slide"]

INDEX_VERSION = 1


def slide_id_of(path: str | os.PathLike[str]) -> str:
    """The slide id: the file name without its suffix (and without ``.ome`` for OME-TIFF), in the lossless UTF-8
    form of `medkit._names.escape_name` (bytes that are not UTF-8 as ``\\xNN``): it names output files and rows."""
    name = escape_name(Path(path).name)
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
    except Exception as exc:  # a corrupt slide must not stop the other slides...
        raise_if_output_error(exc, opts.out)  # ...but an output that cannot be written stops the run
        result = SlideResult(sid, str(path), "failed", f"{path}: {type(exc).__name__}: {exc}", "check the file")
    result.seconds = time.perf_counter() - start
    return result


def _finished(out: Path, done_path: Path, key: dict[str, Any], opts: TileOptions, mask: Path | None) -> Any:
    """The done marker of an earlier run with the same index, outputs and mask whose files all exist, or None."""
    done = _load_json(done_path)
    if (
        done
        and done.get("key") == key
        and done.get("outputs") == opts.output_key()
        and done.get("mask") == (mask.name if mask else None)
        and all((out / f).is_file() for f in done.get("files", []))
    ):
        return done
    return None


def _load_or_score(
    slide: Slide, path: Path, sid: str, level: int, key: dict[str, Any], opts: TileOptions, index_path: Path
) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Scores of every tile: from the index of an earlier run when its key matches, else computed and indexed.

    Returns:
        ``(grid, score, tissue, image, reused)``; ``image`` is the decoded level when it was decoded whole.
    """
    index = _load_json(index_path)
    if index and index.get("key") == key:
        g = index["grid"]
        grid = Grid(g["rows"], g["cols"], g["top"], g["left"], g["size"], g["height"], g["width"])
        return grid, np.asarray(index["score"], dtype=np.int64), np.asarray(index["tissue"], dtype=np.int64), None, True
    grid, score, tissue, thr, img = score_slide_level(
        slide, level, opts.size, opts.tissue, opts.white_threshold, opts.max_level_bytes, opts.threads
    )
    lv = slide.level(level)
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
    return grid, score, tissue, img, False


def _cut_tiles(
    slide: Slide, level: int, grid: Grid, chosen: np.ndarray, img: np.ndarray | None, opts: TileOptions
) -> np.ndarray:
    """The chosen tiles in rank order, from the decoded level or read one by one, then white background tiles."""
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
    tiles += [pad_tile] * (opts.n - int(chosen.size))
    return np.stack(tiles) if tiles else np.zeros((0, s, s, channels), np.uint8)


def _cut_masks(
    mask_path: Path, slide: Slide, level: int, grid: Grid, chosen: np.ndarray, opts: TileOptions
) -> np.ndarray:
    """Mask tiles at the chosen tiles' places, then label-0 tiles for the background tiles."""
    s = opts.size
    mslide, cut = _mask_reader(mask_path, slide, level, opts.backend)
    with mslide:
        mtiles = [cut(*grid.origin(pos), s) for pos in chosen]
    mtiles += [np.zeros((s, s), np.uint8)] * (opts.n - int(chosen.size))
    return np.stack(mtiles) if mtiles else np.zeros((0, s, s), np.uint8)


def _tile_slide(path: Path, sid: str, opts: TileOptions) -> SlideResult:
    out = Path(opts.out)
    index_path = out / "index" / f"{sid}.json"
    done_path = out / "index" / f"{sid}.done.json"
    mask_path = find_mask(opts.masks_dir, sid)
    with open_slide(path, opts.backend) as slide:
        level = choose_level(slide, opts.level, opts.mpp)
        key = _index_key(path, level, opts)
        done = _finished(out, done_path, key, opts, mask_path) if not opts.force else None
        if done:
            return SlideResult(sid, str(path), "skipped", rows=done["rows"], n_tissue=done["n_tissue"], level=level)
        grid, score, tissue, img, reused = _load_or_score(slide, path, sid, level, key, opts, index_path)
        chosen = select_tiles(score, tissue, opts.n, opts.tissue, opts.min_tissue, opts.size)
        tiles = _cut_tiles(slide, level, grid, chosen, img, opts)
        del img  # the decoded level can be large: free it before writing
        masks = None if mask_path is None else _cut_masks(mask_path, slide, level, grid, chosen, opts)
        cut = SlideTiles(sid, level, grid, score, tissue, chosen, tiles, masks)
        files, rows = write_outputs(out, cut, opts.fmt, opts.mosaic)
        n_tissue = int(chosen.size)
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

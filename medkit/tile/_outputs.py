"""What `tile_slide` writes for one slide: tiles (PNG files or one npz), mask tiles, mosaics and table rows.

Every file is written atomically. This module imports numpy and cv2 (inside functions), not torch.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit._io import atomic_write, output_error
from medkit.errors import DataError
from medkit.tile._grid import Grid, make_mosaic

__all__ = ["FORMATS", "SlideTiles", "write_outputs", "raise_if_output_error"]

FORMATS = ("png", "npz", "none")


@dataclass
class SlideTiles:
    """The tiles chosen from one slide, ready to write.

    Attributes:
        slide_id: The slide id.
        level: The level tiled.
        grid: Its tile grid.
        score: Row-major score of every grid tile.
        tissue: Row-major tissue pixel count of every grid tile.
        chosen: Grid positions of the tissue tiles in rank order.
        tiles: ``(n, s, s[, C])`` tiles in rank order, background tiles after the chosen ones.
        masks: ``(n, s, s)`` mask tiles cut at the same places, or None.
    """

    slide_id: str
    level: int
    grid: Grid
    score: np.ndarray
    tissue: np.ndarray
    chosen: np.ndarray
    tiles: np.ndarray
    masks: np.ndarray | None = None


#: Write errors that no other slide can escape: stop the run instead of failing slide after slide.
_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def raise_if_output_error(exc: BaseException, out: str | os.PathLike[str]) -> None:
    """Raise a `DataError` that blames the output when ``exc`` failed to write under ``out`` (or filled the disk).

    `medkit.tile.tile_slide` calls it before reporting a slide as failed: a full disk or a folder that cannot be
    written is not the slide's fault, and it would fail every other slide too.

    Raises:
        DataError: Naming the output file or folder.
    """
    if not isinstance(exc, OSError):
        return
    name = getattr(exc, "filename", None)
    under = False
    if isinstance(name, str | bytes | os.PathLike):
        try:
            Path(os.path.abspath(os.fsdecode(name))).relative_to(os.path.abspath(out))
            under = True
        except ValueError:
            under = False
    if under or exc.errno in _FATAL_ERRNOS:
        raise output_error(os.fsdecode(name) if under else out, exc, "tile output") from exc


def _png_bytes(arr: np.ndarray) -> bytes:
    import cv2

    img = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError("cannot encode a PNG tile", hint="check the tile array")
    return buf.tobytes()


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write an RGB or one-channel array as a PNG file, atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(_png_bytes(arr))


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


def _write_png_tiles(out: Path, cut: SlideTiles) -> tuple[list[str], list[str]]:
    """OUT/tiles/<slide>/NNN.png (and OUT/masks/<slide>/NNN.png); returns the tile and mask paths under OUT."""
    sid, n = cut.slide_id, cut.tiles.shape[0]
    width = max(3, len(str(max(n - 1, 0))))
    tile_dir, mask_dir = out / "tiles" / sid, out / "masks" / sid
    names = [f"{k:0{width}d}.png" for k in range(n)]
    for k, name in enumerate(names):
        write_png(tile_dir / name, cut.tiles[k])
        if cut.masks is not None:
            write_png(mask_dir / name, cut.masks[k])
    for folder in (tile_dir, mask_dir):
        _remove_stale(folder, set(names))
    tile_refs = [f"tiles/{sid}/{name}" for name in names]
    mask_refs = [f"masks/{sid}/{name}" for name in names] if cut.masks is not None else []
    return tile_refs, mask_refs


def _write_npz(out: Path, cut: SlideTiles) -> tuple[list[str], list[str]]:
    """OUT/tiles/<slide>.npz with tiles, coords, padding flags (and masks); returns the references per tile."""
    n = cut.tiles.shape[0]
    arrays: dict[str, np.ndarray] = {
        "tiles": cut.tiles,
        "coords": _coords(cut.chosen, cut.grid, n),
        "padding": np.arange(n) >= cut.chosen.size,
    }
    if cut.masks is not None:
        arrays["masks"] = cut.masks
    with atomic_write(out / "tiles" / f"{cut.slide_id}.npz", "wb") as fh:
        np.savez(fh, **arrays)
    tile_refs = [f"tiles/{cut.slide_id}.npz"] * n
    return tile_refs, tile_refs if cut.masks is not None else []


def _write_mosaics(out: Path, cut: SlideTiles, mosaic: tuple[int, int]) -> dict[str, Any]:
    """OUT/mosaics/<slide>.png (and <slide>_mask.png); returns the slide's one table row."""
    r, c = mosaic
    sid = cut.slide_id
    write_png(out / "mosaics" / f"{sid}.png", make_mosaic(cut.tiles, r, c))
    row: dict[str, Any] = {
        "image": f"mosaics/{sid}.png",
        "slide_id": sid,
        "level": cut.level,
        "n_tissue_tiles": int(cut.chosen.size),
    }
    if cut.masks is not None:
        write_png(out / "mosaics" / f"{sid}_mask.png", make_mosaic(cut.masks, r, c))
        row["mask"] = f"mosaics/{sid}_mask.png"
    return row


def _tile_rows(cut: SlideTiles, tile_refs: list[str], mask_refs: list[str]) -> list[dict[str, Any]]:
    """One table row per tile: where it is, its score and tissue fraction; background tiles have ``padding`` 1."""
    n = cut.tiles.shape[0]
    coords = _coords(cut.chosen, cut.grid, n)
    rows: list[dict[str, Any]] = []
    for k in range(n):
        real = k < cut.chosen.size
        pos = int(cut.chosen[k]) if real else -1
        row = {
            "image": tile_refs[k],
            "slide_id": cut.slide_id,
            "tile": k,
            "level": cut.level,
            "y": int(coords[k, 0]) if real else None,
            "x": int(coords[k, 1]) if real else None,
            "score": int(cut.score[pos]) if real else None,
            "tissue": round(float(cut.tissue[pos]) / (cut.grid.size * cut.grid.size), 6) if real else 0.0,
            "padding": int(not real),
        }
        if cut.masks is not None:
            row["mask"] = mask_refs[k]
        rows.append(row)
    return rows


def write_outputs(
    out: Path, cut: SlideTiles, fmt: str, mosaic: tuple[int, int] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Write one slide's tiles, mask tiles and mosaics under ``out``.

    Args:
        out: Output folder.
        cut: The slide's chosen tiles.
        fmt: ``"png"`` (one file per tile), ``"npz"`` (one file per slide) or ``"none"`` (mosaic only).
        mosaic: ``(rows, cols)`` of a mosaic to write, or None.

    Returns:
        The files written (paths under ``out``) and the slide's rows of OUT/tiles.csv: one per mosaic when a
        mosaic is written, else one per tile (none for ``fmt="none"``).
    """
    tile_refs: list[str] = []
    mask_refs: list[str] = []
    if fmt == "png":
        tile_refs, mask_refs = _write_png_tiles(out, cut)
    elif fmt == "npz":
        tile_refs, mask_refs = _write_npz(out, cut)
    files = sorted(set(tile_refs) | set(mask_refs))
    if mosaic:
        row = _write_mosaics(out, cut, mosaic)
        files += [row["image"], *([row["mask"]] if "mask" in row else [])]
        return files, [row]
    if fmt != "none":
        return files, _tile_rows(cut, tile_refs, mask_refs)
    return files, []

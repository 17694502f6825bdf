"""`medkit tile`: cut whole-slide images into the N most tissue-rich tiles, mosaics and a dataset table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.cli._options import JsonOpt, OutOpt, WorkersOpt
from medkit.console import Progress, error, info, out, print_json, warn
from medkit.errors import UsageError

__all__ = ["tile"]

# Columns medkit tile writes itself; a label column with one of these names would be ambiguous.
_OWN_COLUMNS = {"image", "slide_id", "tile", "level", "y", "x", "score", "tissue", "padding", "mask", "n_tissue_tiles"}
_ID_COLUMNS = ("slide_id", "image_id", "image", "id", "ID")


def _parse_mosaic(text: str | None, n: int) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--mosaic '{text}' is not ROWSxCOLS", hint="e.g. --mosaic 6x6") from None
    if rows < 1 or cols < 1 or rows * cols != n:
        raise UsageError(f"--mosaic {rows}x{cols} holds {rows * cols} tiles but --n is {n}", hint="make --n = R * C")
    return rows, cols


def _attach_labels(frame: Any, labels_path: Path) -> tuple[Any, list[str], list[str]]:
    """Left-join the label table on slide id; returns the frame, the label columns and the slides without labels."""
    from medkit.data.table import load_table
    from medkit.tile import slide_id_of

    labels = load_table(labels_path)
    id_col = next((c for c in _ID_COLUMNS if c in labels.columns), None)
    if id_col is None:
        raise UsageError(
            f"{labels_path}: no slide id column (looked for {', '.join(_ID_COLUMNS)})",
            hint="name the column with the slide ids image_id (PANDA) or slide_id",
        )
    labels = labels.copy()
    labels["slide_id"] = [slide_id_of(str(v)) for v in labels[id_col]]
    labels = labels.drop(columns=[id_col] if id_col != "slide_id" else []).drop_duplicates("slide_id")
    clash = [c for c in labels.columns if c in _OWN_COLUMNS and c != "slide_id"]
    if clash:
        warn(f"{labels_path}: columns {', '.join(clash)} clash with medkit tile's own columns and are left out")
        labels = labels.drop(columns=clash)
    label_cols = [c for c in labels.columns if c != "slide_id"]
    if frame.empty:
        return frame, label_cols, []
    merged = frame.merge(labels, on="slide_id", how="left")
    known = set(labels["slide_id"])
    missing = sorted(set(frame["slide_id"]) - known)
    return merged, label_cols, missing


def tile(
    slides: Annotated[
        list[Path],
        typer.Argument(
            metavar="SLIDES", help="Slide files (.tiff, .svs, ...) or folders holding them.", show_default=False
        ),
    ],
    out_dir: OutOpt = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Label table (PANDA train.csv): image_id/slide_id + label columns to carry."),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Tiles per slide (background tiles fill up the rest).")] = 36,
    size: Annotated[int, typer.Option("--size", min=8, help="Tile side in pixels at the chosen level.")] = 256,
    level: Annotated[
        int | None, typer.Option("--level", min=0, help="Pyramid level (default 1, or 0 for a single-level slide).")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", min=0.0, help="Use the level closest to this many microns per pixel.")
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks", file_okay=False, help="Folder of label masks <slide>_mask.tiff (cut at the same tiles)."
        ),
    ] = None,
    mosaic: Annotated[
        str | None, typer.Option("--mosaic", help="Also write an RxC mosaic per slide, e.g. 6x6 (R*C must equal --n).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            envvar="MEDKIT_TILE_FORMAT",
            help="Tiles as png files, one npz per slide, or none (mosaic only).",
        ),
    ] = "png",
    tissue: Annotated[
        str, typer.Option("--tissue", help="Tile ranking: white (PANDA: lowest pixel sum) or otsu (saturation).")
    ] = "white",
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", min=0.0, max=1.0, help="Minimum tissue fraction of a kept tile.")
    ] = 0.0,
    white_threshold: Annotated[
        int, typer.Option("--white-threshold", min=1, max=256, help="Gray level counted as background (white rule).")
    ] = 230,
    backend: Annotated[str, typer.Option("--backend", help="Slide reader: auto, tifffile or openslide.")] = "auto",
    workers: WorkersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Redo slides that are already done.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut whole-slide images into the N most tissue-rich tiles (PANDA style), with masks, mosaics and a table.

    Writes OUT/index/<slide>.json (scores of every tile), tiles, optional mosaics, and OUT/tiles.csv whose image
    column points at the mosaics (or at the tiles). Finished slides are skipped on a re-run; a slide that cannot
    be read is reported and skipped (exit code 1 at the end).
    """
    import pandas as pd

    from medkit.io.slide import OPENSLIDE_SUFFIXES, SLIDE_SUFFIXES
    from medkit.data.table import save_table
    from medkit.tile import FORMATS, TISSUE_METHODS, TileOptions, collect_slides, slide_id_of, tile_slide

    if out_dir is None:
        raise UsageError("medkit tile needs an output folder", hint="add --out DIR")
    if level is not None and mpp is not None:
        raise UsageError("--level and --mpp both given", hint="choose the level one way: --level N or --mpp X")
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", hint=f"use one of {', '.join(FORMATS)}")
    if tissue not in TISSUE_METHODS:
        raise UsageError(f"unknown --tissue '{tissue}'", hint=f"use one of {', '.join(TISSUE_METHODS)}")
    if backend not in ("auto", "tifffile", "openslide"):
        raise UsageError(f"unknown --backend '{backend}'", hint="use auto, tifffile or openslide")
    grid = _parse_mosaic(mosaic, n)
    if fmt == "none" and grid is None:
        raise UsageError("--format none writes no tiles and no mosaic was asked for", hint="add --mosaic RxC")
    if masks is not None and not masks.is_dir():
        raise UsageError(f"--masks folder not found: {masks}", hint="pass the folder that holds <slide>_mask.tiff")

    paths = collect_slides(slides, SLIDE_SUFFIXES + OPENSLIDE_SUFFIXES)
    ids: dict[str, Path] = {}
    for p in paths:
        sid = slide_id_of(p)
        if sid in ids and ids[sid].resolve() != p.resolve():
            raise UsageError(
                f"two slides share the id '{sid}': {ids[sid]} and {p}", hint="tile them into separate --out"
            )
        ids[sid] = p
    paths = list(ids.values())

    n_workers = min(os.cpu_count() or 1, len(paths)) if workers is None else min(workers, len(paths))
    # One slide at a time: decode its TIFF tiles in threads instead; several slides: one thread each.
    threads = 1 if n_workers > 1 else min(4, os.cpu_count() or 1)
    opts = TileOptions(
        out=str(out_dir),
        n=n,
        size=size,
        level=level,
        mpp=mpp,
        tissue=tissue,
        min_tissue=min_tissue,
        white_threshold=white_threshold,
        fmt=fmt,
        mosaic=grid,
        masks_dir=None if masks is None else str(masks),
        backend=backend,
        force=force,
        threads=threads,
    )
    results = []
    with Progress(total=len(paths), description="tile", unit="slide") as bar:
        if n_workers <= 1:
            for p in paths:
                results.append(tile_slide(p, opts))
                bar.update(1)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                futures = [pool.submit(tile_slide, p, opts) for p in paths]
                try:
                    for fut in as_completed(futures):
                        results.append(fut.result())
                        bar.update(1)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r.path])

    rows = [row for r in results if r.status != "failed" for row in r.rows]
    frame = pd.DataFrame(rows)
    for col in ("y", "x", "score"):  # empty for background padding tiles: keep the others integer
        if col in frame.columns:
            frame[col] = frame[col].astype("Int64")
    label_cols: list[str] = []
    if labels is not None:
        frame, label_cols, unlabeled = _attach_labels(frame, labels)
        if unlabeled:
            warn(f"{len(unlabeled)} slide(s) have no row in {labels}: {', '.join(unlabeled[:5])}")
    table_path = Path(out_dir) / "tiles.csv"
    if not frame.empty:
        save_table(frame, table_path)
        info(f"wrote {table_path} ({len(frame)} rows)")
    failed = [r for r in results if r.status == "failed"]
    summary = {
        "out": str(out_dir),
        "table": str(table_path) if not frame.empty else None,
        "slides": len(results),
        "tiled": sum(r.status == "done" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "failed": [{"slide": r.path, "error": r.message} for r in failed],
        "labels": label_cols,
        "per_slide": [
            {
                "slide_id": r.slide_id,
                "status": r.status,
                "level": r.level,
                "tissue_tiles": r.n_tissue,
                "reused_index": r.reused_index,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }
    if as_json:
        print_json(summary)
    else:
        _print_table(results, n)
    for r in failed:
        error(r.message, r.hint or None)
    if failed:
        error(f"{len(failed)} of {len(results)} slide(s) failed: {', '.join(r.slide_id for r in failed)}")
        raise typer.Exit(1)


def _print_table(results: list[Any], n: int) -> None:
    from rich.table import Table

    table = Table(title=None, box=None, header_style="bold")
    for col in ("slide", "status", "level", "tissue tiles", "seconds"):
        table.add_column(col, justify="right" if col in ("level", "tissue tiles", "seconds") else "left")
    for r in results:
        status = r.status + (" (index reused)" if r.reused_index else "")
        level = "" if r.level is None else str(r.level)
        tiles = "" if r.status == "failed" else f"{r.n_tissue}/{n}"
        table.add_row(r.slide_id, status, level, tiles, f"{r.seconds:.2f}")
    out.print(table)

"""`medkit tile`: cut whole-slide images into the N most tissue-rich tiles, mosaics and a dataset table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medkit.cli._options import JsonOpt, OutOpt, WorkersOpt
from medkit.console import Progress, error, info, out, print_json, warn
from medkit.errors import UsageError

if TYPE_CHECKING:
    from medkit.tile import SlideResult, TilesTable

__all__ = ["tile"]


def _print_table(results: Sequence[SlideResult], n: int) -> None:
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


# Options only `medkit tile` has; the shared ones (--out, --workers, --json) come from _options.
SlidesArg = Annotated[
    list[Path],
    typer.Argument(
        metavar="SLIDES", help="Slide files (.tiff, .svs, ...) or folders holding them.", show_default=False
    ),
]
TileLabelsOpt = Annotated[
    Path | None,
    typer.Option("--labels", help="Label table (PANDA train.csv): image_id/slide_id + label columns to carry."),
]
NOpt = Annotated[int, typer.Option("--n", min=1, help="Tiles per slide (background tiles fill up the rest).")]
SizeOpt = Annotated[int, typer.Option("--size", min=8, help="Tile side in pixels at the chosen level.")]
LevelOpt = Annotated[
    int | None, typer.Option("--level", min=0, help="Pyramid level (default 1, or 0 for a single-level slide).")
]
MppOpt = Annotated[
    float | None, typer.Option("--mpp", min=0.0, help="Use the level closest to this many microns per pixel.")
]
MasksOpt = Annotated[
    Path | None,
    typer.Option("--masks", file_okay=False, help="Folder of label masks <slide>_mask.tiff (cut at the same tiles)."),
]
MosaicOpt = Annotated[
    str | None, typer.Option("--mosaic", help="Also write an RxC mosaic per slide, e.g. 6x6 (R*C must equal --n).")
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", envvar="MEDKIT_TILE_FORMAT", help="Tiles as png files, one npz per slide, or none (mosaic only)."
    ),
]
TissueOpt = Annotated[
    str, typer.Option("--tissue", help="Tile ranking: white (PANDA: lowest pixel sum) or otsu (saturation).")
]
MinTissueOpt = Annotated[
    float, typer.Option("--min-tissue", min=0.0, max=1.0, help="Minimum tissue fraction of a kept tile.")
]
WhiteThresholdOpt = Annotated[
    int, typer.Option("--white-threshold", min=1, max=256, help="Gray level counted as background (white rule).")
]
BackendOpt = Annotated[str, typer.Option("--backend", help="Slide reader: auto, tifffile or openslide.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo slides that are already done.")]


def _report(
    results: Sequence[SlideResult], table: TilesTable, out_dir: Path, labels: Path | None, n: int, as_json: bool
) -> None:
    """Say what was written, print the per-slide table (or JSON), then the failures; exit 1 when a slide failed."""
    from medkit.tile import summarize

    if table.unlabeled:
        warn(f"{len(table.unlabeled)} slide(s) have no row in {labels}: {', '.join(table.unlabeled[:5])}")
    if table.path is not None:
        info(f"wrote {table.path} ({len(table.frame)} rows)")
    if as_json:
        print_json(summarize(results, out_dir, table.path, table.label_columns).to_dict())
    else:
        _print_table(results, n)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        error(r.message, r.hint or None)
    if failed:
        error(f"{len(failed)} of {len(results)} slide(s) failed: {', '.join(r.slide_id for r in failed)}")
        raise typer.Exit(1)


def tile(
    slides: SlidesArg,
    out_dir: OutOpt = None,
    labels: TileLabelsOpt = None,
    n: NOpt = 36,
    size: SizeOpt = 256,
    level: LevelOpt = None,
    mpp: MppOpt = None,
    masks: MasksOpt = None,
    mosaic: MosaicOpt = None,
    fmt: FormatOpt = "png",
    tissue: TissueOpt = "white",
    min_tissue: MinTissueOpt = 0.0,
    white_threshold: WhiteThresholdOpt = 230,
    backend: BackendOpt = "auto",
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut whole-slide images into the N most tissue-rich tiles (PANDA style), with masks, mosaics and a table.

    Writes OUT/index/<slide>.json (scores of every tile), tiles, optional mosaics, and OUT/tiles.csv whose image
    column points at the mosaics (or at the tiles). Finished slides are skipped on a re-run; a slide that cannot
    be read is reported and skipped (exit code 1 at the end).
    """
    from medkit._lock import run_lock
    from medkit.tile import (
        TileOptions,
        check_options,
        find_slides,
        parse_mosaic,
        read_labels,
        tile_slides,
        write_tiles_table,
    )

    if out_dir is None:
        raise UsageError("medkit tile needs an output folder", hint="add --out DIR")
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
        mosaic=parse_mosaic(mosaic, n),
        masks_dir=None if masks is None else str(masks),
        backend=backend,
        force=force,
    )
    check_options(opts)
    label_table = read_labels(labels) if labels is not None else None  # a bad table fails before any slide
    paths = find_slides(slides)
    # One writer per OUT: the lock also proves OUT writable and clears temp files of a killed run.
    with run_lock(out_dir, "medkit tile", clean=("", "index", "mosaics", "tiles", "masks"), recursive=True):
        with Progress(total=len(paths), description="tile", unit="slide") as bar:
            results = tile_slides(paths, opts, workers, on_progress=lambda _result: bar.update(1))
        table = write_tiles_table(results, out_dir, label_table)
    _report(results, table, out_dir, labels, n, as_json)

"""Tiling many slides: find them, check the options, run `tile_slide` over a pool, and summarise the run.

One slide is tiled in this process with its TIFF tiles decoded by a few threads; several slides run one per
worker process (`medkit.parallel.pool_size` of them), one thread each. This module imports neither torch nor
pandas.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medkit._names import escape_text
from medkit.errors import DataError, UsageError
from medkit.parallel import pool_size, process_pool, usable_cores
from medkit.tile._outputs import FORMATS
from medkit.tile._score import TISSUE_METHODS
from medkit.tile._slide import SlideResult, TileOptions, slide_id_of, tile_slide

__all__ = [
    "BACKENDS",
    "parse_mosaic",
    "check_options",
    "collect_slides",
    "find_slides",
    "tile_slides",
    "TileSummary",
    "summarize",
]

BACKENDS = ("auto", "tifffile", "openslide")
# Decoder threads for a slide tiled alone (TIFF tile decoding stops scaling at about this many).
SINGLE_SLIDE_THREADS = 4


def parse_mosaic(text: str | None, n: int) -> tuple[int, int] | None:
    """``"6x6"`` -> ``(6, 6)``; None stays None.

    Raises:
        UsageError: When the text is not ``ROWSxCOLS`` or the mosaic does not hold exactly ``n`` tiles.
    """
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


def check_options(opts: TileOptions) -> None:
    """Refuse options that cannot work together, before any slide is opened.

    Raises:
        UsageError: For ``level`` and ``mpp`` both set, an unknown format, tissue rule or backend, format
            ``"none"`` without a mosaic, or a masks folder that does not exist.
    """
    if opts.level is not None and opts.mpp is not None:
        raise UsageError("--level and --mpp both given", hint="choose the level one way: --level N or --mpp X")
    if opts.fmt not in FORMATS:
        raise UsageError(f"unknown --format '{opts.fmt}'", hint=f"use one of {', '.join(FORMATS)}")
    if opts.tissue not in TISSUE_METHODS:
        raise UsageError(f"unknown --tissue '{opts.tissue}'", hint=f"use one of {', '.join(TISSUE_METHODS)}")
    if opts.backend not in BACKENDS:
        raise UsageError(f"unknown --backend '{opts.backend}'", hint="use auto, tifffile or openslide")
    if opts.fmt == "none" and opts.mosaic is None:
        raise UsageError("--format none writes no tiles and no mosaic was asked for", hint="add --mosaic RxC")
    if opts.masks_dir is not None and not Path(opts.masks_dir).is_dir():
        raise UsageError(
            f"--masks folder not found: {opts.masks_dir}", hint="pass the folder that holds <slide>_mask.tiff"
        )


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


def find_slides(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The slides to tile: `collect_slides` over every suffix a reader knows, each file once.

    Raises:
        DataError: When a path does not exist or nothing is found.
        UsageError: When two different files have the same slide id (their outputs would collide).
    """
    from medkit.io.slide import OPENSLIDE_SUFFIXES, SLIDE_SUFFIXES

    ids: dict[str, Path] = {}
    for p in collect_slides(inputs, SLIDE_SUFFIXES + OPENSLIDE_SUFFIXES):
        sid = slide_id_of(p)
        if sid in ids and ids[sid].resolve() != p.resolve():
            raise UsageError(
                f"two slides share the id '{sid}': {ids[sid]} and {p}", hint="tile them into separate --out"
            )
        ids[sid] = p
    return list(ids.values())


def _in_pool(
    paths: Sequence[Path], opts: TileOptions, workers: int, on_result: Callable[[SlideResult], None]
) -> list[SlideResult]:
    from concurrent.futures import as_completed

    results = []
    # Ctrl-C (or an error) cancels the slides not started and terminates the workers (medkit.parallel.stop_pool);
    # a slide cut short has no done marker, so the next run redoes it.
    with process_pool(workers) as pool:
        futures = [pool.submit(tile_slide, p, opts) for p in paths]
        for fut in as_completed(futures):
            results.append(fut.result())
            on_result(results[-1])
    return results


def tile_slides(
    paths: Sequence[str | os.PathLike[str]],
    opts: TileOptions,
    workers: int | None = None,
    on_progress: Callable[[SlideResult], Any] | None = None,
) -> list[SlideResult]:
    """Tile every slide with `tile_slide`: one slide with decoder threads, several in worker processes.

    ``opts.threads`` is decided here: a few decoder threads when slides run one at a time, 1 in a pool.

    Args:
        paths: Slide files (from `find_slides`).
        opts: The tiling options.
        workers: Worker processes (None: every usable core, never more than slides; 0 or 1: this process).
        on_progress: Called with each slide's result as it finishes (in completion order).

    Returns:
        One result per slide, in the order of ``paths``; failed slides are results too (``status="failed"``).
    """
    paths = [Path(p) for p in paths]
    n_workers = pool_size(workers, len(paths))
    threads = 1 if n_workers > 1 else min(SINGLE_SLIDE_THREADS, usable_cores())
    opts = replace(opts, threads=threads)

    def done(result: SlideResult) -> None:
        if on_progress is not None:
            on_progress(result)

    if n_workers <= 1:
        results = []
        for p in paths:
            results.append(tile_slide(p, opts))
            done(results[-1])
    else:
        results = _in_pool(paths, opts, n_workers, done)
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])


@dataclass(frozen=True)
class FailedSlide:
    """A slide that could not be tiled.

    Attributes:
        slide: The slide file.
        error: What went wrong.
    """

    slide: str
    error: str


@dataclass(frozen=True)
class SlideSummary:
    """One slide of a run.

    Attributes:
        slide_id: The slide id.
        status: ``"done"``, ``"skipped"`` or ``"failed"``.
        level: The level tiled (None when the slide failed before choosing one).
        tissue_tiles: Tiles taken from tissue (the rest are background).
        reused_index: Whether the scores came from an earlier run's index.
        seconds: Wall time, rounded to milliseconds.
    """

    slide_id: str
    status: str
    level: int | None
    tissue_tiles: int
    reused_index: bool
    seconds: float


@dataclass(frozen=True)
class TileSummary:
    """What a `medkit tile` run did (printed as JSON with ``--json``).

    Attributes:
        out: The output folder.
        table: OUT/tiles.csv, or None when no row was written.
        slides: Slides processed.
        tiled: Slides tiled in this run.
        skipped: Slides already done by an earlier run.
        failed: The slides that failed.
        labels: Label columns carried into the table.
        per_slide: One entry per slide, in slide order.
    """

    out: str
    table: str | None
    slides: int
    tiled: int
    skipped: int
    failed: list[FailedSlide]
    labels: list[str]
    per_slide: list[SlideSummary]

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data."""
        return asdict(self)


def summarize(
    results: Sequence[SlideResult], out: str | os.PathLike[str], table: Path | None, labels: Sequence[str] = ()
) -> TileSummary:
    """The summary of a run from its slide results, the written table and the label columns carried."""
    return TileSummary(
        out=str(out),
        table=str(table) if table is not None else None,
        slides=len(results),
        tiled=sum(r.status == "done" for r in results),
        skipped=sum(r.status == "skipped" for r in results),
        failed=[FailedSlide(escape_text(r.path), escape_text(r.message)) for r in results if r.status == "failed"],
        labels=list(labels),
        per_slide=[
            SlideSummary(r.slide_id, r.status, r.level, r.n_tissue, r.reused_index, round(r.seconds, 3))
            for r in results
        ],
    )

"""The `medkit tile` options a whole-slide run was trained on, read back from the tile output it was trained on.

`medkit tile --out OUT` records its settings in every ``OUT/index/<slide>.done.json``: ``key`` (level, tile size,
tissue rule, white threshold) and ``outputs`` (tiles per slide, minimum tissue, format, mosaic). A run's run.json
records the data folder and the label table it was trained on (``config.data``, ``config.labels``), relative to the
folder training ran in, which is the run folder less ``config.out``. The notebook of a code competition must tile
the test slides the same way, so these settings become its ``TILE`` options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medkit.errors import DataError

__all__ = ["tile_options", "tiles_folder", "read_tile_settings"]

_HINT = (
    "run it from the folder you trained in (the run's tile output must still be there), or pass the `medkit tile` "
    'options of the training tiles yourself: --tile-args "--level 1 --n 36 --size 256 --mosaic 6x6"'
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    return doc if isinstance(doc, dict) else {}


def _training_dirs(run: Path, out: str | None) -> list[Path]:
    """Where relative paths of a run.json may start: the folder training ran in (the run folder less its recorded
    ``--out``), then the current folder."""
    bases: list[Path] = []
    if out:
        here, rel = run.resolve().parts, Path(out).parts
        if not Path(out).is_absolute() and len(rel) <= len(here) and here[len(here) - len(rel) :] == rel:
            bases.append(Path(*here[: len(here) - len(rel)]))
    bases.append(Path.cwd())
    return bases


def tiles_folder(run: Path) -> Path | None:
    """The `medkit tile` output a run was trained on (a folder with ``index/*.done.json``), or None when it is gone.

    Args:
        run: A run folder (with run.json).
    """
    config = _read_json(run / "run.json").get("config") or {}
    recorded = [config.get("data"), config.get("labels")]
    candidates: list[Path] = []
    for value in recorded:
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        for base in [Path("/")] if path.is_absolute() else _training_dirs(run, config.get("out")):
            full = base / path
            candidates.append(full.parent if full.is_file() else full)
    return next((c for c in candidates if any((c / "index").glob("*.done.json"))), None)


def read_tile_settings(folder: Path) -> dict[str, Any]:
    """The tiling settings of a `medkit tile` output, the same for every slide.

    Raises:
        DataError: No finished slide, or slides tiled with different settings (``--mpp`` picks a level per slide).
    """
    found: dict[str, dict[str, Any]] = {}
    for done in sorted((folder / "index").glob("*.done.json")):
        doc = _read_json(done)
        key, outputs = doc.get("key") or {}, doc.get("outputs") or {}
        settings = {
            "level": key.get("level"),
            "size": key.get("size"),
            "tissue": key.get("tissue"),
            "white_threshold": key.get("white_threshold"),
            "n": outputs.get("n"),
            "min_tissue": outputs.get("min_tissue"),
            "format": outputs.get("format"),
            "mosaic": outputs.get("mosaic"),
        }
        found.setdefault(json.dumps(settings, sort_keys=True), settings)
    if not found:
        raise DataError(f"{folder}: no slide finished tiling (no index/*.done.json)", hint=_HINT)
    if len(found) > 1:
        levels = sorted({str(s["level"]) for s in found.values()})
        raise DataError(
            f"{folder}: the slides were tiled with different settings (levels {', '.join(levels)}), so no one set of "
            "`medkit tile` options reproduces them on the test slides",
            hint=_HINT,
        )
    return next(iter(found.values()))


def _as_options(settings: dict[str, Any]) -> tuple[str, ...]:
    opts = ["--level", settings["level"], "--n", settings["n"], "--size", settings["size"]]
    opts += ["--tissue", settings["tissue"], "--min-tissue", settings["min_tissue"]]
    opts += ["--white-threshold", settings["white_threshold"], "--format", settings["format"]]
    if settings["mosaic"]:
        rows, cols = settings["mosaic"]
        opts += ["--mosaic", f"{rows}x{cols}"]
    if any(v is None for v in opts):
        raise DataError("the tile output records incomplete settings (tiled by an older medkit?)", hint=_HINT)
    return tuple(str(v) for v in opts)


def tile_options(runs: list[Path]) -> tuple[str, ...]:
    """The `medkit tile` options that reproduce the tiles every run was trained on.

    Args:
        runs: Run folders with a run.json (single runs and the ``fold<k>/`` of ``--fold all`` roots).

    Raises:
        DataError: A run whose tile output cannot be found, or runs trained on differently tiled data.
    """
    chosen: dict[tuple[str, ...], list[Path]] = {}
    for run in runs:
        folder = tiles_folder(run)
        if folder is None:
            config = _read_json(run / "run.json").get("config") or {}
            raise DataError(
                f"{run}: cannot find the `medkit tile` output it was trained on (data {config.get('data')!r}, "
                f"labels {config.get('labels')!r}; no index/*.done.json there), so the notebook cannot tile the test "
                "slides the same way",
                hint=_HINT,
            )
        chosen.setdefault(_as_options(read_tile_settings(folder)), []).append(run)
    if len(chosen) > 1:
        found = "; ".join(f"{' '.join(opts)} ({', '.join(str(r) for r in rs)})" for opts, rs in chosen.items())
        raise DataError(
            f"the runs were trained on differently tiled data: {found}",
            hint="bundle runs trained on one tiling (the notebook tiles the test slides once)",
        )
    return next(iter(chosen), ())

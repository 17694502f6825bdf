"""OUT/tiles.csv: the rows of every tiled slide, with the slide labels carried over from a label table.

This module imports pandas (inside functions), not torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkit._io import output_error
from medkit.console import warn
from medkit.errors import UsageError
from medkit.tile._slide import SlideResult, slide_id_of

__all__ = ["TilesTable", "SlideLabels", "read_labels", "tiles_frame", "attach_labels", "write_tiles_table"]

# Columns medkit tile writes itself; a label column with one of these names would be ambiguous.
OWN_COLUMNS = frozenset(
    {"image", "slide_id", "tile", "level", "y", "x", "score", "tissue", "padding", "mask", "n_tissue_tiles"}
)
# Slide id columns of a label table, in order of preference (PANDA: image_id).
ID_COLUMNS = ("slide_id", "image_id", "image", "id", "ID")


@dataclass
class TilesTable:
    """OUT/tiles.csv as assembled (and written).

    Attributes:
        frame: The table (pandas DataFrame), one row per mosaic or per tile.
        path: The written file, or None when there was no row to write.
        label_columns: Columns carried over from the label table.
        unlabeled: Slides with no row in the label table.
    """

    frame: Any
    path: Path | None = None
    label_columns: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)


def tiles_frame(results: Sequence[SlideResult]) -> Any:
    """The table rows of every slide that did not fail, in the order of ``results``, as a DataFrame."""
    import pandas as pd

    frame = pd.DataFrame([row for r in results if r.status != "failed" for row in r.rows])
    for col in ("y", "x", "score"):  # empty for background padding tiles: keep the others integer
        if col in frame.columns:
            frame[col] = frame[col].astype("Int64")
    return frame


@dataclass
class SlideLabels:
    """A label table read and checked before any slide is tiled.

    Attributes:
        path: The table file.
        frame: One row per slide id: ``slide_id`` and the label columns (pandas DataFrame).
        columns: The label columns.
    """

    path: str
    frame: Any
    columns: list[str]


def read_labels(labels_path: str | os.PathLike[str]) -> SlideLabels:
    """Read a slide label table (PANDA ``train.csv``) and find its slide id column, before the slides are tiled.

    Raises:
        UsageError: When the label table has no slide id column.
        DataError: When the label table cannot be read.
    """
    from medkit.data.table import load_table

    labels = load_table(labels_path)
    id_col = next((c for c in ID_COLUMNS if c in labels.columns), None)
    if id_col is None:
        raise UsageError(
            f"{labels_path}: no slide id column (looked for {', '.join(ID_COLUMNS)})",
            hint="name the column with the slide ids image_id (PANDA) or slide_id",
        )
    labels = labels.copy()
    labels["slide_id"] = [slide_id_of(str(v)) for v in labels[id_col]]
    labels = labels.drop(columns=[id_col] if id_col != "slide_id" else []).drop_duplicates("slide_id")
    clash = [c for c in labels.columns if c in OWN_COLUMNS and c != "slide_id"]
    if clash:
        warn(f"{labels_path}: columns {', '.join(clash)} clash with medkit tile's own columns and are left out")
        labels = labels.drop(columns=clash)
    return SlideLabels(str(labels_path), labels, [c for c in labels.columns if c != "slide_id"])


def attach_labels(frame: Any, labels: SlideLabels | str | os.PathLike[str]) -> tuple[Any, list[str], list[str]]:
    """Left-join a label table on the slide id.

    Args:
        frame: Rows from `tiles_frame`.
        labels: The table from `read_labels`, or its path (PANDA ``train.csv``, a slide id column as in
            ``ID_COLUMNS``).

    Returns:
        The joined frame, the label columns and the slides without a label row.

    Raises:
        UsageError: When the label table has no slide id column.
        DataError: When the label table cannot be read.
    """
    table = labels if isinstance(labels, SlideLabels) else read_labels(labels)
    if frame.empty:
        return frame, table.columns, []
    merged = frame.merge(table.frame, on="slide_id", how="left")
    missing = sorted(set(frame["slide_id"]) - set(table.frame["slide_id"]))
    return merged, table.columns, missing


def write_tiles_table(
    results: Sequence[SlideResult],
    out: str | os.PathLike[str],
    labels: SlideLabels | str | os.PathLike[str] | None = None,
) -> TilesTable:
    """Assemble OUT/tiles.csv from the slides' rows (labels joined when given) and write it when it has rows.

    Args:
        results: From `tile_slides`, in slide order.
        out: The output folder.
        labels: Optional label table (`read_labels`, or its path) joined on the slide id.

    Returns:
        The table, where it was written (None: no rows), the label columns and the unlabeled slides.

    Raises:
        UsageError: When the label table has no slide id column.
    """
    from medkit.data.table import save_table

    table = TilesTable(tiles_frame(results))
    if labels is not None:
        table.frame, table.label_columns, table.unlabeled = attach_labels(table.frame, labels)
    if not table.frame.empty:
        try:
            table.path = save_table(table.frame, Path(out) / "tiles.csv")
        except OSError as exc:
            raise output_error(Path(out) / "tiles.csv", exc, "tile output") from None
    return table

"""The dataset table convention every medkit command reads and writes.

A dataset table is a CSV (``.csv``, ``.csv.gz``, ``.tsv``) or parquet file with one row per image:

- an **image column** (canonical name ``image``): a path relative to the data root (``train/a.png``) or an id
  without suffix (``ID_000012eaf``) that is resolved by searching the root for ``<id>.<known suffix>``;
- **label columns**: numeric columns (0/1 multi-hot, a class index, an ordinal grade, or probabilities);
- an optional **group column** (``patient_id``): rows of one group never go to different folds;
- optional **series** (``series_id``) and **slice order** (``slice_index``) columns for CT series;
- an optional **fold** column (``fold``), written by ``medkit split``.

Column roles are detected from common names (see `detect_spec`) and can be given explicitly. The converters from
the Kaggle layouts (RSNA hemorrhage long format, RANZCR CLiP, PANDA) live with their competition in
`medkit.competitions` (re-exported here); docs/data.md documents them. This module imports pandas (inside
functions) but not torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medkit.competitions.panda import from_panda
from medkit.competitions.ranzcr import RANZCR_GROUPS, RANZCR_LABELS, from_ranzcr
from medkit.competitions.rsna import RSNA_SUBTYPES, from_rsna_long
from medkit.errors import DataError, did_you_mean

__all__ = [
    "IMAGE_SUFFIXES",
    "TableSpec",
    "load_table",
    "save_table",
    "detect_spec",
    "resolve_paths",
    "index_files",
    "require_columns",
    # Competition knowledge, defined in medkit.competitions and re-exported here for existing imports:
    "from_rsna_long",
    "from_ranzcr",
    "from_panda",
    "RSNA_SUBTYPES",
    "RANZCR_LABELS",
    "RANZCR_GROUPS",
]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".npy",
    ".npz",
    ".dcm",
    ".dicom",
    ".bmp",
    ".webp",
)

ID_CANDIDATES = (
    "image",
    "path",
    "filepath",
    "file",
    "filename",
    "image_id",
    "image_path",
    "Image Index",
    "ImageId",
    "StudyInstanceUID",
    "SOPInstanceUID",
    "ID",
    "Id",
    "id",
    "slide_id",
    "name",
)
GROUP_CANDIDATES = ("patient_id", "PatientID", "Patient ID", "patient", "subject_id", "subject", "case_id")
SERIES_CANDIDATES = ("series_id", "SeriesInstanceUID", "series")
ORDER_CANDIDATES = ("slice_index", "InstanceNumber", "slice", "z", "position_z")
FOLD_CANDIDATES = ("fold", "kfold", "Fold")
SPLIT_CANDIDATES = ("split", "subset", "set")
NON_LABEL_HINTS = {
    "age",
    "patient age",
    "follow_up",
    "follow-up #",
    "followup",
    "width",
    "height",
    "x",
    "y",
    "originalimage[width",
    "height]",
    "originalimagepixelspacing[x",
    "y]",
    "view",
    "sex",
}


@dataclass(frozen=True)
class TableSpec:
    """Which column plays which role in a dataset table.

    Attributes:
        image: Image path/id column.
        labels: Label columns, in model-output order.
        group: Patient/study column (never split across folds), or None.
        series: Series column (CT), or None.
        order: Slice order column within a series, or None.
        fold: Fold column, or None.
        split: Predefined split column (train/val/test), or None.
        label_groups: Optional named groups of label columns (one head per group, e.g. RANZCR ETT/NGT/CVC).
    """

    image: str
    labels: tuple[str, ...] = ()
    group: str | None = None
    series: str | None = None
    order: str | None = None
    fold: str | None = None
    split: str | None = None
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def with_(self, **changes: Any) -> TableSpec:
        """A copy with some roles changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_table(path: str | os.PathLike[str]) -> Any:
    """Read a dataset table (CSV, CSV.gz, TSV, parquet) into a pandas DataFrame.

    Raises:
        DataError: When the file is missing, empty or unparsable; the message names the file.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"table not found: {p}", hint="give the path of a CSV or parquet file")
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        elif name.endswith((".tsv", ".tsv.gz")):
            df = pd.read_csv(p, sep="\t")
        else:
            df = pd.read_csv(p)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise DataError(f"{p}: cannot read the table: {exc}", hint="check it is a valid CSV/TSV/parquet file") from exc
    if df.shape[1] == 0:
        raise DataError(f"{p}: the table has no columns", hint="the first line must be a header")
    return df


def save_table(df: Any, path: str | os.PathLike[str]) -> Path:
    """Write a table atomically as CSV (or parquet for ``.parquet``), never half-written."""
    from medkit._io import atomic_write, write_csv

    p = Path(path)
    if p.name.lower().endswith((".parquet", ".pq")):
        with atomic_write(p, "wb") as fh:
            df.to_parquet(fh, index=False)
        return p
    return write_csv(p, df)


def _first_present(columns: Sequence[str], candidates: Iterable[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in columns:
            return cand
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def require_columns(columns: Iterable[Any], names: Iterable[str], role: str, source: Any = None) -> None:
    """Check that every name is a column; the error for the first missing one suggests the closest column.

    A column that differs only in case is suggested first (``'Y'``: did you mean ``'y'``?), then the closest by
    spelling (`medkit.errors.did_you_mean`).

    Args:
        columns: The table's columns (a DataFrame's ``columns`` or any iterable of names).
        names: The columns that must be present.
        role: What the columns are for, named in the message (``"label"``, ``"stratum"``, ``"--labels-from"``).
        source: The file the table came from, put in front of the message, or None.

    Raises:
        DataError: ``<source>: <role> column '<name>' is not in the table (did you mean '<col>'?)``, with the
            first 20 columns in the hint.
    """
    cols = [str(c) for c in columns]
    for name in names:
        if name in cols:
            continue
        same_case = [c for c in cols if c.lower() == name.lower()]
        guess = did_you_mean(name, same_case, cutoff=0.0) if same_case else did_you_mean(name, cols)
        where = f"{source}: " if source is not None else ""
        raise DataError(
            f"{where}{role} column '{name}' is not in the table{guess}", hint=f"columns are: {', '.join(cols[:20])}"
        )


def detect_spec(
    df: Any,
    image: str | None = None,
    labels: Sequence[str] | str | None = None,
    group: str | None = None,
    series: str | None = None,
    order: str | None = None,
    fold: str | None = None,
    split: str | None = None,
) -> TableSpec:
    """Work out the column roles of a table, honouring the ones given.

    Labels default to every numeric column that plays no other role and is not an obvious covariate (age,
    follow-up number, width, height). ``labels`` may be a comma-separated string or ``"auto"``.

    Raises:
        DataError: When a named column is missing or no image column can be found.
    """
    import pandas as pd

    cols = [str(c) for c in df.columns]

    def need(name: str | None, role: str) -> str | None:
        if name is not None:
            require_columns(cols, [name], role)
        return name

    image = need(image, "image") or _first_present(cols, ID_CANDIDATES)
    if image is None:
        raise DataError("cannot tell which column holds the image paths or ids", hint="name it with --image-col")
    group = need(group, "group") or _first_present(cols, GROUP_CANDIDATES)
    series = need(series, "series") or _first_present(cols, SERIES_CANDIDATES)
    order = need(order, "slice order") or _first_present(cols, ORDER_CANDIDATES)
    fold = need(fold, "fold") or _first_present(cols, FOLD_CANDIDATES)
    split = need(split, "split") or _first_present(cols, SPLIT_CANDIDATES)
    taken = {c for c in (image, group, series, order, fold, split) if c}
    if isinstance(labels, str) and labels != "auto":
        labels = [s.strip() for s in labels.split(",") if s.strip()]
    if labels is None or labels == "auto":
        label_cols = tuple(
            c
            for c in cols
            if c not in taken and c.lower() not in NON_LABEL_HINTS and pd.api.types.is_numeric_dtype(df[c])
        )
    else:
        label_cols = tuple(need(c, "label") for c in labels)  # type: ignore[misc]
    groups: dict[str, tuple[str, ...]] = {}
    if set(RANZCR_LABELS) <= set(label_cols):
        groups = dict(RANZCR_GROUPS)
    return TableSpec(image, label_cols, group, series, order, fold, split, groups)


def index_files(root: str | os.PathLike[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Map every image file under ``root`` (recursively) by relative path, by name and by stem.

    Relative paths always win; a name or stem that occurs twice in different folders maps to the first found.
    """
    root = Path(root)
    out: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            low = name.lower()
            if not low.endswith(tuple(suffixes)):
                continue
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full
            stems.setdefault(name, full)
            stems.setdefault(name[: -len(Path(name).suffix)] if Path(name).suffix else name, full)
    for key, value in stems.items():
        out.setdefault(key, value)
    return out


def resolve_paths(df: Any, root: str | os.PathLike[str], image_col: str, strict: bool = True) -> list[Path | None]:
    """The file of every row: ``root / value`` when it exists, else a search of ``root`` by name or stem.

    Args:
        df: The table.
        root: Data root folder.
        image_col: The image column.
        strict: Raise on the first unresolved row (with up to five examples) instead of returning None for it.

    Raises:
        DataError: When the root is missing, or (strict) some rows match no file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root not found: {root}", hint="pass the folder that holds the images with --data")
    values = [str(v) for v in df[image_col].tolist()]
    direct = [root / v for v in values]
    if all(p.is_file() for p in direct):
        return list(direct)
    index = index_files(root)
    paths: list[Path | None] = []
    missing: list[str] = []
    for v, p in zip(values, direct, strict=True):
        if p.is_file():
            paths.append(p)
            continue
        hit = index.get(v) or index.get(Path(v).name) or index.get(Path(v).stem)
        paths.append(hit)
        if hit is None:
            missing.append(v)
    if strict and missing:
        examples = ", ".join(missing[:5])
        raise DataError(
            f"{len(missing)} of {len(values)} rows of column '{image_col}' match no file under {root} "
            f"(e.g. {examples})",
            hint="check --data, or run `medkit audit` to list missing files",
        )
    return paths

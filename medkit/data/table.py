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

import math
import os
import re
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
    "list_files",
    "JOIN_RULES",
    "FileIndex",
    "Match",
    "Join",
    "join_ids",
    "id_text",
    "duplicate_id_conflicts",
    "describe_conflicts",
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
    return _strip_columns(df, p)


def _strip_columns(df: Any, source: Path) -> Any:
    """The table with surrounding spaces dropped from its column names (``id, label`` -> ``label``), said once."""
    from medkit.console import info

    names = [c.strip() if isinstance(c, str) else c for c in df.columns]
    changed = [str(c) for c, n in zip(df.columns, names, strict=True) if c != n]
    if not changed:
        return df
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(
            f"{source}: two columns are both named '{dup}' once surrounding spaces are dropped",
            hint="rename one of them in the header",
        )
    info(f"{source}: surrounding spaces dropped from column names: {', '.join(repr(c) for c in changed)}")
    df.columns = names
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


#: The join rules, in the order they are tried: the first rule that finds a file decides (see `FileIndex.match`).
JOIN_RULES: tuple[str, ...] = ("path", "name", "stem", "zero-padded stem", "stem, other extension")

_SUFFIX_RE = re.compile(r"\.(" + "|".join(s[1:] for s in IMAGE_SUFFIXES) + r")$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def id_text(value: Any) -> str | None:
    """An image id as text: ``7`` and ``7.0`` (an id column read as float) give ``"7"``; empty or NaN gives None.

    Surrounding spaces are dropped, backslashes become ``/`` and a leading ``./`` is removed.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text or None


def _drop_suffix(name: str) -> str:
    return _SUFFIX_RE.sub("", name)


def _number_key(stem: str) -> tuple[str, int] | None:
    """``("img_", 7)`` for ``img_007``: the stem's text before its trailing digits, and their value."""
    m = _NUMBERED.match(stem)
    return (m.group(1), int(m.group(2))) if m else None


@dataclass
class Match:
    """Which file one id names, by which rule; ``candidates`` holds every file a rule found (2+: ambiguous)."""

    candidates: tuple[int, ...] = ()
    rule: str | None = None

    @property
    def index(self) -> int | None:
        """The one matched name's index, or None (no match, or ambiguous)."""
        return self.candidates[0] if len(self.candidates) == 1 else None


class FileIndex:
    """Names (relative POSIX paths) looked up by the join rules `JOIN_RULES`, in order:

    1. ``path``: the id is the relative path (``train/007.png``);
    2. ``name``: the id is a file name found in some folder (``007.png``);
    3. ``stem``: the id is a file name without its suffix, or a relative path without it (``007``, ``train/007``);
    4. ``zero-padded stem``: the id's trailing number equals a stem's with zeros in front (``7`` -> ``007.png``,
       ``ID_7`` -> ``ID_0007.dcm``);
    5. ``stem, other extension``: the id carries a known image suffix the file does not (``007.jpg`` -> ``007.png``),
       then rules 3 and 4 on what is left.

    The first rule that finds any name decides; when it finds two or more, the match is ambiguous (never a guess).
    A name that is not valid UTF-8 is also found by its escaped form (`medkit._names.escape_name`).
    """

    def __init__(self, names: Iterable[str]) -> None:
        from medkit._names import escape_name

        self.names: list[str] = list(names)
        self.by_path: dict[str, int] = {}
        self.by_name: dict[str, list[int]] = {}
        self.by_stem: dict[str, list[int]] = {}
        self.by_number: dict[tuple[str, str, int], list[int]] = {}
        for k, rel in enumerate(self.names):
            forms = {rel, escape_name(rel)}
            for form in forms:
                self.by_path.setdefault(form, k)
                folder, _, name = form.rpartition("/")
                stem = _drop_suffix(name)
                self.by_name.setdefault(name, []).append(k)
                self.by_stem.setdefault(stem, []).append(k)
                if folder:
                    self.by_stem.setdefault(f"{folder}/{stem}", []).append(k)
                num = _number_key(stem)
                if num is not None:
                    self.by_number.setdefault(("", *num), []).append(k)
                    if folder:
                        self.by_number.setdefault((folder, *num), []).append(k)
        for table in (self.by_name, self.by_stem, self.by_number):
            for key, hits in table.items():
                table[key] = sorted(set(hits))  # type: ignore[index]

    def _stem_rules(self, text: str) -> tuple[list[int], str | None]:
        folder, _, name = text.rpartition("/")
        hits = self.by_stem.get(text) or self.by_stem.get(name) or []
        if hits:
            return hits, "stem"
        num = _number_key(name)
        if num is not None:
            hits = self.by_number.get((folder, *num)) or self.by_number.get(("", *num)) or []
            if hits:
                return hits, "zero-padded stem"
        return [], None

    def match(self, value: Any) -> Match:
        """The name(s) an id matches and the rule that found them (see the class docstring)."""
        text = id_text(value)
        if text is None:
            return Match()
        raw = str(value).strip()
        if "\\" in raw and raw in self.by_path:  # an escaped name (caf\xe9.png), before \ is read as a separator
            return Match((self.by_path[raw],), "path")
        if text in self.by_path:
            return Match((self.by_path[text],), "path")
        name = text.rpartition("/")[2]
        if name in self.by_name:
            return Match(tuple(self.by_name[name]), "name")
        hits, rule = self._stem_rules(text)
        if hits:
            return Match(tuple(hits), rule)
        bare = _drop_suffix(text)
        if bare != text:
            hits, _ = self._stem_rules(bare)
            if hits:
                return Match(tuple(hits), "stem, other extension")
        return Match()


def index_files(root: str | os.PathLike[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Map every image file under ``root`` (recursively) by relative path, by name and by stem.

    Relative paths always win; a name or stem that occurs twice in different folders maps to the first found.
    (`resolve_paths` uses the stricter `FileIndex`, which refuses to guess between two files.)
    """
    root = Path(root)
    out: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for rel in list_files(root, suffixes):
        full = root / rel
        name = full.name
        out[rel] = full
        stems.setdefault(name, full)
        stems.setdefault(name[: -len(Path(name).suffix)] if Path(name).suffix else name, full)
    for key, value in stems.items():
        out.setdefault(key, value)
    return out


def list_files(root: str | os.PathLike[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[str]:
    """Files under ``root`` (recursively) with one of ``suffixes``, as relative POSIX paths in walk order."""
    root = Path(root)
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(files):
            if name.lower().endswith(tuple(suffixes)):
                found.append((rel_dir / name).as_posix())
    return found


@dataclass
class Join:
    """The rows of a table joined to names by `FileIndex` rules.

    Attributes:
        column: The id column joined on.
        ids: Per row, the id as text (`id_text`; ``""`` for an empty cell).
        index: Per row, the matched name's index, or None.
        rules: Per row, the rule that matched (`JOIN_RULES`), or None.
        ambiguous: Per ambiguous row, the names the rule found (two or more).
    """

    column: str
    ids: list[str]
    index: list[int | None]
    rules: list[str | None]
    ambiguous: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def missing(self) -> list[int]:
        """Rows that match no name (ambiguous rows are not counted here)."""
        return [k for k, i in enumerate(self.index) if i is None and k not in self.ambiguous]

    def notes(self, names: Sequence[str], what: str = "image id") -> list[str]:
        """One line per rule other than ``path`` that was needed: ``image id 7 -> 007.png (zero-padded stem)``."""
        from medkit._names import escape_name

        first: dict[str, int] = {}
        count: dict[str, int] = {}
        for k, rule in enumerate(self.rules):
            if rule is None or rule == "path":
                continue
            first.setdefault(rule, k)
            count[rule] = count.get(rule, 0) + 1
        lines = []
        for rule in JOIN_RULES:
            if rule in first:
                k = first[rule]
                target = escape_name(names[self.index[k]])  # type: ignore[index]
                more = f"; {count[rule]} rows of '{self.column}' matched this way" if count[rule] > 1 else ""
                lines.append(f"{what} {self.ids[k]} -> {target} ({rule}{more})")
        return lines


def join_ids(df: Any, column: str, index: FileIndex) -> Join:
    """Join a table's id column to the names of ``index`` row by row (`FileIndex.match`)."""
    ids: list[str] = []
    rows: list[int | None] = []
    rules: list[str | None] = []
    ambiguous: dict[int, tuple[str, ...]] = {}
    for k, value in enumerate(df[column].tolist()):
        m = index.match(value)
        ids.append(id_text(value) or "")
        rows.append(m.index)
        rules.append(m.rule if m.index is not None else None)
        if len(m.candidates) > 1:
            ambiguous[k] = tuple(index.names[i] for i in m.candidates)
    return Join(column, ids, rows, rules, ambiguous)


def ambiguity_error(join: Join, where: Any) -> DataError:
    """The error for ambiguous rows: the first one with both files named, and how many there are."""
    from medkit._names import escape_name

    k, hits = next(iter(join.ambiguous.items()))
    n = len(join.ambiguous)
    return DataError(
        f"{where}: row {k + 2} ('{join.column}' = {join.ids[k]}) matches {len(hits)} files: "
        f"{escape_name(hits[0])} and {escape_name(hits[1])}" + (f" ({n} ambiguous rows in all)" if n > 1 else ""),
        hint="write the relative path (folder/name.ext) in the table so each row names one file",
    )


def resolve_paths(
    df: Any, root: str | os.PathLike[str], image_col: str, strict: bool = True, quiet: bool = False
) -> list[Path | None]:
    """The file of every row, by the join rules of `FileIndex` (relative path, name, stem, zero-padded stem, ...).

    Each rule other than an exact relative path that was needed is said once on stderr
    (``image id 7 -> 007.png (zero-padded stem)``).

    Args:
        df: The table.
        root: Data root folder.
        image_col: The image column.
        strict: Raise on unresolved rows (with up to five examples) instead of returning None for them.
        quiet: Do not print the join notes.

    Raises:
        DataError: When the root is missing, a row matches two files (always), or (strict) some rows match no file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data root not found: {root}", hint="pass the folder that holds the images with --data")
    values = [id_text(v) for v in df[image_col].tolist()]
    direct = [root / v if v is not None else None for v in values]
    if all(p is not None and p.is_file() for p in direct):
        return list(direct)
    names = list_files(root)
    join = join_ids(df, image_col, FileIndex(names))
    if join.ambiguous:
        raise ambiguity_error(join, root)
    if not quiet:
        from medkit.console import info

        for line in join.notes(names):
            info(line)
    paths: list[Path | None] = [root / names[i] if i is not None else None for i in join.index]
    missing = join.missing
    if strict and missing:
        examples = ", ".join(join.ids[k] or "(empty)" for k in missing[:5])
        raise DataError(
            f"{len(missing)} of {len(values)} rows of column '{image_col}' match no file under {root} "
            f"(e.g. {examples})",
            hint="check --data, or run `medkit audit` to list missing files",
        )
    return paths


def duplicate_id_conflicts(df: Any, image_col: str, label_cols: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Ids listed in more than one row with different label values: ``[(id, [row, ...]), ...]`` (0-based rows).

    Rows are compared on ``label_cols`` (NaN equal to NaN); ids are compared as `id_text`.
    """
    if not len(df) or not label_cols:
        return []
    keys = [id_text(v) for v in df[image_col].tolist()]
    labels = df[list(label_cols)].astype(object).where(df[list(label_cols)].notna(), None)
    rows_of: dict[str, list[int]] = {}
    for k, key in enumerate(keys):
        if key is not None:
            rows_of.setdefault(key, []).append(k)
    out = []
    for key, rows in rows_of.items():
        if len(rows) > 1 and len({tuple(labels.iloc[r].tolist()) for r in rows}) > 1:
            out.append((key, rows))
    return out


def describe_conflicts(conflicts: list[tuple[str, list[int]]], df: Any, label_cols: Sequence[str]) -> str:
    """``3 ids are listed twice or more with different labels (e.g. '5': rows 7, 9: hemorrhage 0 / 1)``."""
    key, rows = conflicts[0]
    cols = list(label_cols)
    shown = " / ".join(",".join(str(v) for v in df[cols].iloc[r].tolist()) for r in rows[:3])
    n = len(conflicts)
    what = f"{n} id{'s are' if n > 1 else ' is'} listed more than once with different labels"
    return f"{what} (e.g. '{key}': table rows {', '.join(str(r + 2) for r in rows[:3])}: {','.join(cols)} {shown})"

"""CT series: which slices belong together and in which order.

A head CT is labelled per slice, but a reader looks at the slices next to it. Everything that uses that context
(2.5D stacks, neighbour refinement, the sequence model) starts from a `SeriesIndex`: for every row of the dataset
table its series and its position along the series, plus what was found on the way (gaps, duplicate positions,
mixed spacing).

Two ways to build one:

- `series_from_table`: the table's series and slice-order columns (``TableSpec.series`` / ``.order``, detected by
  `medkit.data.table.detect_spec`), for PNG exports of CT series.
- `series_from_dicom`: the DICOM headers (no pixel decode). Slices are grouped by SeriesInstanceUID and ordered by
  their position along the slice normal, ``ImagePositionPatient . (row x column)`` from ImageOrientationPatient:
  this is correct for gantry-tilted series too, where the z coordinate alone still works but x/y drift. Without
  geometry the InstanceNumber decides, and without that the file name; `SeriesIndex.methods` says which.

Pure numpy; pydicom is imported only by `series_from_dicom`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = [
    "ORDER_METHODS",
    "SeriesFinding",
    "SeriesIndex",
    "from_long_labels",
    "neighbour_rows",
    "series_from_dicom",
    "series_from_table",
    "series_of_rows",
]

#: How a series' slice order was found, from the most to the least trustworthy.
ORDER_METHODS: tuple[str, ...] = ("position", "instance", "filename", "table")

# A step more than this many times the series' median spacing is a missing slice; a step that differs from the
# median by more than the relative tolerance (and is no gap) is mixed spacing; a step below the duplicate
# tolerance (mm, or index units) is two slices at one position.
_GAP_FACTOR = 1.5
_SPACING_TOL = 0.1
_DUPLICATE_TOL = 1e-3


@dataclass(frozen=True)
class SeriesFinding:
    """Something noticed while ordering one series.

    Attributes:
        series: The series id.
        kind: ``"gap"``, ``"duplicate"``, ``"mixed_spacing"`` or ``"fallback"`` (ordered without geometry).
        detail: One line for a person.
    """

    series: str
    kind: str
    detail: str


@dataclass
class SeriesIndex:
    """The series of every row of a dataset table, and each row's position in it.

    Attributes:
        series: ``(N,)`` str series id of each row.
        order: ``(N,)`` float slice position of each row (mm along the normal, an instance number, or a rank).
        method: How the order was found overall: the least trustworthy of `methods` (one of `ORDER_METHODS`).
        methods: Series id -> how that series was ordered.
        findings: Gaps, duplicate positions, mixed spacing and fallbacks, per series.
        patient: ``(N,)`` patient id of each row, or None when unknown.
        study: ``(N,)`` study id of each row, or None when unknown.
        paths: ``(N,)`` file of each row (`series_from_dicom`), or None.
    """

    series: np.ndarray
    order: np.ndarray
    method: str
    methods: dict[str, str] = field(default_factory=dict)
    findings: list[SeriesFinding] = field(default_factory=list)
    patient: np.ndarray | None = None
    study: np.ndarray | None = None
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.series)

    @property
    def gaps(self) -> list[SeriesFinding]:
        """Findings of kind ``"gap"`` (missing slices)."""
        return [f for f in self.findings if f.kind == "gap"]

    @property
    def duplicates(self) -> list[SeriesFinding]:
        """Findings of kind ``"duplicate"`` (two slices at one position)."""
        return [f for f in self.findings if f.kind == "duplicate"]

    @property
    def mixed_spacing(self) -> list[SeriesFinding]:
        """Findings of kind ``"mixed_spacing"``."""
        return [f for f in self.findings if f.kind == "mixed_spacing"]

    def sequences(self) -> list[np.ndarray]:
        """Row indices of each series in slice order (ties keep the row order); series sorted by id."""
        n = len(self.series)
        names, codes = np.unique(self.series.astype(str), return_inverse=True)
        rows = np.lexsort((np.arange(n), self.order.astype(np.float64), codes))
        bounds = np.flatnonzero(np.diff(codes[rows])) + 1
        return [np.asarray(s, dtype=np.int64) for s in np.split(rows, bounds)] if n else []

    def rank(self) -> np.ndarray:
        """``(N,)`` int position of each row in its series (0 = first slice)."""
        out = np.zeros(len(self.series), dtype=np.int64)
        for seq in self.sequences():
            out[seq] = np.arange(len(seq))
        return out

    def neighbours(self, k: int) -> np.ndarray:
        """``(N, k)`` row indices of the k-slice window centred on each row, the end slices repeated.

        Raises:
            UsageError: An even or non-positive k.
        """
        return neighbour_rows(self.sequences(), len(self.series), k)

    def summary(self) -> dict[str, Any]:
        """Counts for a report: rows, series, slices per series, method, findings by kind."""
        seqs = self.sequences()
        lengths = [len(s) for s in seqs] or [0]
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return {
            "rows": len(self.series),
            "series": len(seqs),
            "slices_min": int(min(lengths)),
            "slices_max": int(max(lengths)),
            "method": self.method,
            "findings": kinds,
        }


def neighbour_rows(sequences: Sequence[np.ndarray], n_rows: int, k: int) -> np.ndarray:
    """``(n_rows, k)`` window of k row indices centred on each row, clamped to the ends of its sequence.

    Args:
        sequences: Row indices of each series in slice order (`SeriesIndex.sequences`).
        n_rows: Number of rows; a row in no sequence gets itself k times.
        k: Odd window length.

    Raises:
        UsageError: An even or non-positive k.
    """
    if k < 1 or k % 2 == 0:
        raise UsageError(f"the slice window must be an odd number >= 1, got {k}", hint="e.g. --context 3")
    r = k // 2
    out = np.repeat(np.arange(n_rows, dtype=np.int64)[:, None], k, axis=1)
    for seq in sequences:
        m = len(seq)
        idx = np.clip(np.arange(m)[:, None] + np.arange(-r, r + 1)[None, :], 0, m - 1)
        out[seq] = seq[idx]
    return out


# ---------------------------------------------------------------------------------------------- findings
def _check_steps(name: str, pos: np.ndarray, method: str) -> list[SeriesFinding]:
    """Gaps, duplicates and mixed spacing of one series from its sorted positions."""
    if len(pos) < 2:
        return []
    steps = np.diff(np.sort(pos))
    found: list[SeriesFinding] = []
    dup = steps <= _DUPLICATE_TOL
    if dup.any():
        found.append(SeriesFinding(name, "duplicate", f"{int(dup.sum())} slice(s) share a position with another"))
    real = steps[~dup]
    if not len(real):
        return found
    unit = "mm" if method == "position" else ""
    if method == "position":
        spacing = float(np.median(real))
        gap = real > _GAP_FACTOR * spacing
    else:
        spacing = 1.0 if method in ("instance", "table") else float(np.median(real))
        gap = real > spacing + 0.5
    if gap.any():
        missing = int(np.sum(np.round(real[gap] / spacing) - 1))
        found.append(SeriesFinding(name, "gap", f"{int(gap.sum())} gap(s), about {max(missing, 1)} missing slice(s)"))
    regular = real[~gap]
    if method == "position" and len(regular) and np.any(np.abs(regular - spacing) > _SPACING_TOL * spacing):
        found.append(
            SeriesFinding(
                name,
                "mixed_spacing",
                f"spacing from {regular.min():.3g} to {regular.max():.3g}{unit} (median {spacing:.3g}{unit})",
            )
        )
    return found


def _weakest(methods: Iterable[str]) -> str:
    ranks = [ORDER_METHODS.index(m) for m in methods]
    return ORDER_METHODS[max(ranks)] if ranks else "table"


# ---------------------------------------------------------------------------------------------- table
def from_long_labels(df: Any, source: Any = None) -> Any:
    """The RSNA long label table (``ID_<image>_<subtype>``, ``Label``) as one row per image; others unchanged.

    So ``stage_2_train.csv`` feeds ``medkit train ct`` as it is (`medkit.competitions.rsna.from_rsna_long`).

    Args:
        df: A dataset table (pandas DataFrame).
        source: Its file, named in the log line.
    """
    from medkit.competitions.rsna import from_rsna_long, looks_like_rsna_long

    if not looks_like_rsna_long(df):
        return df
    wide = from_rsna_long(df)
    from medkit.console import info

    info(
        f"{source or 'table'}: RSNA long labels ({len(df)} rows) read as {len(wide)} images "
        f"x {wide.shape[1] - 1} labels"
    )
    return wide


def series_from_table(df: Any, spec: Any) -> SeriesIndex:
    """Series and slice order of every row from the table's columns.

    Args:
        df: The dataset table (pandas DataFrame).
        spec: Its `medkit.data.table.TableSpec`; ``spec.series`` names the series column, ``spec.order`` the slice
            order (numeric). Without an order column the table's row order is used (a ``fallback`` finding).

    Returns:
        The `SeriesIndex` (method ``"table"``), rows in the table's order.

    Raises:
        DataError: No series column, or a non-numeric / missing slice order.
    """
    import pandas as pd

    if not spec.series or spec.series not in df.columns:
        raise DataError(
            "the table has no series column, so slices cannot be grouped into series",
            hint="add a series_id column (or SeriesInstanceUID), and slice_index for the order within it",
        )
    series = df[spec.series].astype(str).to_numpy()
    findings: list[SeriesFinding] = []
    if spec.order and spec.order in df.columns:
        order = pd.to_numeric(df[spec.order], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(order)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{int(bad.sum())} rows have no numeric slice order in column '{spec.order}' "
                f"(first: row {first + 2} of the table, value {df[spec.order].iloc[first]!r})",
                hint=f"fill '{spec.order}' with each slice's position in its series",
            )
    else:
        order = np.zeros(len(df), dtype=np.float64)
        for name in np.unique(series):
            rows = np.flatnonzero(series == name)
            order[rows] = np.arange(len(rows))
            findings.append(SeriesFinding(str(name), "fallback", "no slice order column: the table's row order"))
    index = SeriesIndex(series=series, order=order, method="table")
    index.methods = {str(s): "table" for s in np.unique(series)}
    for seq in index.sequences():
        name = str(series[seq[0]])
        findings.extend(_check_steps(name, order[seq], "table" if spec.order else "filename"))
    index.findings = findings
    if spec.group and spec.group in df.columns:
        index.patient = df[spec.group].astype(str).to_numpy()
    return index


def series_of_rows(df: Any, spec: Any, paths: Sequence[Any], source: Any, needed_by: str) -> SeriesIndex:
    """The `SeriesIndex` of the rows of a dataset table: its series / order columns, else its DICOM headers.

    The findings (gaps, duplicates, mixed spacing, fallbacks) are logged in one warning line.

    Args:
        df: The dataset table.
        spec: Its `medkit.data.table.TableSpec` (None: no table, the files alone).
        paths: The image file of every row.
        source: Where the table came from (named in messages).
        needed_by: What needs the series, for the message (``"--context 3"``).

    Raises:
        UsageError: A table without series column whose images are not all DICOM files.
    """
    if spec is None or spec.series is None:
        if not len(paths) or not all(p is not None and str(p).lower().endswith((".dcm", ".dicom")) for p in paths):
            raise UsageError(
                f"{needed_by} needs the CT series of every slice, and {source} has no series column "
                "(series_id, SeriesInstanceUID or series) and its images are not DICOM files",
                hint="add a series_id column and a slice_index (or InstanceNumber) column for the order in the "
                "series, or use DICOM slices (their headers give both)",
            )
        index = series_from_dicom([str(p) for p in paths])
    else:
        index = series_from_table(df, spec)
    if index.findings:
        from medkit.console import warn

        kinds = sorted({f.kind for f in index.findings})
        warn(f"series: {len(index.findings)} finding(s) ({', '.join(kinds)}), e.g. {index.findings[0].detail}")
    return index


# ---------------------------------------------------------------------------------------------- dicom
def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_geometry(path: str) -> dict[str, Any]:
    from medkit.io.dicom import _dcmread, header_mapping

    ds = _dcmread(Path(path), stop_before_pixels=True)
    head = dict(header_mapping(ds))
    iop = ds.get("ImageOrientationPatient")
    try:
        head["ImageOrientationPatient"] = tuple(float(v) for v in iop) if iop is not None and len(iop) == 6 else None
    except (TypeError, ValueError):
        head["ImageOrientationPatient"] = None
    return head


def _order_series(name: str, heads: list[dict[str, Any]], files: list[str]) -> tuple[np.ndarray, str, list]:
    """Positions of one series' slices and how they were found."""
    ipp = [h.get("ImagePositionPatient") for h in heads]
    iop = [h.get("ImageOrientationPatient") for h in heads]
    if all(p is not None and len(p) == 3 for p in ipp) and all(o is not None for o in iop):
        o = np.asarray(iop, dtype=np.float64)
        normal = np.cross(o[:, :3], o[:, 3:])
        norms = np.linalg.norm(normal, axis=1, keepdims=True)
        if np.all(norms > 1e-6):
            normal = normal / norms
            # One normal for the series (the first slice's) so that every position is measured on one axis.
            pos = np.asarray(ipp, dtype=np.float64) @ normal[0]
            return pos, "position", []
    inst = [h.get("InstanceNumber") for h in heads]
    if all(i is not None for i in inst) and len(set(inst)) == len(inst):
        note = SeriesFinding(name, "fallback", "no usable ImagePositionPatient/Orientation: ordered by InstanceNumber")
        return np.asarray(inst, dtype=np.float64), "instance", [note]
    by_name = sorted(range(len(files)), key=lambda i: (_natural_key(os.path.basename(files[i])), i))
    ranks = np.empty(len(files), dtype=np.int64)
    ranks[by_name] = np.arange(len(files))
    note = SeriesFinding(name, "fallback", "no geometry and no unique InstanceNumber: ordered by file name")
    return ranks.astype(np.float64), "filename", [note]


def series_from_dicom(paths: Sequence[str | os.PathLike[str]]) -> SeriesIndex:
    """Group DICOM slices into series and order each along its slice normal (headers only, no pixel decode).

    Args:
        paths: DICOM files, in any order (the rows of the result follow this order).

    Returns:
        The `SeriesIndex`: series = SeriesInstanceUID, order = mm along the normal (``"position"``), else the
        InstanceNumber (``"instance"``), else the rank of the file name (``"filename"``), per series in
        ``methods``; patient and study from PatientID / StudyInstanceUID; findings for gaps, duplicates, mixed
        spacing and fallbacks.

    Raises:
        DataError: No files.
        ImageReadError: A file that is not DICOM.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise DataError("no DICOM files to order into series", hint="pass the .dcm files of one or more series")
    heads = [_read_geometry(p) for p in files]
    series = np.asarray([str(h.get("SeriesInstanceUID") or "unknown") for h in heads])
    order = np.zeros(len(files), dtype=np.float64)
    methods: dict[str, str] = {}
    findings: list[SeriesFinding] = []
    for name in np.unique(series):
        rows = np.flatnonzero(series == name)
        pos, method, notes = _order_series(str(name), [heads[r] for r in rows], [files[r] for r in rows])
        order[rows] = pos
        methods[str(name)] = method
        findings.extend(notes)
        findings.extend(_check_steps(str(name), pos, method))
    return SeriesIndex(
        series=series,
        order=order,
        method=_weakest(methods.values()),
        methods=methods,
        findings=findings,
        patient=np.asarray([str(h.get("PatientID") or "") for h in heads]),
        study=np.asarray([str(h.get("StudyInstanceUID") or "") for h in heads]),
        paths=np.asarray(files),
    )

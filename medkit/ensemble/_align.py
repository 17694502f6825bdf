"""Reading the members of a blend: prediction files (and their OOF tables) checked against each other and
aligned row by row on the image id.

Members must predict exactly the same images (same ids, no more, no fewer) with the same ``_prob`` columns in the
same order and the same target kind; each table is checked on its own by
`medkit.data.predictions.read_predictions` (finite values in [0, 1], unique ids). Every problem is a `DataError`
naming the file, what differs (counts and the first few ids) and the fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkit.data.predictions import ID_COLUMNS, PredictionsMeta, label_of, oof_arrays, prob_columns, read_predictions
from medkit.errors import DataError, UsageError
from medkit.target import BINARY, MULTICLASS, ORDINAL, TargetKind, target_kind

__all__ = ["Members", "OofSet", "infer_kind", "load_members", "load_oofs", "oof_file"]

_SHOWN = 3  # ids quoted in a mismatch message


@dataclass
class Members:
    """The members' prediction tables, aligned on the first member's rows.

    Attributes:
        paths: The prediction files, in member order.
        ids: The first member's id columns (``image``, and ``patient_id``, ``series``, ``order`` when present).
        columns: The shared ``<label>_prob`` columns, in order.
        probs: ``(M, N, K)`` probabilities: member, row (in ``ids`` order), column.
        kind: The target kind the members agree on.
        meta: The first sidecar found (label columns, number of classes, task), or None.
        metrics: The metric each member's sidecar names (``""`` without one).
    """

    paths: tuple[Path, ...]
    ids: Any
    columns: tuple[str, ...]
    probs: Any
    kind: TargetKind
    meta: PredictionsMeta | None
    metrics: tuple[str, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        """The output names (``columns`` without ``_prob``)."""
        return tuple(label_of(c) for c in self.columns)

    @property
    def num_classes(self) -> int:
        """Classes or grades (0 for 0/1 labels): from the sidecar, else from the columns."""
        if self.meta is not None and self.meta.num_classes:
            return int(self.meta.num_classes)
        if self.kind.cumulative:
            return len(self.columns) + 1
        return len(self.columns) if self.kind.softmax else 0


@dataclass
class OofSet:
    """The members' out-of-fold tables, aligned on the first one's rows, with their targets.

    Attributes:
        paths: The OOF files, in member order.
        frame: The first OOF table (ids, targets, ``fold``) in row order, without its ``_prob`` columns.
        y: Targets, as `medkit.metrics.score` takes them.
        probs: ``(M, N, K)`` out-of-fold probabilities.
        folds: The ``fold`` column of the first table, or None.
        groups: Its ``patient_id`` column, or None.
        metrics: The metric each member's run was selected on (from run.json / cv.json; ``""`` when unknown).
    """

    paths: tuple[Path, ...]
    frame: Any
    y: Any
    probs: Any
    folds: Any
    groups: Any
    metrics: tuple[str, ...]


def infer_kind(columns: Sequence[str]) -> TargetKind:
    """The target kind a table's ``_prob`` columns imply when it has no sidecar: ``>k`` ordinal thresholds,
    ``class<c>`` softmax classes, else one 0/1 column (binary) or several (multilabel)."""
    names = [label_of(c) for c in columns]
    if len(names) > 1 and all(re.fullmatch(r">\d+", n) for n in names):
        return ORDINAL
    if len(names) > 1 and all(re.fullmatch(r"class\d+", n) for n in names):
        return MULTICLASS
    return BINARY.for_columns(len(names))


def _kind_of(meta: PredictionsMeta | None, columns: Sequence[str], declared: str = "") -> TargetKind:
    name = meta.target if meta is not None else declared
    return target_kind(name).for_columns(len(columns)) if name else infer_kind(columns)


def _quote(ids: Sequence[Any]) -> str:
    shown = ", ".join(f"'{i}'" for i in ids[:_SHOWN])
    return shown + (", ..." if len(ids) > _SHOWN else "")


def _check_same_ids(first: Sequence[str], ids: Sequence[str], path: Path, first_path: Path) -> None:
    """Raise unless ``ids`` holds exactly the ids of ``first`` (order may differ)."""
    have, want = set(ids), set(first)
    if have == want:
        return
    missing = [i for i in first if i not in have]
    extra = [i for i in ids if i not in want]
    parts = []
    if missing:
        parts.append(f"{len(missing)} ids of {first_path} are missing ({_quote(missing)})")
    if extra:
        parts.append(f"{len(extra)} ids are not in {first_path} ({_quote(extra)})")
    raise DataError(
        f"{path}: {'; '.join(parts)}",
        hint="blend predictions of the same images: predict every member on the same split or table",
    )


def _check_same_columns(cols: Sequence[str], first: Sequence[str], path: Path, first_path: Path) -> None:
    """Raise unless ``cols`` are the ``_prob`` columns of ``first`` in the same order."""
    if list(cols) == list(first):
        return
    if sorted(cols) == sorted(first):
        raise DataError(
            f"{path}: probability columns {list(cols)} are those of {first_path} in another order ({list(first)})",
            hint="members must list their outputs in the same order: write them from runs with the same label order",
        )
    only_here = [c for c in cols if c not in first]
    only_first = [c for c in first if c not in cols]
    raise DataError(
        f"{path}: probability columns differ from {first_path}: only here {only_here}, only there {only_first}",
        hint="blend models of the same task and labels",
    )


def _read_all(paths: Sequence[Path]) -> list[tuple[Any, PredictionsMeta | None]]:
    tables = [read_predictions(p) for p in paths]
    first_cols = prob_columns(tables[0][0])
    first_ids = tables[0][0]["image"].astype(str).tolist()
    for path, (frame, _) in zip(paths[1:], tables[1:], strict=True):
        _check_same_columns(prob_columns(frame), first_cols, path, paths[0])
        _check_same_ids(first_ids, frame["image"].astype(str).tolist(), path, paths[0])
    return tables


def _stack(tables: list[tuple[Any, PredictionsMeta | None]]) -> tuple[Any, Any]:
    """The first table (with a string ``image``) and ``(M, N, K)`` probabilities in its row order."""
    import numpy as np

    first = tables[0][0].assign(image=tables[0][0]["image"].astype(str)).reset_index(drop=True)
    cols = prob_columns(first)
    order = first["image"]
    stacked = []
    for frame, _ in tables:
        indexed = frame.assign(image=frame["image"].astype(str)).set_index("image")
        stacked.append(indexed.loc[order, cols].to_numpy(dtype=np.float64))
    return first, np.stack(stacked)


def _agreed_kind(kinds: Sequence[TargetKind], paths: Sequence[Path], what: str) -> TargetKind:
    for path, kind in zip(paths[1:], kinds[1:], strict=True):
        if kind is not kinds[0]:
            raise DataError(
                f"{path}: {what} of target kind '{kind}', but {paths[0]} is '{kinds[0]}'",
                hint="blend models of the same kind of target",
            )
    return kinds[0]


def load_members(paths: Sequence[str | os.PathLike[str]]) -> Members:
    """Read, check and align the members' prediction files.

    Raises:
        DataError: An unreadable or invalid table, or members that differ in ids, columns or target kind.
        UsageError: No file given.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("no prediction files to blend", hint="pass two or more preds.csv files from medkit predict")
    tables = _read_all(paths)
    first, probs = _stack(tables)
    cols = tuple(prob_columns(first))
    kind = _agreed_kind([_kind_of(meta, cols) for _, meta in tables], paths, "predictions")
    metas = [meta for _, meta in tables if meta is not None]
    return Members(
        paths=tuple(paths),
        ids=first[[c for c in ID_COLUMNS if c in first.columns]],
        columns=cols,
        probs=probs,
        kind=kind,
        meta=metas[0] if metas else None,
        metrics=tuple(meta.metric if meta is not None else "" for _, meta in tables),
    )


def oof_file(path: str | os.PathLike[str]) -> Path:
    """An ``--oof`` argument as a file: a run folder stands for its ``oof.csv``."""
    path = Path(path)
    return path / "oof.csv" if path.is_dir() else path


def _run_facts(oof: Path) -> dict[str, str]:
    """``target`` and ``metric`` of the run an oof.csv belongs to (its run.json spec, else cv.json), if any."""
    facts: dict[str, str] = {}
    folder = oof.parent
    candidates = [folder / "run.json", *sorted(folder.glob("fold*/run.json"))[:1], folder / "cv.json"]
    for record_path in candidates:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        spec = record.get("spec") if isinstance(record.get("spec"), dict) else record
        for key in ("target", "metric"):
            if isinstance(spec.get(key), str) and spec[key] and key not in facts:
                facts[key] = spec[key]
    return facts


def load_oofs(paths: Sequence[str | os.PathLike[str]], members: Members) -> OofSet:
    """Read, check and align the members' OOF tables (one per member, in member order).

    Raises:
        UsageError: Not one OOF per member.
        DataError: An invalid table, OOF tables that differ from each other in ids or columns, from the members in
            columns or target kind, a table without targets, or tables whose targets disagree.
    """
    if len(paths) != len(members.paths):
        raise UsageError(
            f"{len(members.paths)} prediction files but {len(paths)} --oof tables",
            hint="give one --oof (an oof.csv or a run folder) per member, in the same order as the predictions",
        )
    files = [oof_file(p) for p in paths]
    tables = _read_all(files)
    _check_same_columns(prob_columns(tables[0][0]), members.columns, files[0], members.paths[0])
    facts = [_run_facts(f) for f in files]
    kinds = [
        _kind_of(meta, members.columns, fact.get("target", "")) for (_, meta), fact in zip(tables, facts, strict=True)
    ]
    kind = _agreed_kind([members.kind, *kinds], [members.paths[0], *files], "OOF table")
    first, probs = _stack(tables)
    y = _targets(tables, files, first["image"], kind)
    frame = first.drop(columns=list(members.columns))
    metrics = tuple(
        (meta.metric if meta is not None else "") or fact.get("metric", "")
        for (_, meta), fact in zip(tables, facts, strict=True)
    )
    return OofSet(
        paths=tuple(files),
        frame=frame,
        y=y,
        probs=probs,
        folds=frame["fold"].to_numpy() if "fold" in frame.columns else None,
        groups=frame["patient_id"].astype(str).to_numpy() if "patient_id" in frame.columns else None,
        metrics=metrics,
    )


def _targets(tables: list[tuple[Any, Any]], files: Sequence[Path], order: Any, kind: TargetKind) -> Any:
    """The first table's targets (rows in ``order``), after checking that every table has targets and they agree."""
    import numpy as np

    ys = []
    for path, (frame, _) in zip(files, tables, strict=True):
        aligned = frame.assign(image=frame["image"].astype(str)).set_index("image").loc[order].reset_index()
        try:
            ys.append(oof_arrays(aligned, kind)[0])
        except DataError as exc:
            raise DataError(f"{path}: {exc.message}", hint=exc.hint) from None
    for path, y in zip(files[1:], ys[1:], strict=True):
        differ = np.flatnonzero(np.any(np.asarray(y).reshape(len(y), -1) != np.asarray(ys[0]).reshape(len(y), -1), 1))
        if differ.size:
            raise DataError(
                f"{path}: targets of {differ.size} images disagree with {files[0]} (first: '{order.iloc[differ[0]]}')",
                hint="the OOF tables must come from runs on the same labels",
            )
    return ys[0]

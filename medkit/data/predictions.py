"""Prediction tables: what `medkit predict` and `medkit ensemble` write, and what `medkit ensemble` and
`medkit submit` read. A run's oof.csv follows the same convention, with its targets added.

| column | holds |
|---|---|
| ``image`` | the image id as the dataset table names it (a path or a stem); ``<split>/<i>`` for an archive |
| ``patient_id``, ``series``, ``order`` | carried over from the table when it has them |
| ``<label>`` or ``target`` | oof.csv only: the 0/1 label columns, or the class / grade of integer targets |
| ``fold`` | oof.csv of a ``--fold all`` run |
| ``<name>_prob`` | one per model output, in the run's ``label_names`` order (``>k`` for ordinal outputs) |
| ``grade`` | ordinal and multiclass predictions: the predicted grade / class |

Next to ``preds.csv`` a sidecar ``preds.json`` (`PredictionsMeta`) says what the columns mean: the target kind,
the label names and columns, the metric, the task, the ordinal cut points and where the predictions came from
(runs, TTA, blend weights). A table without its sidecar still reads: the meaning is then inferred from the
columns.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medkit.errors import DataError

__all__ = [
    "PROB_SUFFIX",
    "ID_COLUMNS",
    "PredictionsMeta",
    "sidecar_path",
    "prob_columns",
    "label_of",
    "write_predictions",
    "read_predictions",
    "read_meta",
    "oof_arrays",
]

PROB_SUFFIX = "_prob"
#: Id columns a prediction table carries over from the dataset table, in this order.
ID_COLUMNS = ("image", "patient_id", "series", "order")


@dataclass
class PredictionsMeta:
    """What the columns of a prediction table mean (its JSON sidecar).

    Attributes:
        target: `medkit.target.TargetKind` name of the outputs.
        label_names: Model output names; the table has one ``<name>_prob`` column each, in this order.
        label_cols: Label columns of the training table (the grade column for ordinal runs).
        num_classes: Classes or grades (0 for 0/1 labels).
        metric: METRICS name the run was selected on (the default metric of `medkit ensemble`).
        task: Task preset name.
        cut_points: Ordinal: the cut points that turned the expected grade into ``grade``.
        sources: Where the predictions came from (run folders, or the member files of a blend).
        details: Anything else worth keeping (TTA transforms, blend weights and method, neighbour weights).
        kind: Always ``"medkit-predictions"`` (recognises the sidecar).
    """

    target: str
    label_names: tuple[str, ...]
    label_cols: tuple[str, ...] = ()
    num_classes: int = 0
    metric: str = ""
    task: str = ""
    cut_points: tuple[float, ...] = ()
    sources: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "medkit-predictions"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> PredictionsMeta:
        """Inverse of `to_dict`.

        Raises:
            DataError: A record that is not a prediction sidecar.
        """
        if not isinstance(d, dict) or d.get("kind") != "medkit-predictions" or "target" not in d:
            raise DataError(f"{where}: not a medkit prediction sidecar", hint="write it with medkit predict")
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("label_names", "label_cols", "cut_points", "sources"):
            kw[key] = tuple(kw.get(key) or ())
        kw["details"] = dict(kw.get("details") or {})
        return cls(**kw)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of a prediction table: ``preds.csv`` -> ``preds.json``."""
    return Path(path).with_suffix(".json")


def prob_columns(frame: Any) -> list[str]:
    """The ``<name>_prob`` columns of a table, in table order."""
    return [str(c) for c in frame.columns if str(c).endswith(PROB_SUFFIX)]


def label_of(column: str) -> str:
    """``"any_prob"`` -> ``"any"``."""
    return column[: -len(PROB_SUFFIX)] if column.endswith(PROB_SUFFIX) else column


def write_predictions(path: str | os.PathLike[str], frame: Any, meta: PredictionsMeta) -> Path:
    """Write a prediction table (CSV) and its sidecar, each atomically; the table is checked first.

    Args:
        path: Destination ``.csv``.
        frame: pandas DataFrame in the convention of this module.
        meta: What its columns mean; its ``label_names`` must match the ``_prob`` columns.

    Raises:
        DataError: The table breaks the convention (see `read_predictions`), or its columns disagree with
            ``meta``.
    """
    from medkit._io import write_csv, write_json

    path = Path(path)
    _check(frame, str(path))
    got = [label_of(c) for c in prob_columns(frame)]
    if got != list(meta.label_names):
        raise DataError(
            f"{path}: probability columns {got} do not match the label names {list(meta.label_names)}",
            hint="this is a bug; please report it",
        )
    write_csv(path, frame)
    write_json(sidecar_path(path), meta.to_dict())
    return path


def read_meta(path: str | os.PathLike[str]) -> PredictionsMeta | None:
    """The sidecar of a prediction table, or None when there is none.

    Raises:
        DataError: A sidecar that is not valid JSON or not a prediction sidecar.
    """
    import json

    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{side}: unreadable sidecar ({exc})", hint="write it again with medkit predict") from exc
    return PredictionsMeta.from_dict(record, str(side))


def read_predictions(path: str | os.PathLike[str]) -> tuple[Any, PredictionsMeta | None]:
    """Read and check a prediction table (or an oof.csv) and its sidecar.

    Checks: the file exists and parses, it has an ``image`` column with unique, non-empty ids, at least one
    ``_prob`` column, and every probability is a finite number in [0, 1].

    Returns:
        ``(frame, meta)``; ``meta`` is None when the table has no sidecar.

    Raises:
        DataError: Naming the file, what is wrong (first offending id and column) and the fix.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "oof.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such prediction file", hint="write it with medkit predict (or train a run)")
    try:
        frame = pd.read_csv(path, dtype={"image": str, "patient_id": str, "series": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})", hint="write it again with medkit predict") from exc
    _check(frame, str(path))
    meta = read_meta(path)
    if meta is not None:
        got = [label_of(c) for c in prob_columns(frame)]
        if got != list(meta.label_names):
            raise DataError(
                f"{path}: probability columns {got} disagree with its sidecar ({list(meta.label_names)})",
                hint=f"the table was edited after it was written; write it again or delete {sidecar_path(path).name}",
            )
    return frame, meta


def _check(frame: Any, where: str) -> None:
    """The checks of `read_predictions` on an in-memory table."""
    import numpy as np

    if "image" not in frame.columns:
        raise DataError(f"{where}: no 'image' column", hint="prediction tables name each image in 'image'")
    ids = frame["image"]
    if ids.isna().any() or (ids.astype(str).str.len() == 0).any():
        raise DataError(f"{where}: {int(ids.isna().sum())} rows have no image id", hint="drop or name those rows")
    dup = ids.astype(str).duplicated()
    if dup.any():
        raise DataError(
            f"{where}: image id '{ids[dup].iloc[0]}' appears {int(ids.astype(str).eq(ids[dup].iloc[0]).sum())} times",
            hint="one row per image: average repeated predictions first",
        )
    cols = prob_columns(frame)
    if not cols:
        raise DataError(f"{where}: no probability columns (named '<label>_prob')", hint="write it with medkit predict")
    for col in cols:
        values = frame[col]
        numeric = np.asarray(values, dtype=np.float64) if values.dtype.kind in "fiub" else None
        if numeric is None:
            raise DataError(f"{where}: column '{col}' is not numeric", hint="probabilities must be numbers")
        bad = ~np.isfinite(numeric)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column '{col}' has {int(bad.sum())} missing or infinite values (first: image "
                f"'{ids.iloc[i]}')",
                hint="predict those images again",
            )
        out = (numeric < 0) | (numeric > 1)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise DataError(
                f"{where}: column '{col}' has {int(out.sum())} values outside [0, 1] (image '{ids.iloc[i]}': "
                f"{numeric[i]:.4g})",
                hint="probability columns hold probabilities, not logits",
            )


def oof_arrays(frame: Any, target: str | Any) -> tuple[Any, Any]:
    """``(y_true, probs)`` of an OOF table, as `medkit.metrics.score` takes them for this target kind.

    Args:
        frame: An oof.csv (targets and ``_prob`` columns, as `medkit.engine.run.write_oof` writes them).
        target: The `medkit.target.TargetKind` (or its name) of the run.

    Raises:
        DataError: A target column is missing.
    """
    import numpy as np

    from medkit.target import BINARY, target_kind

    cols = prob_columns(frame)
    probs = frame[cols].to_numpy(dtype=np.float64)
    kind = target_kind(target).for_columns(len(cols))
    if "target" in frame.columns:
        y = frame["target"].to_numpy()
        if kind is BINARY:
            y = y.astype(np.float64)
    else:
        missing = [label_of(c) for c in cols if label_of(c) not in frame.columns]
        if missing:
            raise DataError(
                f"OOF table lacks target column(s) {', '.join(missing)}",
                hint="pass the oof.csv a run wrote (it holds targets next to the probabilities)",
            )
        y = frame[[label_of(c) for c in cols]].to_numpy(dtype=np.float64)
    if kind is BINARY and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if np.isnan(np.asarray(y, dtype=np.float64)).any() or not math.isfinite(float(np.nansum(probs))):
        raise DataError("OOF table has missing targets or probabilities", hint="use the oof.csv a run wrote")
    return y, probs

"""The run directory: run.json, metrics.csv, curve.png, plots/, checkpoints/{last,best}.pt, oof.csv (docs/train.md)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medkit._io import write_json, write_text

__all__ = ["RunDir", "write_metrics", "read_metrics", "draw_curves", "write_oof"]


class RunDir:
    """Paths of one run (or of one fold of a ``--fold all`` run).

    Args:
        root: The run folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def run_json(self) -> Path:
        """Resolved config, versions, argv and data hash."""
        return self.root / "run.json"

    @property
    def metrics_csv(self) -> Path:
        """One row per epoch."""
        return self.root / "metrics.csv"

    @property
    def curve_png(self) -> Path:
        """Training curves."""
        return self.root / "curve.png"

    @property
    def plots(self) -> Path:
        """ROC, PR, reliability and confusion pictures of the validation (and test) predictions."""
        return self.root / "plots"

    @property
    def last(self) -> Path:
        """Latest checkpoint (resumable, also mid-epoch; removed at the end with ``--no-keep-last``)."""
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        """Weights (and the EMA's) at the best validation metric, with the run spec; no optimizer state."""
        return self.root / "checkpoints" / "best.pt"

    @property
    def oof_csv(self) -> Path:
        """Validation predictions of the best checkpoint."""
        return self.root / "oof.csv"

    @property
    def cv_json(self) -> Path:
        """Cross-validation summary of a ``--fold all`` run."""
        return self.root / "cv.json"

    def fold(self, k: int) -> RunDir:
        """The sub-run of fold ``k``."""
        return RunDir(self.root / f"fold{k}")

    def write_run_json(self, record: dict[str, Any]) -> Path:
        """Write run.json atomically."""
        return write_json(self.run_json, record)


def write_metrics(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Write the per-epoch history as CSV (whole file, atomically; columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(path, buf.getvalue())


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read metrics.csv back (numbers as floats, epoch as int); [] when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    with p.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    out[k] = int(v) if k == "epoch" else float(v)
                except (TypeError, ValueError):
                    out[k] = v
            rows.append(out)
    return rows


def draw_curves(
    path: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    best_epoch: int | None = None,
) -> Path | None:
    """Draw the per-epoch curves of ``keys``: one panel per quantity with its own y axis, stage changes marked
    (`medkit.engine.plots.plot_curves`). Returns None when there is nothing to draw."""
    from medkit.engine.plots import plot_curves

    return plot_curves(path, rows, keys, best_epoch=best_epoch)


def write_oof(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    targets: Any,
    probs: Any,
    label_names: Sequence[str],
    extra: dict[str, Sequence[Any]] | None = None,
) -> Path:
    """Write out-of-fold predictions: ``image``, one ``<label>`` target column and one ``<label>_prob`` column each.

    Args:
        path: Destination CSV.
        ids: Image id (the table's image column) of every row.
        targets: ``(N,)`` or ``(N, K)`` targets.
        probs: ``(N, K)`` probabilities (or ``(N,)``).
        label_names: Names of the K probability columns (and of the target columns when targets are 2-D).
        extra: More columns (fold, patient_id, ...).
    """
    import numpy as np
    import pandas as pd

    targets = np.asarray(targets)
    probs = np.asarray(probs)
    if probs.ndim == 1:
        probs = probs[:, None]
    df = pd.DataFrame({"image": list(ids)})
    for name, col in (extra or {}).items():
        df[name] = list(col)
    if targets.ndim == 1:
        df["target"] = targets
    else:
        for j, name in enumerate(label_names[: targets.shape[1]]):
            df[name] = targets[:, j]
    for j, name in enumerate(label_names[: probs.shape[1]]):
        df[f"{name}_prob"] = probs[:, j]
    from medkit._io import write_csv

    return write_csv(path, df)

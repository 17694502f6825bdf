"""``--fold all``: train every fold into ``out/fold<k>``, join the out-of-fold predictions and score them."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from medkit.engine.checkpoint import load_checkpoint
from medkit.engine.fit import TrainConfig, fit
from medkit.engine.run import RunDir
from medkit.metrics import score

__all__ = ["fit_folds", "oof_score"]


def fit_folds(cfg: TrainConfig, folds: list[int]) -> dict[str, Any]:
    """Train every fold into ``out/fold<k>`` and write the joined oof.csv and cv.json at the top.

    Returns:
        The cv.json record: per-fold best metric, the mean, and the metric over the joined OOF.
    """
    from medkit.engine.ddp import dist_info

    root = RunDir(cfg.out)
    results = [_fit_fold(cfg, root, k) for k in folds]
    record: dict[str, Any] = {"metric": cfg.task.metric, "folds": {str(k): m for k, m in results}}
    vals = [m for _, m in results if math.isfinite(m)]
    record["mean"] = float(np.mean(vals)) if vals else float("nan")
    record["std"] = float(np.std(vals)) if vals else float("nan")
    if dist_info().is_main:
        _join_oof(cfg, root, [k for k, _ in results], record)
    return record


def _fit_fold(cfg: TrainConfig, root: RunDir, k: int) -> tuple[int, float]:
    """Train fold ``k`` (or take its result when a resumed ``--fold all`` finds it finished)."""
    from medkit.engine.outputs import fold_best

    if cfg.resume and not root.fold(k).last.exists() and (best := fold_best(root.fold(k))) is not None:
        return k, best  # finished, its last.pt dropped (--no-keep-last)
    sub = replace(cfg, fold=k, out=str(root.fold(k).root), resume=cfg.resume and root.fold(k).last.exists())
    if sub.resume:
        state = load_checkpoint(root.fold(k).last)
        if state.get("finished"):
            return k, float(state.get("best", float("nan")))
    return k, fit(sub).best_metric


def _join_oof(cfg: TrainConfig, root: RunDir, folds: list[int], record: dict[str, Any]) -> None:
    """Write the joined oof.csv and cv.json (with the metric over the joined OOF)."""
    import pandas as pd

    from medkit._io import write_json
    from medkit.data.table import save_table

    frames = [pd.read_csv(root.fold(k).oof_csv).assign(fold=k) for k in folds if root.fold(k).oof_csv.exists()]
    if frames:
        oof = pd.concat(frames, ignore_index=True)
        save_table(oof, root.oof_csv)
        record["oof_rows"] = len(oof)
        record["cv"] = oof_score(cfg.task.metric, cfg.task.target, oof)
        from medkit.engine.outputs import oof_pictures

        record["pictures"] = [p.name for p in oof_pictures(root, oof, cfg.task.target, cfg.task.metric, cfg.data)[2]]
    write_json(root.cv_json, record)


def oof_score(metric: str, target: str, oof: Any) -> float:
    """The metric over an OOF table (targets and ``*_prob`` columns as written by `write_oof`)."""
    from medkit.data.predictions import oof_arrays
    from medkit.target import target_kind

    y, probs = oof_arrays(oof, target)
    return score(metric, target_kind(target).for_columns(probs.shape[1]), y, probs)

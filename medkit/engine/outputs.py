"""What a run writes when its epochs are over: the pictures of its predictions, its results in run.json, what the
loggers receive, and (``--no-keep-last``) the removal of last.pt.

The decision rule that turns probabilities into a class is chosen once, on the validation predictions (oof.csv),
and applied to the validation and the test split alike (`Decision`): for a binary target the threshold with the
best validation accuracy, for grades the QWK cut points when the run's metric is QWK (else the most probable class
or the rounded expected grade), as `medkit ensemble` cuts them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.engine.run import RunDir

__all__ = [
    "Decision",
    "best_threshold",
    "choose_decision",
    "split_scores",
    "label_meanings",
    "write_pictures",
    "finish_run",
    "run_finished",
]


@dataclass(frozen=True)
class Decision:
    """How probabilities become one predicted class per row.

    Attributes:
        threshold: Binary: called positive when the probability is above it.
        cut_points: Graded outputs: cut points of the expected grade (None: most probable class / rounding).
        how: Where the rule came from, for run.json.
    """

    threshold: float | None = None
    cut_points: tuple[float, ...] | None = None
    how: str = ""

    def classes(self, kind: Any, probs: Any) -> np.ndarray | None:
        """Predicted classes ``(N,)``; None for multilabel outputs (no single class)."""
        p = np.asarray(probs, dtype=np.float64)
        if kind.integer:
            from medkit.ensemble import grades

            return np.asarray(grades(kind, p, self.cut_points), dtype=np.int64)
        if p.ndim == 2 and p.shape[1] > 1:
            return None
        return (p.reshape(-1) > (0.5 if self.threshold is None else self.threshold)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (only the fields that apply)."""
        out: dict[str, Any] = {"how": self.how}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.cut_points is not None:
            out["cut_points"] = list(self.cut_points)
        return out


def best_threshold(y: Any, p: Any) -> float:
    """The threshold with the highest accuracy of ``p > t`` on ``(y, p)``; ties go to the one nearest 0.5.

    Candidates are 0.5 and the midpoints between consecutive distinct scores (a threshold between two scores is
    as good as any other there).
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1) > 0.5
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(p) == 0:
        return 0.5
    order = np.argsort(p, kind="mergesort")
    s, t = p[order], y[order]
    # Cut after the i lowest scores: those are called negative, the rest positive.
    neg_below = np.r_[0, np.cumsum(~t)]
    pos_above = np.r_[np.cumsum(t[::-1])[::-1], 0]
    correct = neg_below + pos_above
    cuts = np.flatnonzero(np.diff(s) > 0) + 1  # only between distinct scores
    cand = np.r_[0.5, (s[cuts - 1] + s[cuts]) / 2]
    hits = np.r_[np.sum((p > 0.5) == y), correct[cuts]]
    best = np.flatnonzero(hits == hits.max())
    return float(cand[best[np.argmin(np.abs(cand[best] - 0.5))]])


def choose_decision(kind: Any, y: Any, probs: Any, metric: str, num_classes: int) -> Decision:
    """The decision rule chosen on the validation predictions (see the module docstring)."""
    from medkit.ensemble import fit_cut_points, uses_cut_points

    if kind.integer:
        if uses_cut_points(kind, metric) and len(np.unique(np.asarray(y))) > 1:
            cuts = fit_cut_points(kind, y, probs, num_classes)
            return Decision(cut_points=tuple(float(c) for c in cuts), how="QWK cut points fitted on validation")
        return Decision(how="rounded expected grade" if kind.cumulative else "most probable class")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] > 1:
        return Decision(how="multilabel: each label at 0.5")
    return Decision(threshold=best_threshold(y, p), how="best validation accuracy")


def split_scores(kind: Any, y: Any, probs: Any, decision: Decision) -> dict[str, float]:
    """Scores that need no metric registry: binary ``auc``, ``acc`` (at 0.5) and ``acc_at_threshold``; graded
    ``acc`` of the decided classes; ``n`` rows."""
    y = np.asarray(y)
    out: dict[str, float] = {"n": float(len(y))}
    classes = decision.classes(kind, probs)
    if kind.integer and classes is not None:
        out["acc"] = float(np.mean(classes == y.reshape(-1).astype(np.int64)))
    elif classes is not None:
        from medkit.engine.plots import roc_points, trapezoid_auc

        yt, p = y.reshape(-1) > 0.5, np.asarray(probs, dtype=np.float64).reshape(-1)
        if 0 < yt.sum() < len(yt):
            out["auc"] = trapezoid_auc(*roc_points(yt, p)[:2])
        out["acc"] = float(np.mean((p > 0.5) == yt))
        out["acc_at_threshold"] = float(np.mean(classes.astype(bool) == yt))
        out["threshold"] = float(decision.threshold if decision.threshold is not None else 0.5)
    return out


# ---------------------------------------------------------------------------------------------------- names
def label_meanings(data: str | os.PathLike[str], target: Any, label_names: Sequence[str]) -> dict[str, str]:
    """What each output means, where the data says so (MedMNIST flags: `medkit.io.medmnist.MEDMNIST_LABELS`).

    Returns:
        Output name -> meaning (``{"label0": "1 = normal, benign; 0 = malignant"}`` for a binary archive,
        ``{"class3": "heart"}`` for a multiclass one); ``{}`` when nothing is known.
    """
    if Path(data).suffix.lower() != ".npz":
        return {}
    from medkit.io.medmnist import medmnist_label_names

    names = medmnist_label_names(data)
    if not names:
        return {}
    if target.softmax:
        return {n: names[c] for c, n in enumerate(label_names) if c < len(names)}
    if target.cumulative:
        return {n: f"grade above {n.lstrip('>')}" for n in label_names}
    if len(label_names) == 1 and len(names) == 2:
        return {label_names[0]: f"1 = {names[1]}; 0 = {names[0]}"}
    return {n: names[j] for j, n in enumerate(label_names) if j < len(names)}


def _titles(names: Sequence[str], meanings: dict[str, str]) -> list[str]:
    return [f"{n}: {meanings[n]}" if n in meanings else n for n in names]


def _class_names(kind: Any, names: Sequence[str], meanings: dict[str, str], n_classes: int) -> list[str]:
    if kind.softmax:
        return [meanings.get(n, n) for n in names]
    if kind.cumulative:
        return [str(g) for g in range(n_classes)]
    if len(names) == 1 and names[0] in meanings:  # binary with known meaning: "1 = x; 0 = y"
        parts = dict(p.split(" = ", 1) for p in meanings[names[0]].split("; "))
        return [f"0 {parts.get('0', '')}".strip(), f"1 {parts.get('1', '')}".strip()]
    return ["0", "1"]


# ---------------------------------------------------------------------------------------------------- pictures
def write_pictures(
    folder: str | os.PathLike[str],
    split: str,
    kind: Any,
    y: Any,
    probs: Any,
    names: Sequence[str],
    decision: Decision,
    meanings: dict[str, str] | None = None,
    title: str = "",
) -> list[Path]:
    """ROC, PR, reliability and (one class per row) confusion pictures of one split's predictions.

    Args:
        folder: Where the PNGs go (``<split>_roc.png``, ``<split>_pr.png``, ``<split>_calibration.png``,
            ``<split>_confusion.png``).
        split: ``val`` or ``test``: file prefix and title.
        kind: The `medkit.target.TargetKind` of the outputs.
        y: Targets as the run holds them.
        probs: ``(N, K)`` probabilities.
        names: Output names.
        decision: The rule for the confusion matrix.
        meanings: Output name -> meaning, shown in the titles.
        title: The run, shown first in each title.

    Returns:
        The paths written.
    """
    from medkit.engine import plots

    meanings = meanings or {}
    folder = Path(folder)
    yb, pb, questions = plots.binary_columns(kind, y, probs, names)
    titles = _titles(questions, {q: meanings[n] for q, n in zip(questions, names, strict=False) if n in meanings})
    head = f"{title} - {split} ({len(yb)} rows)" if title else f"{split} ({len(yb)} rows)"
    paths = [
        plots.plot_roc(folder / f"{split}_roc.png", yb, pb, titles, f"ROC, {head}"),
        plots.plot_pr(folder / f"{split}_pr.png", yb, pb, titles, f"precision-recall, {head}"),
        plots.plot_calibration(folder / f"{split}_calibration.png", yb, pb, titles, f"reliability, {head}"),
    ]
    classes = decision.classes(kind, probs)
    if classes is not None:
        n_classes = int(np.asarray(probs).shape[1] + 1) if kind.cumulative else (len(names) if kind.softmax else 2)
        rule = decision.how
        if decision.threshold is not None:
            rule = f"threshold {decision.threshold:.3f} ({decision.how})"
        elif decision.cut_points is not None:
            rule = "cut points " + ", ".join(f"{c:.2f}" for c in decision.cut_points)
        y_int = (np.asarray(y, dtype=np.float64).reshape(-1) > 0.5) if not kind.integer else np.asarray(y).reshape(-1)
        paths.append(
            plots.plot_confusion(
                folder / f"{split}_confusion.png",
                y_int.astype(np.int64),
                classes,
                _class_names(kind, names, meanings, n_classes),
                f"confusion, {head}\n{rule}",
            )
        )
    return paths


def oof_pictures(
    run: RunDir, oof: Any, target: Any, metric: str, data: str | os.PathLike[str]
) -> tuple[Decision, dict[str, float], list[Path]]:
    """The decision rule, the scores and the ``val_*`` pictures of an oof.csv table (a run's, or the joined one of
    ``--fold all``), written to ``run.plots``.

    Args:
        run: The run (or ``--fold all`` root) directory.
        oof: The oof.csv as a DataFrame.
        target: The run's `medkit.target.TargetKind` (or its name).
        metric: The run's metric (QWK fits cut points).
        data: The ``--data`` path (MedMNIST label meanings).
    """
    from medkit.data.predictions import label_of, oof_arrays, prob_columns
    from medkit.target import target_kind

    names = [label_of(c) for c in prob_columns(oof)]
    kind = target_kind(target).for_columns(len(names))
    y, probs = oof_arrays(oof, kind)
    num_classes = len(names) + 1 if kind.cumulative else len(names)
    decision = choose_decision(kind, y, probs, metric, num_classes)
    meanings = label_meanings(data, kind, names)
    paths = _drawn(run.plots, "val", kind, y, probs, names, decision, meanings, run.root.name)
    return decision, split_scores(kind, y, probs, decision), paths


def _drawn(*args: Any) -> list[Path]:
    """`write_pictures`, where a failure to draw costs the pictures (with a warning), never the finished run."""
    try:
        return write_pictures(*args)
    except Exception as exc:  # matplotlib raises many types; the run's results matter more than its pictures
        from medkit.console import warn

        warn(f"pictures of {args[1]} not written to {args[0]} ({type(exc).__name__}: {exc})")
        return []


def fold_best(run: RunDir) -> float | None:
    """The best metric of a finished run from run.json (its last.pt may be gone), None when not finished."""
    if not run_finished(run):
        return None
    record = json.loads(run.run_json.read_text(encoding="utf-8"))
    return float(record["results"].get("best", float("nan")))


# ---------------------------------------------------------------------------------------------------- the end
def run_finished(run: RunDir) -> bool:
    """Whether run.json records a finished run (the mark that stays when last.pt is removed)."""
    try:
        record = json.loads(run.run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool((record.get("results") or {}).get("finished"))


def finish_run(tr: Any, test_scores: dict[str, float]) -> dict[str, Any]:
    """The end of a run on the main process: pictures, results in run.json (and test.json), the loggers' last
    calls, and last.pt removed when ``--no-keep-last`` and the run finished.

    Args:
        tr: The `medkit.engine.fit.Trainer`.
        test_scores: What `fit` scored on the test split ({} without one).

    Returns:
        The ``results`` record written into run.json.
    """
    import pandas as pd

    from medkit._io import write_json

    run, cfg, data, st = tr.run, tr.cfg, tr.data, tr.state
    finished = tr.stopped in ("", "early")
    meanings = label_meanings(cfg.data, data.target, data.label_names)
    kind = data.target.for_columns(len(data.label_names))
    title = run.root.name
    pictures: list[Path] = [run.curve_png] if run.curve_png.is_file() else []
    validation: dict[str, float] = {}
    decision = Decision()
    if run.oof_csv.is_file() and tr.stopped != "max_steps":
        decision, validation, paths = oof_pictures(
            run, pd.read_csv(run.oof_csv), data.target, cfg.task.metric, cfg.data
        )
        pictures += paths
    test = dict(test_scores)
    if test and getattr(tr, "test_outputs", None) is not None:
        y, probs = tr.test_outputs
        for k, v in split_scores(kind, y, probs, decision).items():
            test.setdefault(k, v)  # the metric's own numbers (fit's) first
        write_json(run.root / "test.json", test)
        pictures += _drawn(run.plots, "test", kind, y, probs, data.label_names, decision, meanings, title)
    results = {
        "finished": finished,
        "stopped": tr.stopped or None,
        "metric": cfg.task.metric,
        "best": st.best,
        "best_epoch": st.best_epoch,
        "epochs_done": st.epoch,
        "total_steps": st.global_step,
        "device": _device_name(tr.rt.device),
        "precision": _precision_name(tr.rt.amp_dtype),
        "decision": decision.to_dict(),
        "validation": validation,
        "test": test,
        "label_meaning": meanings,
        "pictures": [p.relative_to(run.root).as_posix() for p in pictures],
    }
    _write_results(run, results)
    if tr.loggers is not None:
        tr.loggers.log_pictures(pictures, st.epoch)
        tr.loggers.log_results(results, st.epoch)
    if finished and not cfg.keep_last and not cfg.dry_run:
        run.last.unlink(missing_ok=True)
    return results


def _device_name(device: Any) -> str:
    """``cpu``, ``cuda:0``, ``mps``: the device with its index where it has one."""
    kind, index = getattr(device, "type", str(device)), getattr(device, "index", None)
    if kind == "cuda" and index is None:
        import torch

        index = torch.cuda.current_device()
    return f"{kind}:{index}" if index is not None else kind


def _precision_name(dtype: Any) -> str:
    """``fp32`` (no autocast), ``bf16`` or ``fp16``."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(str(dtype).removeprefix("torch."), "fp32")


def _write_results(run: RunDir, results: dict[str, Any]) -> None:
    """Add ``results`` to run.json (rewritten whole, atomically)."""
    try:
        record = json.loads(run.run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    record["results"] = results
    run.write_run_json(record)

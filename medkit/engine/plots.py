"""Pictures of a run: ROC and PR curves per output, a reliability plot, a confusion matrix and the training curves.

The numbers behind each picture are plain numpy functions (`roc_points`, `pr_points`, `calibration_bins`,
`confusion_counts`), checked against sklearn in tests/engine/test_plots.py; the drawing functions only draw them.
matplotlib is imported inside the drawing functions, with the Agg backend (no display needed), so importing this
module costs nothing.

Every output of a model becomes one 0/1 question (`binary_columns`): a label (binary, multilabel), "is it class
c" (multiclass, one vs rest) or "is the grade above k" (ordinal, the model's own cumulative outputs), so ROC, PR
and reliability read the same for every target kind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "roc_points",
    "pr_points",
    "average_precision",
    "trapezoid_auc",
    "calibration_bins",
    "confusion_counts",
    "binary_columns",
    "plot_roc",
    "plot_pr",
    "plot_calibration",
    "plot_confusion",
    "plot_curves",
]

#: Inches of one small panel in a grid of per-label panels, and the most panels per row.
_PANEL = 2.6
_COLUMNS = 4


# ---------------------------------------------------------------------------------------------------- numbers
def _ranked(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives above each distinct score, from the highest score down, and those scores."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    # The last row of each run of equal scores: a threshold cannot split tied rows.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last]
    fps = 1 + last - tps
    return tps, fps, s[last]


def roc_points(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of 0/1 labels ``y`` against scores: ``(fpr, tpr, thresholds)``, every distinct score a point.

    The first point is (0, 0) at threshold +inf (nothing called positive), as in sklearn's ``roc_curve`` with
    ``drop_intermediate=False``. A label without negatives (or positives) gives NaN rates on that axis.
    """
    tps, fps, thr = _ranked(y, score)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, np.r_[np.inf, thr]


def trapezoid_auc(x: Any, y: Any) -> float:
    """Area under a curve by the trapezoid rule (the ROC AUC from `roc_points`)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def pr_points(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: ``(precision, recall, thresholds)`` with recall decreasing to the final (1, 0)
    point, as sklearn's ``precision_recall_curve`` returns it."""
    tps, fps, thr = _ranked(y, score)
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y: Any, score: Any) -> float:
    """Average precision: precision summed over the recall steps (no interpolation, as sklearn computes it)."""
    precision, recall, _ = pr_points(y, score)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def calibration_bins(y: Any, prob: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability of probabilities in ``n_bins`` equal-width bins of [0, 1].

    Returns:
        ``(mean predicted probability, fraction of positives, rows)`` of each non-empty bin; a value on a bin
        edge goes to the lower bin, as in sklearn's ``calibration_curve(strategy="uniform")``.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    total = np.bincount(ids, minlength=n_bins)
    keep = total > 0
    mean_p = np.bincount(ids, weights=p, minlength=n_bins)[keep] / total[keep]
    frac = np.bincount(ids, weights=y, minlength=n_bins)[keep] / total[keep]
    return mean_p, frac, total[keep]


def confusion_counts(y_true: Any, y_pred: Any, n: int) -> np.ndarray:
    """``(n, n)`` counts: row = true class, column = predicted class (values outside 0..n-1 are ignored)."""
    t = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(y_pred).astype(np.int64).reshape(-1)
    ok = (t >= 0) & (t < n) & (p >= 0) & (p < n)
    return np.bincount(t[ok] * n + p[ok], minlength=n * n).reshape(n, n)


def binary_columns(kind: Any, y: Any, probs: Any, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every model output as a 0/1 question: ``(labels (N, K), scores (N, K), titles)``.

    Args:
        kind: The `medkit.target.TargetKind`.
        y: Targets as the run holds them: ``(N,)`` / ``(N, K)`` 0/1, or ``(N,)`` integer classes or grades.
        probs: ``(N, K)`` probabilities (softmax for multiclass, cumulative "grade > k" for ordinal).
        names: Output names (``class<c>``, ``>k`` or label names).
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p[:, None] if p.ndim == 1 else p
    k = p.shape[1]
    if kind.softmax:
        t = np.asarray(y).astype(np.int64).reshape(-1)
        return (t[:, None] == np.arange(k)[None, :]).astype(np.float64), p, [f"{n} vs rest" for n in names]
    if kind.cumulative:
        t = np.asarray(y).astype(np.int64).reshape(-1)
        return (t[:, None] > np.arange(k)[None, :]).astype(np.float64), p, [f"grade {n}" for n in names]
    t = np.asarray(y, dtype=np.float64)
    return t.reshape(len(t), -1), p, list(names)


# ---------------------------------------------------------------------------------------------------- drawing
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; a user's interactive backend is left alone when set
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, title: str, panel: float = _PANEL) -> tuple[Any, list[Any]]:
    """A figure of ``n`` square panels, at most `_COLUMNS` per row (one larger panel when ``n`` is 1)."""
    plt = _pyplot()
    cols = min(n, _COLUMNS)
    rows = math.ceil(n / cols)
    side = panel if n > 1 else 4.2
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows + 0.5), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return fig, flat[:n]


def _save(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    import io

    from medkit._io import atomic_write

    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


def _one_class(ax: Any, title: str, t: np.ndarray) -> bool:
    """Mark a panel whose label holds one class only (no curve exists); True when it did."""
    pos = int(t.sum())
    if 0 < pos < len(t):
        return False
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, f"only {'positives' if pos else 'negatives'}\n({len(t)} rows)", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    return True


def plot_roc(path: str | os.PathLike[str], y: Any, scores: Any, titles: Sequence[str], title: str) -> Path:
    """One ROC panel per column of ``y`` / ``scores`` (0/1 labels, scores), its AUC and counts in the legend."""
    y, scores = np.asarray(y), np.asarray(scores)
    fig, axes = _grid(y.shape[1], title)
    for j, ax in enumerate(axes):
        if _one_class(ax, titles[j], y[:, j]):
            continue
        fpr, tpr, _ = roc_points(y[:, j], scores[:, j])
        pos = int(y[:, j].sum())
        label = f"AUC {trapezoid_auc(fpr, tpr):.3f}\n{pos} pos / {len(y) - pos} neg"
        ax.plot(fpr, tpr, lw=1.8, color="C0", label=label, drawstyle="default")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        _square(ax, titles[j], "false positive rate", "true positive rate", legend="lower right")
    return _save(fig, path)


def plot_pr(path: str | os.PathLike[str], y: Any, scores: Any, titles: Sequence[str], title: str) -> Path:
    """One precision-recall panel per column, its average precision in the legend and the prevalence drawn as
    the line a random score would give."""
    y, scores = np.asarray(y), np.asarray(scores)
    fig, axes = _grid(y.shape[1], title)
    for j, ax in enumerate(axes):
        if _one_class(ax, titles[j], y[:, j]):
            continue
        precision, recall, _ = pr_points(y[:, j], scores[:, j])
        prevalence = float(y[:, j].mean())
        # The last point (recall 0, precision 1) is a convention of the curve, not a threshold: not drawn.
        ax.step(
            recall[:-1],
            precision[:-1],
            where="post",
            lw=1.8,
            color="C1",
            label=f"AP {average_precision(y[:, j], scores[:, j]):.3f}",
        )
        ax.axhline(prevalence, ls="--", lw=0.8, color="grey", label=f"prevalence {prevalence:.3f}")
        _square(ax, titles[j], "recall", "precision", legend="best")
    return _save(fig, path)


def plot_calibration(
    path: str | os.PathLike[str], y: Any, scores: Any, titles: Sequence[str], title: str, n_bins: int = 10
) -> Path:
    """One reliability panel per column: observed positive rate against mean predicted probability per bin (marker
    area ~ rows in the bin), with the expected calibration error in the legend."""
    y, scores = np.asarray(y), np.asarray(scores)
    fig, axes = _grid(y.shape[1], title)
    for j, ax in enumerate(axes):
        mean_p, frac, counts = calibration_bins(y[:, j], scores[:, j], n_bins)
        ece = float(np.sum(counts * np.abs(frac - mean_p)) / max(counts.sum(), 1))
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        ax.plot(mean_p, frac, color="C2", lw=1.2, label=f"ECE {ece:.3f}\n{len(y)} rows, {n_bins} bins")
        ax.scatter(mean_p, frac, s=12 + 120 * counts / max(counts.max(), 1), color="C2", zorder=3)
        _square(ax, titles[j], "mean predicted probability", "observed positive rate", legend="upper left")
    return _save(fig, path)


def _square(ax: Any, title: str, xlabel: str, ylabel: str, legend: str) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=7, frameon=True)


def plot_confusion(
    path: str | os.PathLike[str], y_true: Any, y_pred: Any, class_names: Sequence[str], title: str
) -> Path:
    """Confusion matrix: counts in the cells, colour = share of the true class's rows (rows sum to 1)."""
    plt = _pyplot()
    n = len(class_names)
    counts = confusion_counts(y_true, y_pred, n)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(3.0 + 0.55 * n, 12.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    size = 9 if n <= 8 else 7
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    tilt = n > 4 and max(len(str(c)) for c in class_names) > 3  # long names side by side would overlap
    ax.set_xticks(
        range(n),
        [str(c) for c in class_names],
        rotation=45 if tilt else 0,
        ha="right" if tilt else "center",
        fontsize=8,
    )
    ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))
    ax.set_title(f"{title}\naccuracy {accuracy:.3f} on {int(counts.sum())} rows", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


#: Axis names of the metrics.csv columns; any other column is the validation metric.
_AXIS_NAMES = {
    "train_loss": "train loss",
    "val_loss": "validation loss",
    "lr": "learning rate",
    "img_per_s": "images / s",
    "epoch_s": "seconds / epoch",
    "data_wait_s": "data wait (s)",
}


def plot_curves(
    path: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    best_epoch: int | None = None,
    width: float = 6.4,
) -> Path | None:
    """The training curves: one panel per quantity in ``keys`` against the epoch, each with its own y axis.

    Stage changes (the ``stage`` column of ``rows``) are dashed vertical lines; the best epoch is a dotted one.
    Returns None when no key has a finite value.
    """
    series = {}
    for k in keys:
        pts = [
            (int(r["epoch"]), float(r[k]))
            for r in rows
            if isinstance(r.get(k), int | float) and math.isfinite(float(r[k])) and "epoch" in r
        ]
        if pts:
            series[k] = pts
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(width, 0.4 + 1.9 * len(series)), sharex=True, squeeze=False)
    epochs = [int(r["epoch"]) for r in rows if "epoch" in r]
    starts = [int(b["epoch"]) for a, b in zip(rows[:-1], rows[1:], strict=False) if a.get("stage") != b.get("stage")]
    for i, (ax, (k, pts)) in enumerate(zip(axes[:, 0], series.items(), strict=True)):
        x, v = zip(*pts, strict=True)
        ax.plot(x, v, marker="o", ms=3.5, lw=1.5, color=f"C{i}", zorder=3)
        ax.set_ylabel(_AXIS_NAMES.get(k, f"validation {k}"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)
        for s in starts:
            ax.axvline(s - 0.5, ls="--", lw=1.0, color="black", alpha=0.6)
        if best_epoch:
            ax.axvline(best_epoch, ls=":", lw=1.2, color="C3")
        last = v[-1]
        ax.annotate(f"{last:.4g}", (x[-1], last), textcoords="offset points", xytext=(4, 4), fontsize=7)
    bottom = axes[-1, 0]
    bottom.set_xlabel("epoch")
    if epochs:
        bottom.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if max(epochs) - min(epochs) < 15:
            bottom.set_xticks(range(min(epochs), max(epochs) + 1))
    notes = []
    if starts:
        notes.append("dashed: stage change")
    if best_epoch:
        notes.append(f"dotted: best epoch {best_epoch}")
    axes[0, 0].set_title("training curves" + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10)
    return _save(fig, path)

"""Prediction: one function for validation, the test split and `medkit predict`, so their outputs agree exactly.

`predict` runs a model over a feeder's batches without gradients and returns `Predictions` for the rows this
process saw; `gather` joins the ranks of a DDP run, drops the rows the batch order padded, and sorts the rows into
the order of the split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Predictions", "predict", "gather"]


@dataclass
class Predictions:
    """Model outputs for rows of a split.

    Attributes:
        rows: ``(N,)`` int64: source rows (from `predict`), or positions in the split (after `gather`).
        probs: ``(N, K)`` float32 probabilities (softmax for multiclass, else a sigmoid per output).
        targets: ``(N,)`` or ``(N, K)`` targets as the loader gave them (``(N, 0)`` when there are none).
        loss: Mean loss over the rows, or NaN when no loss was computed.
        ids: Image ids of the rows (filled by `gather` from the split), or None.
        embeddings: ``(N, D)`` pooled features before the head, when asked for, else None.
    """

    rows: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    loss: float = float("nan")
    ids: list[str] | None = None
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> Predictions:
        """The rows at ``idx``."""
        emb = self.embeddings[idx] if self.embeddings is not None else None
        ids = [self.ids[i] for i in idx] if self.ids is not None else None
        return replace(
            self, rows=self.rows[idx], probs=self.probs[idx], targets=self.targets[idx], ids=ids, embeddings=emb
        )


def _empty() -> Predictions:
    return Predictions(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0,)))


def predict(
    model: Any,
    batches: Any,
    runtime: Any,
    target: Any,
    normalize: Any,
    loss_fn: Any = None,
    prepare_target: Any = None,
    embeddings: bool = False,
    dry_run: bool = False,
) -> Predictions:
    """Predict every batch without gradients (the model is put in eval mode).

    Args:
        model: The model, on the runtime's device.
        batches: Yields `medkit.engine.feed.Batch` objects on the device (a `Feeder`).
        runtime: The `medkit.engine.runtime.Runtime` (autocast, channels-last).
        target: The `medkit.target.TargetKind` of the outputs (softmax or sigmoid).
        normalize: uint8 batch -> model input (e.g. `InputTransforms.eval`).
        loss_fn: When given, the mean loss is computed too (a loss that needs more than logits and targets
            gives none).
        prepare_target: Loader target -> loss target.
        embeddings: Also return the pooled features before the head (`medkit.models.MedkitClassifier.features`).
        dry_run: Stop after one batch.
    """
    import torch

    model.eval()
    parts: dict[str, list[np.ndarray]] = {"probs": [], "targets": [], "rows": [], "emb": []}
    loss_sum, seen = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            images = normalize(batch.image)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits, emb = _forward(model, images, embeddings)
            logits = logits.float()
            if loss_fn is not None:
                batch_loss = _loss(loss_fn, logits, batch.target, prepare_target)
                if batch_loss is None:
                    loss_fn = None
                else:
                    loss_sum += batch_loss * len(batch)
                    seen += len(batch)
            parts["probs"].append(target.probabilities(logits).cpu().numpy())
            parts["targets"].append(batch.target.cpu().numpy())
            parts["rows"].append(batch.index.cpu().numpy())
            if emb is not None:
                parts["emb"].append(emb.float().cpu().numpy())
            if dry_run:
                break
    if not parts["probs"]:
        return _empty()
    return Predictions(
        rows=np.concatenate(parts["rows"]).astype(np.int64),
        probs=np.concatenate(parts["probs"]).astype(np.float32),
        targets=np.concatenate(parts["targets"]),
        loss=loss_sum / seen if seen else float("nan"),
        embeddings=np.concatenate(parts["emb"]) if parts["emb"] else None,
    )


def _forward(model: Any, images: Any, embeddings: bool) -> tuple[Any, Any]:
    if not embeddings:
        return model(images), None
    from medkit.engine.checkpoint import unwrap

    net = unwrap(model)
    if not (hasattr(net, "features") and hasattr(net, "head")):
        from medkit.errors import UsageError

        raise UsageError(
            f"model {type(net).__name__} cannot give embeddings (it is not a medkit classifier with features())",
            hint="predict without embeddings",
        )
    features = net.features(images)
    return net.head(net.dropout(features)), features


def _loss(loss_fn: Any, logits: Any, target: Any, prepare_target: Any) -> float | None:
    t = prepare_target(target) if prepare_target is not None else target
    try:
        return float(loss_fn(logits, t).item())
    except TypeError:  # a loss that needs indices or the model: no validation loss
        return None


def gather(preds: Predictions, info: Any, split: Any) -> Predictions:
    """Join every rank's predictions, drop the padded duplicates (first occurrence of each row kept), turn the
    source rows into positions in ``split`` (sorted) and attach the split's ids."""
    arrays = {"probs": preds.probs, "rows": preds.rows, "targets": preds.targets}
    if preds.embeddings is not None:
        arrays["emb"] = preds.embeddings
    if info.enabled:
        from medkit.engine.ddp import gather_arrays

        arrays = gather_arrays(arrays, info)
    _, first = np.unique(arrays["rows"], return_index=True)
    pos = split.positions(arrays["rows"][first])
    return Predictions(
        rows=pos,
        probs=arrays["probs"][first],
        targets=arrays["targets"][first],
        loss=preds.loss,
        ids=[split.ids[i] for i in pos],
        embeddings=arrays["emb"][first] if "emb" in arrays else None,
    )

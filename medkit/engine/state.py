"""The state of a training run: counters and history (`TrainState`) and the stateful parts (`TrainParts`).

Both go to and come from a checkpoint, a plain dict written by `medkit.engine.checkpoint.save_checkpoint`::

    {"model", "optimizer", "scheduler", "scaler", "ema", "loss",      # TrainParts.state_dicts()
     "stage", "epoch", "step", "global_step", "epoch_state",          # TrainState.to_checkpoint()
     "history", "best", "best_epoch", "bad_epochs",
     "rng", "spec", "config", "label_names", "target", "medkit_version", "finished"}

``epoch`` counts finished epochs, ``step`` the batches done in the epoch in progress, so a checkpoint written in
the middle of an epoch resumes at the next batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medkit.engine.checkpoint import unwrap
from medkit.engine.loop import EpochState

__all__ = ["TrainState", "TrainParts", "improved"]


def improved(value: float, best: float, greater: bool) -> bool:
    """Whether ``value`` beats ``best`` in the metric's direction (NaN never improves; anything beats NaN)."""
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if greater else value < best


@dataclass
class TrainState:
    """Counters and history of a run.

    Attributes:
        stage: The stage in progress (1-based).
        epoch: Finished epochs.
        global_step: Optimizer steps done in the whole run.
        progress: Running sums of the epoch in progress (``progress.step`` batches done).
        history: One row per finished epoch (metrics.csv).
        best: Best validation metric so far (NaN before the first evaluation).
        best_epoch: Epoch (1-based) of the best metric; 0 before the first evaluation.
        bad_epochs: Epochs since the last improvement (early stopping).
    """

    stage: int = 1
    epoch: int = 0
    global_step: int = 0
    progress: EpochState = field(default_factory=EpochState)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = float("nan")
    best_epoch: int = 0
    bad_epochs: int = 0

    def end_epoch(self, value: float, greater: bool) -> bool:
        """Count a finished epoch whose metric is ``value``; return whether it is the best so far."""
        is_best = improved(value, self.best, greater) or (self.best_epoch == 0 and not math.isfinite(self.best))
        self.epoch += 1
        if is_best:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.progress = EpochState()
        return is_best

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint entries of the state."""
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.progress.step,
            "global_step": self.global_step,
            "epoch_state": self.progress.to_dict(),
            "history": self.history,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        """The state saved by `to_checkpoint`."""
        return cls(
            stage=int(ckpt.get("stage", 1)),
            epoch=int(ckpt["epoch"]),
            global_step=int(ckpt["global_step"]),
            progress=EpochState(**ckpt.get("epoch_state", {})),
            history=list(ckpt.get("history", [])),
            best=float(ckpt.get("best", float("nan"))),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            bad_epochs=int(ckpt.get("bad_epochs", 0)),
        )


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if obj is not None and hasattr(obj, "state_dict") else None


@dataclass
class TrainParts:
    """The stateful parts of a run.

    Attributes:
        model: The plain model (not wrapped by DDP or torch.compile).
        optimizer: The optimizer of the stage in progress.
        schedule: Its `medkit.optim.Schedule`, or None.
        scaler: The fp16 GradScaler, or None.
        ema: The EMA of the weights, or None.
        loss: The loss module (ELR keeps per-sample state).
    """

    model: Any
    optimizer: Any
    schedule: Any = None
    scaler: Any = None
    ema: Any = None
    loss: Any = None

    @property
    def eval_model(self) -> Any:
        """The weights that are evaluated and kept as best: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dicts(self) -> dict[str, Any]:
        """The checkpoint entries of the parts."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _state_of(self.schedule),
            "scaler": _state_of(self.scaler),
            "ema": _state_of(self.ema),
            "loss": _state_of(self.loss),
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore every part from a checkpoint (the parts a checkpoint lacks keep their fresh state)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for part, key in (
            (self.schedule, "scheduler"),
            (self.scaler, "scaler"),
            (self.ema, "ema"),
            (self.loss, "loss"),
        ):
            if part is not None and ckpt.get(key) is not None and hasattr(part, "load_state_dict"):
                part.load_state_dict(ckpt[key])

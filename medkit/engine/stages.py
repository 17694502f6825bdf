"""Stages: a run is a sequence of steps, each with its own epochs, optimizer, learning rate and schedule.

A single-stage run is the common case. ``--stage2-optimizer`` makes a second stage that continues the same weights
with a fresh optimizer and a restarted schedule (e.g. Adam, then SGD for the last epochs). Staged recipes
(refinement at a tiny learning rate, a sequence head on a trained backbone, siamese pretraining) are further
stages of the same kind. Stage numbers are 1-based in checkpoints, metrics.csv and run.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medkit.errors import UsageError

__all__ = ["Stage", "plan_stages", "stage_of_epoch"]


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    Attributes:
        name: A short label (``main``, ``stage2``, ...).
        epochs: Epochs of this stage.
        optimizer: OPTIMIZERS name.
        lr: Learning rate.
        weight_decay: Weight decay.
        scheduler: SCHEDULERS name (restarted at the start of the stage).
        optimizer_kwargs: Extra optimizer keyword arguments.
        scheduler_kwargs: Extra scheduler keyword arguments.
    """

    name: str
    epochs: int
    optimizer: str
    lr: float
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def plan_stages(
    task: Any,
    epochs: int,
    stage2_optimizer: str | None = None,
    stage2_epochs: int = 0,
    stage2_lr: float | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
) -> list[Stage]:
    """The stages of a ``medkit train`` run: the task's optimizer, then optionally a second optimizer.

    Args:
        task: The task preset (optimizer, lr, weight decay, scheduler).
        epochs: Epochs of the whole run.
        stage2_optimizer: Optimizer of the last ``stage2_epochs`` epochs (None: one stage).
        stage2_epochs: Epochs of the second stage (capped at ``epochs``).
        stage2_lr: Learning rate of the second stage (None: the task's).
        optimizer_kwargs: ``--optimizer-arg`` values, for every stage.
        scheduler_kwargs: ``--scheduler-arg`` values, for every stage.

    Raises:
        UsageError: A second optimizer without epochs.
    """
    if stage2_optimizer and stage2_epochs < 1:
        raise UsageError("--stage2-optimizer needs --stage2-epochs N", hint="e.g. --stage2-epochs 2")
    opt_kw, sched_kw = dict(optimizer_kwargs or {}), dict(scheduler_kwargs or {})
    second = min(stage2_epochs, epochs) if stage2_optimizer else 0
    common = {"weight_decay": task.weight_decay, "scheduler": task.scheduler}
    # The main stage stays (with 0 epochs) when the second takes every epoch, so stage numbers keep their meaning.
    stages = [
        Stage(
            "main",
            epochs - second,
            task.optimizer,
            task.lr,
            **common,
            optimizer_kwargs=opt_kw,
            scheduler_kwargs=sched_kw,
        )
    ]
    if second:
        stages.append(
            Stage(
                "stage2",
                second,
                str(stage2_optimizer),
                stage2_lr or task.lr,
                **common,
                optimizer_kwargs=opt_kw,
                scheduler_kwargs=sched_kw,
            )
        )
    return stages


def stage_of_epoch(stages: Sequence[Stage], epoch: int) -> tuple[int, int]:
    """``(stage index, first epoch of that stage)`` for a 0-based epoch of the run (the last stage past the end)."""
    start = 0
    for i, st in enumerate(stages):
        if epoch < start + st.epochs:
            return i, start
        start += st.epochs
    return len(stages) - 1, start - stages[-1].epochs

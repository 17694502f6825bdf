"""`Schedule`: one learning-rate schedule interface for the training loop, and the SCHEDULERS factories.

The loop calls ``step_batch()`` after every optimizer step and ``step_epoch(metric)`` after every epoch; the
schedule acts on the one that matches its interval (``"batch"``, ``"epoch"``, ``"metric"`` or ``"none"``), so the
loop never needs to know which kind it holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from medkit.console import warn
from medkit.errors import UsageError

__all__ = ["Schedule", "constant", "step", "cosine", "onecycle", "plateau"]

_INTERVALS = ("none", "batch", "epoch", "metric")


class Schedule:
    """A learning-rate schedule stepped by the training loop.

    Args:
        optimizer: The optimizer whose param-group learning rates it sets.
        scheduler: The torch scheduler doing the work (None for a constant rate).
        interval: ``"batch"`` (stepped by `step_batch`), ``"epoch"`` or ``"metric"`` (by `step_epoch`), ``"none"``.
        name: Registry name, recorded in `state_dict`.
        total_batches: Batches in the whole run; batch schedules stop there (OneCycleLR raises past its end).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        interval: str = "none",
        name: str = "",
        total_batches: int | None = None,
    ) -> None:
        if interval not in _INTERVALS:
            raise UsageError(f"unknown schedule interval '{interval}'", hint=f"use one of {', '.join(_INTERVALS)}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.interval = interval
        self.name = name
        self.total_batches = total_batches
        self.batches = 0
        self.epochs = 0
        self._warned_no_metric = False

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        self.batches += 1
        if self.interval != "batch" or self.scheduler is None:
            return
        # the rate for batch i is set after batch i-1; the run's last batch is total-1, so stop there: past the
        # plan (an extra batch), OneCycleLR would extrapolate or raise, and the final rate is kept instead
        if self.total_batches is not None and self.batches >= self.total_batches:
            return
        self.scheduler.step()

    def step_epoch(self, metric: float | None = None) -> None:
        """Call after every epoch, with the validation metric for ``"metric"`` schedules (plateau)."""
        self.epochs += 1
        if self.scheduler is None:
            return
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "metric":
            if metric is None or (isinstance(metric, float) and math.isnan(metric)):
                if not self._warned_no_metric:
                    warn(f"schedule '{self.name}' needs a validation metric each epoch; learning rate left unchanged")
                    self._warned_no_metric = True
                return
            self.scheduler.step(float(metric))

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints: name, interval, counters and the torch scheduler's state."""
        return {
            "name": self.name,
            "interval": self.interval,
            "batches": self.batches,
            "epochs": self.epochs,
            "total_batches": self.total_batches,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict` (load the optimizer's own state dict too: it holds the current rates).

        Raises:
            UsageError: When the state comes from a different kind of schedule.
        """
        if state.get("name", self.name) != self.name or state.get("interval", self.interval) != self.interval:
            raise UsageError(
                f"schedule state of '{state.get('name')}' ({state.get('interval')}) cannot be loaded into "
                f"'{self.name}' ({self.interval})",
                hint="resume with the same --scheduler as the checkpoint",
            )
        self.batches = int(state.get("batches", 0))
        self.epochs = int(state.get("epochs", 0))
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, interval={self.interval!r}, lr={self.get_last_lr()})"


def _check_run(name: str, epochs: Any, steps_per_epoch: Any) -> int:
    for label, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"scheduler '{name}': {label} must be a positive integer, got {value!r}")
    return epochs * steps_per_epoch


def _reject_unknown(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise UsageError(f"scheduler '{name}' does not take {', '.join(sorted(kw))}", hint="see docs/models-optim.md")


def constant(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, **kw: Any) -> Schedule:
    """Constant learning rate."""
    total = _check_run("none", epochs, steps_per_epoch)
    _reject_unknown("none", kw)
    return Schedule(optimizer, None, interval="none", name="none", total_batches=total)


def step(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[float] | None = None,
    step_size: int | None = None,
    gamma: float = 0.1,
    **kw: Any,
) -> Schedule:
    """Multiply the rate by ``gamma`` at ``milestones`` or every ``step_size`` epochs, stepped per epoch.

    Args:
        optimizer: The optimizer.
        epochs: Epochs in the run.
        steps_per_epoch: Batches per epoch.
        milestones: Epochs at which to decay; when every value is below 1 they are fractions of ``epochs``
            (``[0.5, 0.75]``: the MedMNIST protocol). Default ``[0.5, 0.75]`` unless ``step_size`` is given.
        step_size: Decay every this many epochs instead of at milestones.
        gamma: Multiplicative factor.
    """
    total = _check_run("step", epochs, steps_per_epoch)
    _reject_unknown("step", kw)
    if milestones is not None and step_size is not None:
        raise UsageError("scheduler 'step': give milestones or step_size, not both")
    if step_size is not None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise UsageError(f"scheduler 'step': step_size must be a positive integer, got {step_size!r}")
        sched: Any = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    else:
        values = list(milestones) if milestones is not None else [0.5, 0.75]
        if any(v < 0 for v in values):
            raise UsageError(f"scheduler 'step': milestones must be >= 0, got {values}")
        if any(v < 1 for v in values) and not all(v < 1 for v in values):
            raise UsageError(
                f"scheduler 'step': milestones {values} mix fractions of the run and epoch numbers",
                hint="give all as fractions (0.5, 0.75) or all as epochs (50, 75)",
            )
        if values and all(v < 1 for v in values):
            epochs_at = sorted({max(1, round(v * epochs)) for v in values})
        else:
            epochs_at = sorted({int(v) for v in values})
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=epochs_at, gamma=gamma)
    return Schedule(optimizer, sched, interval="epoch", name="step", total_batches=total)


def cosine(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    min_lr: float = 0.0,
    **kw: Any,
) -> Schedule:
    """Linear warmup then cosine decay to ``min_lr``, stepped per batch.

    With W warmup batches and T batches in the run, the rate of batch t (0-based) for a group with base rate
    ``lr`` is ``lr * (t + 1) / W`` for t < W, then ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2``.

    Args:
        optimizer: The optimizer.
        epochs: Epochs in the run.
        steps_per_epoch: Batches per epoch.
        warmup_epochs: Warmup length in epochs (may be fractional).
        warmup_steps: Warmup length in batches (overrides ``warmup_epochs``).
        min_lr: Final learning rate.
    """
    total = _check_run("cosine", epochs, steps_per_epoch)
    _reject_unknown("cosine", kw)
    warm = int(warmup_steps) if warmup_steps is not None else int(round(float(warmup_epochs) * steps_per_epoch))
    if warm < 0 or warm >= total:
        raise UsageError(
            f"scheduler 'cosine': warmup of {warm} batches does not fit a run of {total} batches",
            hint="lower --warmup-epochs / warmup_steps",
        )
    if min_lr < 0:
        raise UsageError(f"scheduler 'cosine': min_lr must be >= 0, got {min_lr}")

    def factor(base: float) -> Any:
        def f(t: int) -> float:
            if base <= 0:
                return 0.0
            if t < warm:
                return (t + 1) / warm
            progress = min(1.0, (t - warm) / max(1, total - warm))
            return (min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))) / base

        return f

    bases = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])
    return Schedule(optimizer, sched, interval="batch", name="cosine", total_batches=total)


def onecycle(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float | Sequence[float] | None = None,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    cycle_momentum: bool | None = None,
    **kw: Any,
) -> Schedule:
    """One-cycle policy (torch OneCycleLR), stepped per batch.

    Starts at ``max_lr / div_factor``, rises to ``max_lr`` over ``pct_start`` of the run, then anneals to
    ``max_lr / (div_factor * final_div_factor)``. ``max_lr`` defaults to each group's learning rate. Momentum
    (or Adam's beta1) cycles inversely when the optimizer has one.
    """
    total = _check_run("onecycle", epochs, steps_per_epoch)
    _reject_unknown("onecycle", kw)
    if max_lr is None:
        max_lr = [float(g["lr"]) for g in optimizer.param_groups]
    if cycle_momentum is None:
        defaults = optimizer.defaults
        cycle_momentum = "betas" in defaults or float(defaults.get("momentum", 0.0) or 0.0) > 0
    try:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            anneal_strategy=anneal_strategy,
            cycle_momentum=cycle_momentum,
        )
    except ValueError as exc:
        raise UsageError(f"scheduler 'onecycle': {exc}") from exc
    return Schedule(optimizer, sched, interval="batch", name="onecycle", total_batches=total)


def plateau(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 2,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
    cooldown: int = 0,
    **kw: Any,
) -> Schedule:
    """Multiply the rate by ``factor`` when the validation metric has not improved for ``patience`` epochs.

    Args:
        optimizer: The optimizer.
        epochs: Epochs in the run.
        steps_per_epoch: Batches per epoch.
        mode: ``"max"`` for metrics where greater is better (AUC), ``"min"`` for losses.
        factor: Multiplicative factor.
        patience: Epochs without improvement tolerated.
        threshold: Relative improvement that counts.
        min_lr: Lower bound.
        cooldown: Epochs to wait after a reduction.
    """
    total = _check_run("plateau", epochs, steps_per_epoch)
    _reject_unknown("plateau", kw)
    if mode not in ("max", "min"):
        raise UsageError(f"scheduler 'plateau': mode must be 'max' or 'min', got {mode!r}")
    try:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            min_lr=min_lr,
            cooldown=cooldown,
        )
    except ValueError as exc:
        raise UsageError(f"scheduler 'plateau': {exc}") from exc
    return Schedule(optimizer, sched, interval="metric", name="plateau", total_batches=total)

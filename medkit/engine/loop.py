"""The training loop: `train_one_epoch()` over a feeder's batches, one optimizer step per batch.

Prediction (validation, test, ``medkit predict``) is `medkit.engine.predict.predict`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from medkit.errors import MedkitError

__all__ = ["EpochState", "StepContext", "train_one_epoch", "train_step"]


@dataclass
class EpochState:
    """Running sums of the epoch in progress; saved in mid-epoch checkpoints so a resumed epoch reports the same.

    The loss of a step stays on the device until `settle` reads it (`add` does not wait for the device): reading
    it after every step would make the host wait for the GPU once per step. The loop settles every
    ``Runtime.loss_every`` steps and at the end of the epoch, and every checkpoint settles first, so a loss that
    is not finite stops the run (`settle` raises) before any checkpoint could hold the weights it produced.

    Attributes:
        step: Batches done in this epoch.
        loss_sum: Sum of per-batch mean losses weighted by batch size (settled steps).
        seen: Images seen.
        seconds: Wall time spent in training steps.
        data_seconds: Wall time spent waiting for batches.
        pending: (loss tensor, images, step) of the steps whose loss has not been read yet (not checkpointed).
    """

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    pending: list[tuple[Any, int, int]] = field(default_factory=list, repr=False, compare=False)

    @property
    def loss(self) -> float:
        """Mean training loss of the settled steps."""
        settled = self.seen - sum(n for _, n, _ in self.pending)
        return self.loss_sum / settled if settled else float("nan")

    def add(self, loss: Any, n: int) -> None:
        """Count a finished step on ``n`` images whose mean loss is the tensor ``loss`` (not read yet)."""
        self.step += 1
        self.seen += n
        self.pending.append((loss.detach(), n, self.step))

    def settle(self) -> None:
        """Read the pending losses from the device (one wait for all of them) into ``loss_sum``.

        Raises:
            MedkitError: When one of them is not finite (NaN or infinite).
        """
        if not self.pending:
            return
        import torch

        values = torch.stack([loss.reshape(()) for loss, _, _ in self.pending]).cpu().tolist()
        pending, self.pending = self.pending, []
        for value, (_, n, step) in zip(values, pending, strict=True):
            if not math.isfinite(value):
                raise MedkitError(
                    f"the training loss became {value} at step {step} of the epoch (check the data and the "
                    "learning rate)",
                    hint="lower --lr, try --no-amp, or check the labels for NaN",
                )
            self.loss_sum += value * n

    def to_dict(self) -> dict[str, Any]:
        """The settled sums, for a checkpoint (`EpochState(**d)` restores them)."""
        self.settle()
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pending"}


@dataclass
class StepContext:
    """Everything one training step needs besides the model and the batch.

    Attributes:
        loss_fn: The loss module, called ``loss_fn(logits, target, **extra)``.
        optimizer: The optimizer.
        runtime: The `medkit.engine.runtime.Runtime` (autocast, channels-last).
        transforms: Object with ``train(uint8 images, target) -> (float images, target)`` (augmentation and
            mixing on the device), e.g. `medkit.engine.components.InputTransforms`.
        prepare_target: Turns the loader's target into the loss's target (ordinal encoding, dtype); None keeps it.
        caps: The loss's `medkit.engine.components.LossCaps` (which extra keyword arguments it takes); None: none.
        schedule: Object with ``step_batch()`` (per-step LR schedule), or None.
        scaler: ``torch.amp.GradScaler`` for fp16, else None.
        ema: EMA model with ``update(model)``, or None.
        grad_clip: Clip the gradient norm to this value (0: off).
    """

    loss_fn: Any
    optimizer: Any
    runtime: Any
    transforms: Any
    prepare_target: Callable[[Any], Any] | None = None
    caps: Any = None
    schedule: Any = None
    scaler: Any = None
    ema: Any = None
    grad_clip: float = 0.0


def train_one_epoch(
    model: Any,
    batches: Iterable[Any],
    ctx: StepContext,
    state: EpochState | None = None,
    on_step: Callable[[EpochState], bool] | None = None,
    dry_run: bool = False,
    bar: Any = None,
    profiler: Any = None,
) -> EpochState:
    """Train over ``batches`` once (from where ``state`` left off: the feeder must already skip done batches).

    Args:
        model: The model, on the runtime's device.
        batches: Yields `medkit.engine.feed.Batch` objects on the device (a `Feeder`).
        ctx: Loss, optimizer, precision and transforms (see `StepContext`).
        state: Running sums to continue (a resumed epoch); a fresh one by default.
        on_step: Called after every optimizer step with the updated state; returning True stops the epoch
            (``--max-steps``). It is where periodic checkpoints are written.
        dry_run: Stop after one batch.
        bar: A `medkit.console.Progress` to advance (img/s and loss shown), or None.
        profiler: A `medkit.engine.profile.Profiler` timing data wait vs step (``--profile``), or None.

    Returns:
        The epoch state (``loss`` = mean training loss).
    """
    state = state or EpochState()
    every = max(1, ctx.runtime.loss_every)
    model.train()
    t_wait = time.perf_counter()
    it = profiler.iter(batches) if profiler is not None else batches
    for batch in it:
        t0 = time.perf_counter()
        state.data_seconds += t0 - t_wait
        n = len(batch)
        timer = profiler.step(n) if profiler is not None else contextlib.nullcontext()
        with timer:
            state.add(train_step(model, batch, ctx), n)
            if len(state.pending) >= every:
                state.settle()  # waits for the device: every few steps only (Runtime.loss_every)
        t_wait = time.perf_counter()
        state.seconds += t_wait - t0
        if bar is not None:
            bar.update(n, train_loss=state.loss)
        if on_step is not None and on_step(state):
            break
        if dry_run:
            break
    state.settle()
    return state


def train_step(model: Any, batch: Any, ctx: StepContext) -> Any:
    """One optimizer step on one batch (already on the device); returns the loss tensor (not read on the host)."""
    target = ctx.prepare_target(batch.target) if ctx.prepare_target is not None else batch.target
    images, target = ctx.transforms.train(batch.image, target)
    if ctx.runtime.channels_last:
        import torch

        images = images.contiguous(memory_format=torch.channels_last)
    extra = ctx.caps.extra(batch.index, model) if ctx.caps is not None else {}
    with ctx.runtime.autocast():
        logits = model(images)
    # The loss runs in fp32: log-sigmoid and weighted sums lose precision under bf16.
    loss = ctx.loss_fn(logits.float(), target, **extra)
    # No check here that the loss is finite: that would wait for the device on every step. EpochState.settle
    # checks it every few steps, and before any checkpoint is written.
    _backward_and_step(model, loss, ctx)
    if ctx.schedule is not None and hasattr(ctx.schedule, "step_batch"):
        ctx.schedule.step_batch()
    if ctx.ema is not None:
        ctx.ema.update(model)
    return loss


def _backward_and_step(model: Any, loss: Any, ctx: StepContext) -> None:
    import torch

    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        if ctx.grad_clip > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        return
    loss.backward()
    if ctx.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
    ctx.optimizer.step()

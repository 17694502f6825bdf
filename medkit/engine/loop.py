"""The training loop: `train_one_epoch()` and `evaluate()`, plain functions with explicit device and AMP dtype."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EpochState",
    "StepContext",
    "train_one_epoch",
    "evaluate",
    "to_float_image",
    "targets_to_ordinal",
    "logits_to_probs",
]


@dataclass
class EpochState:
    """Running sums of the epoch in progress; saved in mid-epoch checkpoints so a resumed epoch reports the same.

    Attributes:
        step: Batches done in this epoch.
        loss_sum: Sum of per-batch mean losses weighted by batch size.
        seen: Images seen.
        seconds: Wall time spent in training steps.
        data_seconds: Wall time spent waiting for batches.
    """

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Mean training loss so far."""
        return self.loss_sum / self.seen if self.seen else float("nan")


@dataclass
class StepContext:
    """Everything one training step needs besides the model and the batch.

    Attributes:
        loss_fn: The loss module, called ``loss_fn(logits, target, **extra)``.
        optimizer: The optimizer.
        device: Training device.
        amp_dtype: Autocast dtype or None.
        scaler: ``torch.amp.GradScaler`` for fp16, else None.
        schedule: Object with ``step_batch()`` (per-step LR schedule), or None.
        augment: Callable ``(float_or_uint8 images (B,C,H,W), targets) -> (images, targets)`` run on the device,
            or None (then `normalize` alone is used).
        normalize: Callable turning a uint8 batch into the model's float input (used when augment is None).
        prepare_target: Turns the loader's target into the loss's target (ordinal encoding, dtype).
        loss_extra: Which batch entries the loss wants: ``{"index", "model"}``.
        ema: EMA model with ``update(model)``, or None.
        channels_last: Use the channels-last memory format (CUDA).
        grad_clip: Clip the gradient norm to this value (0: off).
    """

    loss_fn: Any
    optimizer: Any
    device: Any
    amp_dtype: Any = None
    scaler: Any = None
    schedule: Any = None
    augment: Callable[..., Any] | None = None
    normalize: Callable[[Any], Any] | None = None
    prepare_target: Callable[[Any], Any] | None = None
    loss_extra: set[str] = field(default_factory=set)
    ema: Any = None
    channels_last: bool = False
    grad_clip: float = 0.0


def to_float_image(images: Any, mean: Any, std: Any) -> Any:
    """uint8 (B,C,H,W) -> float32 normalised ``(x/255 - mean) / std`` (mean/std of length 1 or C)."""
    import torch

    x = images.float().div_(255.0)
    c = x.shape[1]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if m.numel() not in (1, c):
        m, s = m[:1], s[:1]
    return x.sub_(m.view(1, -1, 1, 1)).div_(s.view(1, -1, 1, 1))


def targets_to_ordinal(grades: Any, num_grades: int) -> Any:
    """Grades 0..G-1 (B,) -> cumulative float targets (B, G-1): column k is 1 when grade > k."""
    import torch

    ks = torch.arange(num_grades - 1, device=grades.device)
    return (grades.long().view(-1, 1) > ks.view(1, -1)).float()


def logits_to_probs(logits: Any, target: str) -> Any:
    """Probabilities from logits: softmax for ``multiclass``, sigmoid otherwise (binary, multilabel, ordinal)."""
    import torch

    logits = logits.float()
    return torch.softmax(logits, dim=1) if target == "multiclass" else torch.sigmoid(logits)


def _autocast(device: Any, dtype: Any) -> Any:
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: Any,
    loader: Any,
    ctx: StepContext,
    state: EpochState | None = None,
    on_step: Callable[[EpochState], bool] | None = None,
    dry_run: bool = False,
    bar: Any = None,
    profiler: Any = None,
) -> EpochState:
    """Train over ``loader`` once (from where ``state`` left off: the loader must already skip done batches).

    Args:
        model: The model, in train mode on ``ctx.device``.
        loader: Yields dicts ``{"image": uint8 (B,C,H,W), "target": ..., "index": long (B,)}``.
        ctx: Loss, optimizer, AMP and augmentation (see `StepContext`).
        state: Running sums to continue (a resumed epoch); a fresh one by default.
        on_step: Called after every optimizer step with the updated state; returning True stops the epoch
            (``--max-steps``). It is where periodic checkpoints are written.
        dry_run: Stop after one batch.
        bar: A `medkit.console.Progress` to advance (img/s and loss shown), or None.
        profiler: A `medkit.data.loader.Profiler` timing data wait vs step (``--profile``), or None.

    Returns:
        The epoch state (``loss`` = mean training loss).
    """
    state = state or EpochState()
    model.train()
    t_wait = time.perf_counter()
    batches = profiler.iter(loader) if profiler is not None else loader
    for batch in batches:
        t0 = time.perf_counter()
        state.data_seconds += t0 - t_wait
        timer = profiler.step(len(batch["image"])) if profiler is not None else contextlib.nullcontext()
        with timer:
            loss, n = _step(model, batch, ctx)
        # .item() is a device sync; once per step is the price of an exact running loss.
        state.loss_sum += float(loss.detach().item()) * n
        state.seen += n
        state.step += 1
        t_wait = time.perf_counter()
        state.seconds += t_wait - t0
        if bar is not None:
            bar.update(n, loss=state.loss)
        if on_step is not None and on_step(state):
            break
        if dry_run:
            break
    return state


def _step(model: Any, batch: dict[str, Any], ctx: StepContext) -> tuple[Any, int]:
    """One optimizer step on one batch; returns the (detached-later) loss and the batch size."""
    import torch

    images = batch["image"].to(ctx.device, non_blocking=True)
    target = batch["target"].to(ctx.device, non_blocking=True)
    index = batch["index"].to(ctx.device, non_blocking=True) if "index" in batch else None
    if ctx.prepare_target is not None:
        target = ctx.prepare_target(target)
    if ctx.augment is not None:
        images, target = ctx.augment(images, target)
    elif ctx.normalize is not None:
        images = ctx.normalize(images)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    extra: dict[str, Any] = {}
    if "index" in ctx.loss_extra and index is not None:
        extra["index"] = index
    if "model" in ctx.loss_extra:
        extra["model"] = model
    with _autocast(ctx.device, ctx.amp_dtype):
        logits = model(images)
    # The loss runs in fp32: log-sigmoid and weighted sums lose precision under bf16.
    loss = ctx.loss_fn(logits.float(), target, **extra)
    if not torch.isfinite(loss):
        from medkit.errors import MedkitError

        raise MedkitError(
            f"the training loss became {loss.item()} (check the data and the learning rate)",
            hint="lower --lr, try --amp off, or check the labels for NaN",
        )
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        if ctx.grad_clip > 0:
            ctx.scaler.unscale_(ctx.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        if ctx.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        ctx.optimizer.step()
    if ctx.schedule is not None and hasattr(ctx.schedule, "step_batch"):
        ctx.schedule.step_batch()
    if ctx.ema is not None:
        ctx.ema.update(model)
    return loss, int(images.shape[0])


def evaluate(
    model: Any,
    loader: Any,
    *,
    device: Any,
    target: str,
    loss_fn: Any = None,
    amp_dtype: Any = None,
    normalize: Callable[[Any], Any] | None = None,
    prepare_target: Callable[[Any], Any] | None = None,
    channels_last: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Predict ``loader`` without gradients and return numpy arrays.

    Args:
        model: The model (put in eval mode here).
        loader: Yields dicts with ``image``, ``target`` and ``index``.
        device: Device to run on.
        target: Target kind (``binary``, ``multilabel``, ``multiclass``, ``ordinal``): picks softmax or sigmoid.
        loss_fn: When given, the mean validation loss is computed too.
        amp_dtype: Autocast dtype or None.
        normalize: uint8 batch -> model input.
        prepare_target: Loader target -> loss target (ordinal encoding).
        channels_last: Use the channels-last memory format.
        dry_run: Stop after one batch.

    Returns:
        ``{"probs": (N, K) float32, "targets": loader targets, "index": (N,) int64, "loss": float}``.
    """
    import numpy as np
    import torch

    model.eval()
    probs, targets, indices = [], [], []
    loss_sum, seen = 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            raw_target = batch["target"]
            images = normalize(images) if normalize is not None else images.float()
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            if loss_fn is not None:
                t = raw_target.to(device)
                if prepare_target is not None:
                    t = prepare_target(t)
                try:
                    loss_sum += float(loss_fn(logits, t).item()) * images.shape[0]
                    seen += int(images.shape[0])
                except TypeError:  # a loss that needs indices or the model: no validation loss
                    loss_fn = None
            probs.append(logits_to_probs(logits, target).cpu().numpy())
            targets.append(raw_target.cpu().numpy())
            indices.append(batch["index"].cpu().numpy())
            if dry_run:
                break
    if not probs:
        return {
            "probs": np.zeros((0, 0), np.float32),
            "targets": np.zeros((0,)),
            "index": np.zeros(0, np.int64),
            "loss": float("nan"),
        }
    return {
        "probs": np.concatenate(probs).astype(np.float32),
        "targets": np.concatenate(targets),
        "index": np.concatenate(indices).astype(np.int64),
        "loss": loss_sum / seen if seen else float("nan"),
    }

"""`fit()`: train one run (one fold) end to end, resumably; `fit_folds()` trains every fold and joins the OOF.

The loop itself lives in `medkit.engine.loop`; this module builds the components by name from the registries,
owns the run directory, the checkpoints (every ``ckpt_every`` steps, at the end of each epoch, on Ctrl-C), early
stopping on the task's metric, the optional second optimizer stage, and DDP.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from medkit.engine.ddp import DistInfo, barrier, dist_info, gather_arrays
from medkit.engine.loop import EpochState, StepContext, evaluate, targets_to_ordinal, train_one_epoch
from medkit.engine.run import RunDir, draw_curves, read_metrics, write_metrics, write_oof
from medkit.errors import DataError, Interrupted, UsageError

__all__ = ["TrainConfig", "FitResult", "fit", "fit_folds", "profile_steps", "Interrupted"]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the task preset (flags of ``medkit train``).

    Attributes:
        task: Task preset with the flag overrides applied (a `medkit.tasks.Task`).
        data: Image root, or a MedMNIST .npz.
        labels: Dataset table (None for an .npz).
        out: Run directory.
        folds: Optional fold table joined on the image column.
        fold: Validation fold (None: the table's split column or a hold-out).
        label_cols: Label columns to use (None: the task's, else detected).
        image_col: Image column (None: detected).
        pretrained: Start from the model's pretrained weights (timm; needs internet once).
        weights: Local state dict to start from.
        device: Device spec (auto, cpu, cuda:N, mps).
        amp: Autocast: ``off``, ``auto``, ``bf16`` or ``fp16``.
        compile: torch.compile the model.
        ema: Keep an exponential moving average of the weights; evaluate and save it.
        ema_decay: EMA decay per step.
        seed: Seed of everything (batch order, augmentation, initial weights).
        deterministic: Ask torch for deterministic kernels.
        workers: DataLoader workers (None: `medkit.data.loader.default_workers` on CUDA, 0 on the CPU, where
            worker start-up costs more than decoding small images in the training process).
        ckpt_every: Write last.pt every N optimizer steps (0: only at epoch ends and on Ctrl-C).
        max_steps: Stop (resumably) after this many optimizer steps of the run in total.
        dry_run: One batch of training and one of validation, then stop.
        patience: Early stopping after this many epochs without improvement (0: off).
        stage2_optimizer: Optimizer for the last ``stage2_epochs`` epochs (None: a single stage).
        stage2_epochs: Epochs of the second stage.
        stage2_lr: Learning rate of the second stage (None: the first stage's).
        scheduler_kwargs: Extra keyword arguments for the scheduler.
        optimizer_kwargs: Extra keyword arguments for the optimizer(s).
        mixup: Mixup alpha (0: off).
        cutmix: CutMix alpha (0: off).
        grad_clip: Gradient-norm clip (0: off).
        cache_dir: Preprocess once into a uint8 cache under this folder.
        mask_col: Table column of mask files stacked as the last input channel (``"auto"``: a ``mask`` column
            when the table has one, as ``medkit tile --masks`` writes; None: no mask).
        resume: Continue from ``out/checkpoints/last.pt``.
        profile: Time this many steps (data wait vs step) with `medkit.data.loader.Profiler`, then stop.
        evaluate_test: Also score the test split (MedMNIST) with the best checkpoint.
        argv: The command line, for run.json.
    """

    task: Any
    data: str
    labels: str | None = None
    out: str = "runs/run"
    folds: str | None = None
    fold: int | None = None
    label_cols: tuple[str, ...] | None = None
    image_col: str | None = None
    pretrained: bool = False
    weights: str | None = None
    device: str = "auto"
    amp: str = "off"
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    deterministic: bool = False
    workers: int | None = None
    ckpt_every: int = 0
    max_steps: int = 0
    dry_run: bool = False
    patience: int = 0
    stage2_optimizer: str | None = None
    stage2_epochs: int = 0
    stage2_lr: float | None = None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    mixup: float = 0.0
    cutmix: float = 0.0
    grad_clip: float = 0.0
    cache_dir: str | None = None
    mask_col: str | None = "auto"
    resume: bool = False
    profile: int = 0
    evaluate_test: bool = True
    argv: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the task as a dict)."""
        d = asdict(self)
        d["task"] = self.task.to_dict()
        return d


@dataclass
class FitResult:
    """What a finished (or stopped) run reports.

    Attributes:
        run_dir: The run directory.
        best_metric: Best validation metric (NaN when never evaluated).
        best_epoch: Epoch (1-based) of the best metric.
        epochs_done: Completed epochs.
        steps: Optimizer steps done in total.
        metric: Metric name.
        history: Rows of metrics.csv.
        test: Test-split scores of the best checkpoint (MedMNIST), or {}.
        stopped: ``""``, ``"early"``, ``"max_steps"``, ``"dry_run"``.
        profile: `Profiler.summary()` of a ``profile`` run, or {}.
    """

    run_dir: Path
    best_metric: float
    best_epoch: int
    epochs_done: int
    steps: int
    metric: str
    history: list[dict[str, Any]]
    test: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    profile: dict[str, float] = field(default_factory=dict)


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        from medkit.console import info as say

        say(message)


def _build_metric(name: str) -> tuple[Any, bool]:
    from medkit.registries import METRICS

    entry = METRICS.get(name)
    fn = METRICS.create(name)
    gib = getattr(fn, "greater_is_better", entry.flags.get("greater_is_better", True))
    return fn, bool(gib)


def _score(metric: Any, target: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """Apply a metric to evaluation outputs, in the shape the metrics contract expects."""
    if len(y_true) == 0:
        return float("nan")
    if target == "binary":
        y_true, probs = y_true.reshape(-1), probs.reshape(-1)
    elif target == "ordinal":
        # Sum of the "grade > k" probabilities = the expected grade; qwk cuts it at 0.5, 1.5, ...
        probs = probs.sum(axis=1)
    try:
        return float(metric(y_true, probs))
    except ValueError:  # e.g. AUC on a validation batch with one class only (dry runs, tiny folds)
        return float("nan")


def _improved(value: float, best: float, greater: bool) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if greater else value < best


def _make_model(cfg: TrainConfig, data: Any) -> Any:
    from medkit.registries import MODELS

    task = cfg.task
    kw: dict[str, Any] = {}
    if task.heads == "groups":
        if not data.label_groups:
            raise UsageError(
                "--heads groups needs label groups", hint="use a table with RANZCR columns, or --heads single"
            )
        order = {name: i for i, name in enumerate(data.label_names)}
        for g, cols in data.label_groups.items():
            idx = [order[c] for c in cols]
            if idx != list(range(idx[0], idx[0] + len(idx))):
                raise DataError(
                    f"label group {g} is not contiguous in the label order",
                    hint="order the label columns group by group",
                )
        kw["heads"] = {g: len(c) for g, c in data.label_groups.items()}
    if data.target == "ordinal":
        kw["head"] = "ordinal"
    num_classes = data.num_classes if data.target == "ordinal" else data.num_outputs
    return MODELS.create(
        task.model,
        num_classes=num_classes,
        in_chans=data.in_chans,
        pretrained=cfg.pretrained or None,
        weights=cfg.weights,
        **kw,
    )


def _mean_std(task: Any, data: Any) -> tuple[list[float], list[float]]:
    """Normalisation per input channel: the task's for the image channels, then the mask channel's.

    The mask channel gets mean 0 and std 1/255, so after ``(x / 255 - mean) / std`` the model sees the label
    values themselves (0..5 for PANDA), on the same scale as a normalised image channel.
    """
    mean, std = list(task.mean), list(task.std)
    if data.mask_col is None:
        return mean, std
    image_chans = data.in_chans - 1
    if len(mean) == 1:
        mean = mean * image_chans
    if len(std) == 1:
        std = std * image_chans
    return mean[:image_chans] + [0.0], std[:image_chans] + [1.0 / 255.0]


def _make_optimizer(
    name: str, model: Any, lr: float, weight_decay: float, total_steps: int, extra: dict[str, Any]
) -> Any:
    from medkit.registries import OPTIMIZERS

    # The module (not a parameter list) lets the factory exempt biases and norm weights from weight decay.
    return OPTIMIZERS.create(name, model, lr=lr, weight_decay=weight_decay, total_steps=total_steps, **extra)


def _make_schedule(
    name: str, optimizer: Any, epochs: int, steps_per_epoch: int, extra: dict[str, Any], greater: bool = True
) -> Any:
    from medkit.registries import SCHEDULERS

    extra = dict(extra)
    if SCHEDULERS.get(name).flags.get("needs_metric"):
        # the schedule watches the task metric, so its direction is the metric's (a log loss must fall);
        # an explicit --scheduler-arg mode=... still wins
        extra.setdefault("mode", "max" if greater else "min")
    return SCHEDULERS.create(name, optimizer, epochs=max(1, epochs), steps_per_epoch=max(1, steps_per_epoch), **extra)


def _make_loss(cfg: TrainConfig, data: Any) -> tuple[Any, set[str], bool]:
    """The loss, the batch entries it wants (``index``, ``model``) and whether it takes grades as they are."""
    from medkit.registries import LOSSES

    task = cfg.task
    entry = LOSSES.get(task.loss)
    kw = dict(task.loss_kwargs)
    kw.setdefault("label_prevalence", data.label_prevalence())
    kw.setdefault("num_classes", data.num_classes if data.target in ("multiclass", "ordinal") else data.num_outputs)
    if entry.flags.get("needs_indices"):
        # ELR keeps one running target per row of the source (the batch index is the source row).
        kw.setdefault("num_examples", len(data.train.source))
    if data.target == "ordinal" and not entry.flags.get("ordinal") and not entry.flags.get("multilabel"):
        raise UsageError(
            f"loss '{task.loss}' does not fit ordinal grades",
            hint="use --loss ordinal, or bce (on the cumulative 'grade > k' targets)",
        )
    if data.target == "multiclass" and not entry.flags.get("multiclass"):
        raise UsageError(f"loss '{task.loss}' is not a multiclass loss", hint="use --loss ce")
    loss = LOSSES.create(task.loss, **kw)
    extra = set()
    if entry.flags.get("needs_indices"):
        extra.add("index")
    if entry.flags.get("needs_model"):
        extra.add("model")
    return loss, extra, bool(entry.flags.get("ordinal"))


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if obj is not None and hasattr(obj, "state_dict") else None


def fit(cfg: TrainConfig) -> FitResult:
    """Train one run as configured; resumable at any step (see docs/train.md).

    Raises:
        Interrupted: After ``max_steps`` or Ctrl-C, with last.pt written.
        MedkitError: Bad data, names or flags.
    """
    import torch

    from medkit.config import provenance
    from medkit.console import Progress
    from medkit.data.augment import AugmentConfig, BatchAugment, cutmix, mixup
    from medkit.device import amp_dtype, resolve_device, seed_everything
    from medkit.engine import ddp
    from medkit.engine.data import EpochBatches, build_data, make_batches_loader

    info = dist_info()
    task = cfg.task
    run = RunDir(cfg.out)
    resume_state: dict[str, Any] | None = None
    if cfg.resume:
        resume_state = load_checkpoint(run.last)
        if resume_state.get("finished"):
            raise UsageError(f"{run.root} already finished training", hint="use another --out, or drop --resume")
    elif run.last.exists():
        raise UsageError(
            f"{run.root} already holds a run (checkpoints/last.pt)",
            hint="pass --resume to continue it, or choose another --out",
        )
    device = ddp.setup(info, resolve_device(cfg.device))
    if cfg.workers is None:
        from medkit.data.loader import default_workers

        cfg = TrainConfig(**{**cfg.__dict__, "workers": default_workers() if device.type == "cuda" else 0})
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_data(
        task,
        cfg.data,
        cfg.labels,
        cfg.folds,
        cfg.fold,
        cfg.label_cols,
        cfg.image_col,
        cfg.cache_dir,
        cfg.workers,
        cfg.seed,
        cfg.mask_col,
    )
    _log(info, f"data: {data.description}; target {data.target}, {data.num_outputs} output(s)")
    if len(data.val) == 0:
        raise DataError("the validation split is empty", hint="check --fold / the split column")

    model = _make_model(cfg, data).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn, loss_extra, takes_grades = _make_loss(cfg, data)
    if takes_grades and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise UsageError(
            f"--mixup/--cutmix cannot mix the integer grades that loss '{task.loss}' takes",
            hint="use --loss bce (cumulative targets mix fine), or drop --mixup/--cutmix",
        )
    loss_fn = loss_fn.to(device) if hasattr(loss_fn, "to") else loss_fn
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    train_batches = EpochBatches(len(data.train), task.batch_size, True, cfg.seed, info.world_size, info.rank)
    val_batches = EpochBatches(len(data.val), task.batch_size, False, cfg.seed, info.world_size, info.rank, train=False)
    steps_per_epoch = len(train_batches.batches())
    epochs = 1 if cfg.dry_run else task.epochs
    stage2_epochs = min(cfg.stage2_epochs, epochs) if cfg.stage2_optimizer else 0
    stage1_epochs = epochs - stage2_epochs

    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    train_model = model
    if cfg.compile:
        train_model = torch.compile(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    def build_stage(stage: int) -> tuple[Any, Any]:
        if stage == 1:
            opt = _make_optimizer(
                task.optimizer, model, task.lr, task.weight_decay, stage1_epochs * steps_per_epoch, cfg.optimizer_kwargs
            )
            return opt, _make_schedule(
                task.scheduler, opt, stage1_epochs, steps_per_epoch, cfg.scheduler_kwargs, greater
            )
        opt = _make_optimizer(
            cfg.stage2_optimizer,
            model,
            cfg.stage2_lr or task.lr,
            task.weight_decay,
            stage2_epochs * steps_per_epoch,
            cfg.optimizer_kwargs,
        )
        return opt, _make_schedule(task.scheduler, opt, stage2_epochs, steps_per_epoch, cfg.scheduler_kwargs, greater)

    aug_gen = torch.Generator()
    aug_gen.manual_seed(cfg.seed + 1_000_003 * info.rank)
    mean, std = _mean_std(task, data)
    image_channels = len(mean) - 1 if data.mask_col is not None else None  # the mask is the last channel
    aug_cfg = AugmentConfig(
        **{**task.augment, "mean": tuple(mean), "std": tuple(std), "image_channels": image_channels}
    )
    augmenter = BatchAugment(aug_cfg, size=task.img_size)
    evaluator = BatchAugment(AugmentConfig(mean=tuple(mean), std=tuple(std)), size=task.img_size)
    num_classes = data.num_classes if data.target == "multiclass" else None

    def augment(images: Any, target: Any) -> tuple[Any, Any]:
        x = augmenter(images, generator=aug_gen, train=True)
        if cfg.mixup > 0 and cfg.cutmix > 0:
            use_mix = bool(torch.rand(1, generator=aug_gen).item() < 0.5)
            return (mixup if use_mix else cutmix)(x, target, cfg.mixup if use_mix else cfg.cutmix, aug_gen, num_classes)
        if cfg.mixup > 0:
            return mixup(x, target, cfg.mixup, aug_gen, num_classes)
        if cfg.cutmix > 0:
            return cutmix(x, target, cfg.cutmix, aug_gen, num_classes)
        return x, target

    def normalize(images: Any) -> Any:
        return evaluator(images, train=False)

    def prepare_target(t: Any) -> Any:
        if data.target == "ordinal":
            return t.long() if takes_grades else targets_to_ordinal(t, data.num_classes)
        if data.target == "multiclass":
            return t.long()
        return t.float()

    # ----------------------------------------------------------------- state: fresh or resumed
    stage = 1
    epoch, step_in_epoch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best, best_epoch, bad_epochs = float("nan"), 0, 0
    epoch_state = EpochState()
    metric_fn, greater = _build_metric(task.metric)
    if resume_state is not None:
        stage = int(resume_state.get("stage", 1))
    optimizer, schedule = build_stage(stage)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if schedule is not None and resume_state.get("scheduler") is not None:
            schedule.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler") is not None:
            scaler.load_state_dict(resume_state["scaler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        if resume_state.get("loss") is not None and hasattr(loss_fn, "load_state_dict"):
            loss_fn.load_state_dict(resume_state["loss"])
        epoch, step_in_epoch = int(resume_state["epoch"]), int(resume_state["step"])
        global_step = int(resume_state["global_step"])
        history = list(resume_state.get("history", []))
        best, best_epoch = float(resume_state.get("best", float("nan"))), int(resume_state.get("best_epoch", 0))
        bad_epochs = int(resume_state.get("bad_epochs", 0))
        epoch_state = EpochState(**resume_state.get("epoch_state", {}))
        rngs = resume_state["rng"]
        per_rank = rngs.get(info.rank, rngs.get(0)) if isinstance(rngs, dict) and 0 in rngs else rngs
        set_rng_state(per_rank, {"augment": aug_gen})
        _log(info, f"resuming {run.root} at epoch {epoch + 1}, step {step_in_epoch} ({global_step} steps done)")

    config_record = cfg.to_dict()
    if info.is_main:
        record = provenance(config_record)
        record.update(
            data_hash=data.data_hash,
            data=data.description,
            label_names=data.label_names,
            target=data.target,
            world_size=info.world_size,
            metric=task.metric,
            greater_is_better=greater,
            in_chans=data.in_chans,
            mask_col=data.mask_col,
            img_size=task.img_size,
        )
        run.write_run_json(record)

    def checkpoint_state(finished: bool = False) -> dict[str, Any]:
        import medkit

        rngs = {info.rank: rng_state({"augment": aug_gen})}
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            import torch.distributed as dist

            dist.all_gather_object(gathered, rngs[info.rank])
            rngs = dict(enumerate(gathered))
        return {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": _state_of(schedule),
            "scaler": _state_of(scaler),
            "ema": _state_of(ema),
            "loss": _state_of(loss_fn),
            "stage": stage,
            "epoch": epoch,
            "step": epoch_state.step,
            "global_step": global_step,
            "epoch_state": asdict(epoch_state),
            "history": history,
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "rng": rngs,
            "config": config_record,
            "label_names": data.label_names,
            "target": data.target,
            "medkit_version": medkit.__version__,
            "finished": finished,
        }

    def save_last(finished: bool = False) -> None:
        state = checkpoint_state(finished)  # collective under DDP: every rank must call it
        if info.is_main:
            save_checkpoint(run.last, state)

    stopped = ""

    def on_step(st: EpochState) -> bool:
        nonlocal global_step, stopped
        global_step += 1
        if cfg.ckpt_every and global_step % cfg.ckpt_every == 0:
            save_last()
        if cfg.max_steps and global_step >= cfg.max_steps:
            stopped = "max_steps"
            return True
        return False

    ctx = StepContext(
        loss_fn=loss_fn,
        optimizer=optimizer,
        device=device,
        amp_dtype=dtype,
        scaler=scaler,
        schedule=schedule,
        augment=augment,
        normalize=normalize,
        prepare_target=prepare_target,
        loss_extra=loss_extra,
        ema=ema,
        channels_last=channels_last,
        grad_clip=cfg.grad_clip,
    )
    test_scores: dict[str, float] = {}
    profiler = None
    if cfg.profile:
        from medkit.data.loader import Profiler

        profiler = Profiler(enabled=True, device=device)
    # one loader each for the whole run: EpochBatches decides every epoch's order when the loader is iterated
    train_loader = make_batches_loader(data.train, train_batches, cfg.workers, device)
    val_batches.set_epoch(0)
    val_loader = make_batches_loader(data.val, val_batches, cfg.workers, device)
    try:
        while epoch < epochs:
            if stage == 1 and stage2_epochs and epoch >= stage1_epochs:
                stage = 2
                optimizer, schedule = build_stage(2)  # same parameters, fresh optimizer state, restarted schedule
                ctx.optimizer, ctx.schedule = optimizer, schedule
                _log(info, f"stage 2: {cfg.stage2_optimizer} for the last {stage2_epochs} epoch(s)")
            train_batches.set_epoch(epoch, step_in_epoch)
            bar_total = sum(len(b) for b in train_batches.batches()) if not cfg.dry_run else None
            bar_cm = Progress(
                total=bar_total, description=f"epoch {epoch + 1}/{epochs}", unit="img", enabled=info.is_main
            )
            with bar_cm as bar:
                if epoch_state.seen:
                    bar.update(epoch_state.seen, loss=epoch_state.loss)
                t0 = time.perf_counter()
                epoch_state = train_one_epoch(
                    train_model, train_loader, ctx, epoch_state, on_step, cfg.dry_run, bar, profiler
                )
                if stopped == "max_steps":
                    break
                eval_model = ema.module if ema is not None else model
                res = evaluate(
                    eval_model,
                    val_loader,
                    device=device,
                    target=data.target,
                    loss_fn=loss_fn if not loss_extra else None,
                    amp_dtype=dtype,
                    normalize=normalize,
                    prepare_target=prepare_target,
                    channels_last=channels_last,
                    dry_run=cfg.dry_run,
                )
                res = _gather_eval(res, info, data.val)
                y_true = data.val.targets[res["index"]]
                value = _score(metric_fn, data.target, y_true, res["probs"])
                bar.update(0, **{task.metric: value})
                epoch_seconds = time.perf_counter() - t0
            train_loss = epoch_state.loss
            if info.enabled:
                from medkit.engine.ddp import all_reduce_mean

                train_loss = all_reduce_mean(train_loss, info, device)
            lr = float(optimizer.param_groups[0]["lr"])
            row = {
                "epoch": epoch + 1,
                "stage": stage,
                "train_loss": train_loss,
                "val_loss": res["loss"],
                task.metric: value,
                "lr": lr,
                "img_per_s": epoch_state.seen * info.world_size / max(epoch_state.seconds, 1e-9),
                "data_wait_s": epoch_state.data_seconds,
                "epoch_s": epoch_seconds,
            }
            history.append(row)
            if schedule is not None and hasattr(schedule, "step_epoch"):
                schedule.step_epoch(value if math.isfinite(value) else None)
            is_best = _improved(value, best, greater) or (best_epoch == 0 and not math.isfinite(best))
            if is_best:
                best, best_epoch, bad_epochs = value, epoch + 1, 0
            else:
                bad_epochs += 1
            epoch += 1
            epoch_state = EpochState()
            step_in_epoch = 0
            if info.is_main:
                _log(
                    info,
                    f"epoch {epoch}: train_loss {train_loss:.4f} val_loss {res['loss']:.4f} "
                    f"{task.metric} {value:.4f}{' (best)' if is_best else ''}",
                )
            if is_best:
                best_state = checkpoint_state()
                if info.is_main:
                    save_checkpoint(run.best, best_state)
                    _write_oof(run, data, res)
            finished = cfg.dry_run or epoch >= epochs or (cfg.patience and bad_epochs >= cfg.patience)
            save_last(finished=bool(finished and not cfg.dry_run))
            if info.is_main:
                write_metrics(run.metrics_csv, history)
                draw_curves(run.curve_png, history, ["train_loss", "val_loss", task.metric])
            if cfg.dry_run:
                stopped = "dry_run"
                break
            if cfg.patience and bad_epochs >= cfg.patience:
                stopped = "early"
                _log(info, f"early stop: no {task.metric} improvement for {cfg.patience} epoch(s)")
                break
        if stopped == "max_steps":
            if not cfg.profile:
                save_last()
                _log(info, f"stopped after {global_step} steps (--max-steps); resume with --resume")
        elif data.test is not None and cfg.evaluate_test and run.best.exists():
            test_scores = _score_test(cfg, data, run, model, metric_fn, device, dtype, normalize, info, val_batches)
            if info.is_main and test_scores:
                from medkit._io import write_json

                write_json(run.root / "test.json", test_scores)
    except KeyboardInterrupt:
        save_last()
        raise Interrupted(f"interrupted; last checkpoint: {run.last}", hint="continue with --resume") from None
    finally:
        barrier(info)
    return FitResult(
        run.root,
        best,
        best_epoch,
        epoch,
        global_step,
        task.metric,
        history,
        test_scores,
        stopped,
        profiler.summary() if profiler is not None else {},
    )


def profile_steps(cfg: TrainConfig, steps: int) -> dict[str, float]:
    """Train ``steps`` steps into a throw-away folder and return the data-wait vs step-time summary."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medkit-profile-") as tmp:
        sub = TrainConfig(
            **{
                **cfg.__dict__,
                "out": tmp,
                "max_steps": steps,
                "profile": steps,
                "resume": False,
                "ckpt_every": 0,
                "dry_run": False,
                "evaluate_test": False,
            }
        )
        return fit(sub).profile


def _gather_eval(res: dict[str, Any], info: DistInfo, split: Any) -> dict[str, Any]:
    """Join every rank's predictions, drop the padded duplicates (first occurrence of each row kept) and turn
    ``index`` (rows of the source) into positions in the split, sorted."""
    arrays = {"probs": res["probs"], "index": res["index"], "targets": res["targets"]}
    if info.enabled:
        arrays = gather_arrays(arrays, info)
    _, first = np.unique(arrays["index"], return_index=True)
    out = {k: v[first] for k, v in arrays.items()}
    out["index"] = split.positions(out["index"])
    out["loss"] = res["loss"]
    return out


def _write_oof(run: RunDir, data: Any, res: dict[str, Any]) -> None:
    idx = res["index"]
    ids = [data.val.ids[i] for i in idx]
    extra = {"patient_id": [data.val.groups[i] for i in idx]} if data.val.groups else None
    write_oof(run.oof_csv, ids, data.val.targets[idx], res["probs"], data.label_names, extra)


def _score_test(
    cfg: TrainConfig,
    data: Any,
    run: RunDir,
    model: Any,
    metric_fn: Any,
    device: Any,
    dtype: Any,
    normalize: Any,
    info: DistInfo,
    like: Any,
) -> dict[str, float]:
    """Score the held-out test split with the best checkpoint: the task metric, plus AUC / ACC for binary."""
    from medkit.engine.data import EpochBatches, make_batches_loader

    state = load_checkpoint(run.best, map_location="cpu")
    weights = state["ema"] if cfg.ema and state.get("ema") else state["model"]
    if cfg.ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
    model.load_state_dict(weights)
    batches = EpochBatches(
        len(data.test), like.local_batch * like.world_size, False, cfg.seed, info.world_size, info.rank, train=False
    )
    res = evaluate(
        model,
        make_batches_loader(data.test, batches, cfg.workers),
        device=device,
        target=data.target,
        amp_dtype=dtype,
        normalize=normalize,
        dry_run=cfg.dry_run,
    )
    res = _gather_eval(res, info, data.test)
    y = data.test.targets[res["index"]]
    scores = {cfg.task.metric: _score(metric_fn, data.target, y, res["probs"]), "n": float(len(y))}
    if data.target == "binary":
        from sklearn.metrics import roc_auc_score

        yt, p = y.reshape(-1), res["probs"].reshape(-1)
        if len(np.unique(yt)) == 2:
            scores["auc"] = float(roc_auc_score(yt, p))
        scores["acc"] = float(np.mean((p > 0.5) == (yt > 0.5)))
    elif data.target == "multiclass":
        scores["acc"] = float(np.mean(res["probs"].argmax(1) == y))
    return scores


def fit_folds(cfg: TrainConfig, folds: list[int]) -> dict[str, Any]:
    """Train every fold into ``out/fold<k>`` and write the joined oof.csv and cv.json at the top.

    Returns:
        The cv.json record: per-fold best metric, the mean, and the metric over the joined OOF.
    """
    import pandas as pd

    from medkit._io import write_json

    info = dist_info()
    root = RunDir(cfg.out)
    results = []
    for k in folds:
        sub = TrainConfig(**{**cfg.__dict__, "fold": k, "out": str(root.fold(k).root)})
        if cfg.resume and not root.fold(k).last.exists():
            sub.resume = False
        if cfg.resume and root.fold(k).last.exists():
            state = load_checkpoint(root.fold(k).last)
            if state.get("finished"):
                hist = read_metrics(root.fold(k).metrics_csv)
                results.append((k, float(state.get("best", float("nan"))), len(hist)))
                continue
        r = fit(sub)
        results.append((k, r.best_metric, r.epochs_done))
    record: dict[str, Any] = {"metric": cfg.task.metric, "folds": {str(k): m for k, m, _ in results}}
    vals = [m for _, m, _ in results if math.isfinite(m)]
    record["mean"] = float(np.mean(vals)) if vals else float("nan")
    record["std"] = float(np.std(vals)) if vals else float("nan")
    if info.is_main:
        frames = []
        for k, _, _ in results:
            p = root.fold(k).oof_csv
            if p.exists():
                frames.append(pd.read_csv(p).assign(fold=k))
        if frames:
            oof = pd.concat(frames, ignore_index=True)
            from medkit.data.table import save_table

            save_table(oof, root.oof_csv)
            record["oof_rows"] = len(oof)
            record["cv"] = _oof_score(cfg, oof)
        write_json(root.cv_json, record)
    return record


def _oof_score(cfg: TrainConfig, oof: Any) -> float:
    """The task metric over the joined OOF table (targets and ``*_prob`` columns as written by `write_oof`)."""
    metric_fn, _ = _build_metric(cfg.task.metric)
    prob_cols = [c for c in oof.columns if str(c).endswith("_prob")]
    probs = oof[prob_cols].to_numpy(dtype=np.float64)
    target = cfg.task.target
    if "target" in oof.columns:
        y = oof["target"].to_numpy()
        if target == "binary" and len(prob_cols) == 1:
            y = y.astype(np.float64)
    else:
        y = oof[[c[: -len("_prob")] for c in prob_cols]].to_numpy(dtype=np.float64)
    if target == "binary" and len(prob_cols) > 1:
        target = "multilabel"
    if target == "binary" and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return _score(metric_fn, target, y, probs)


def env_flag(name: str) -> bool:
    """Whether an environment flag is set to a true value."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}

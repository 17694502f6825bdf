"""`fit()`: train one run (one fold) end to end, resumably (`medkit.engine.folds.fit_folds` trains every fold).

This module only orchestrates. The parts come from `medkit.engine.components` (model, loss, optimizer, EMA,
transforms), the stages from `medkit.engine.stages`, the batches from a `medkit.engine.feed.Feeder`, the steps from
`medkit.engine.loop`, the validation and test predictions from `medkit.engine.predict`, and the counters and
checkpoints from `medkit.engine.state`. Every run records its `medkit.engine.spec.RunSpec`, so
`medkit.engine.spec.load_run` rebuilds the model and its inputs from the run folder.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medkit.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, weights_only
from medkit.engine.ddp import barrier
from medkit.engine.loop import EpochState, StepContext, train_one_epoch
from medkit.engine.predict import Predictions, gather, predict
from medkit.engine.run import RunDir, draw_curves, write_oof
from medkit.engine.state import TrainParts, TrainState
from medkit.errors import DataError, Interrupted, UsageError
from medkit.metrics import score
from medkit.target import BINARY

__all__ = ["TrainConfig", "FitResult", "fit", "profile_steps"]


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
        amp: Autocast: ``auto`` (bf16, else fp16 + GradScaler, on a GPU; fp32 on a CPU), ``on`` (also bf16 on a
            CPU), ``bf16``, ``fp16`` or ``off``.
        compile: torch.compile the model.
        ema: Keep an exponential moving average of the weights; evaluate and save it.
        ema_decay: EMA decay per step.
        seed: Seed of everything (batch order, augmentation, initial weights).
        deterministic: Ask torch for deterministic kernels.
        workers: DataLoader workers feeding the model with ``feed="workers"`` (None:
            `medkit.engine.runtime.loader_workers`).
        feed: How batches reach the model: ``auto`` (by size, `medkit.engine.feeders.choose_feed`), ``device``,
            ``pinned``, ``stream`` or ``workers``.
        cache_workers: Processes decoding files into the ``cache_dir`` cache (None: every usable core).
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
        profile: Time this many steps (data wait vs step) with `medkit.engine.profile.Profiler`, then stop.
        evaluate_test: Also score the test split (MedMNIST) with the best checkpoint.
        pretrain: `medkit.registries.PRETRAINERS` method run first into ``out/pretrain`` (None: none); the
            classifier starts from its backbone (`medkit.engine.pretrain`).
        pretrain_epochs: Epochs of the pretraining.
        keep_last: Keep checkpoints/last.pt (optimizer state, resumable) once the run has finished.
        loggers: `medkit.registries.LOGGERS` names (``csv``, always on, writes metrics.csv).
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
    amp: str = "auto"
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    deterministic: bool = False
    workers: int | None = None
    feed: str = "auto"
    cache_workers: int | None = None
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
    pretrain: str | None = None
    pretrain_epochs: int = 0
    keep_last: bool = True
    loggers: tuple[str, ...] = ("csv",)
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
        feed: The feeder that fed the training (`medkit.engine.feeders.FeedChoice` name).
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
    feed: str = ""


@dataclass
class Trainer:
    """A run in progress: its configuration, runtime, data, parts, state and feeders (built by `_setup`)."""

    cfg: TrainConfig
    run: RunDir
    rt: Any
    data: Any
    spec: Any
    stages: list[Any]
    parts: TrainParts
    state: TrainState
    ctx: StepContext
    feed: Any
    train_feed: Any
    val_feed: Any
    train_model: Any
    metric: Any
    greater: bool
    steps_per_epoch: int
    epochs: int
    config: dict[str, Any]
    profiler: Any = None
    stopped: str = ""
    loggers: Any = None  # medkit.engine.loggers.RunLoggers on the main process
    test_outputs: Any = None  # (targets, probabilities) of the test split, for its pictures


def _log(tr: Trainer, message: str) -> None:
    if tr.rt.is_main:
        from medkit.console import info

        info(message)


# ---------------------------------------------------------------------------------------------------- fit
def fit(cfg: TrainConfig) -> FitResult:
    """Train one run as configured; resumable at any step (see docs/train.md).

    Raises:
        Interrupted: After ``max_steps`` or Ctrl-C, with last.pt written.
        UsageError: When another process is writing ``cfg.out`` (its lock, `medkit._lock.RunLock`).
        MedkitError: Bad data, names or flags.
    """
    from medkit._lock import run_lock
    from medkit.engine.ddp import dist_info
    from medkit.engine.feeders import check_feed

    check_feed(cfg.feed)  # before the data is read or cached, and before --out is created
    # One writer per run folder, held from the first check to the last output (rank 0 holds it under DDP).
    with run_lock(cfg.out, "medkit train", enabled=dist_info().is_main, clean=("", "checkpoints", "plots")):
        return _fit(cfg)


def _fit(cfg: TrainConfig) -> FitResult:
    from medkit.data.dataset import build_data
    from medkit.device import seed_everything
    from medkit.engine.loggers import open_loggers
    from medkit.engine.outputs import finish_run
    from medkit.engine.runtime import resolve_runtime

    run = RunDir(cfg.out)
    # Stopped during the pretraining: --resume continues that, and the run itself starts afresh.
    resume = None if cfg.pretrain and cfg.resume and not run.last.exists() else _resume_checkpoint(cfg, run)
    rt = resolve_runtime(cfg.device, cfg.amp, cfg.workers, deterministic=cfg.deterministic)
    seed_everything(cfg.seed, cfg.deterministic)
    data = build_data(
        cfg.task,
        cfg.data,
        cfg.labels,
        cfg.folds,
        cfg.fold,
        cfg.label_cols,
        cfg.image_col,
        cfg.cache_dir,
        cfg.cache_workers,
        cfg.seed,
        cfg.mask_col,
    )
    if cfg.pretrain and resume is None:
        from medkit.engine.pretrain import pretrain_stage

        cfg = replace(cfg, weights=str(pretrain_stage(cfg, data, rt)))
    tr = _setup(cfg, run, rt, data, resume)
    if rt.is_main:
        run.write_run_json(_run_record(tr))
        tr.loggers = open_loggers(cfg.loggers, run.root, tr.config)
    test_scores: dict[str, float] = {}
    status = "failed"
    try:
        _train(tr)
        test_scores = _finish(tr)
        if rt.is_main:  # pictures, results in run.json, last.pt dropped with --no-keep-last
            test_scores = finish_run(tr, test_scores)["test"]  # + accuracy at the chosen threshold
        if not tr.stopped or tr.stopped == "early":
            _mark_finished(tr)
        status = "finished" if not tr.stopped or tr.stopped == "early" else "stopped"
    except KeyboardInterrupt:
        status = "stopped"
        _save_last(tr)
        raise Interrupted(f"interrupted; last checkpoint: {run.last}", hint="continue with --resume") from None
    finally:
        if tr.loggers is not None:
            tr.loggers.close(status)
        barrier(rt.dist)
    st = tr.state
    return FitResult(
        run.root,
        st.best,
        st.best_epoch,
        st.epoch,
        st.global_step,
        cfg.task.metric,
        st.history,
        test_scores,
        tr.stopped,
        tr.profiler.summary() if tr.profiler is not None else {},
        tr.feed.name,
    )


def _resume_checkpoint(cfg: TrainConfig, run: RunDir) -> dict[str, Any] | None:
    """The checkpoint to resume from (``--resume``), after refusing to overwrite or re-finish a run."""
    from medkit.engine.outputs import run_finished

    if not run.last.exists() and run_finished(run):  # --no-keep-last removed last.pt; run.json keeps the mark
        raise UsageError(f"{run.root} already finished training", hint="use another --out")
    if cfg.resume:
        state = load_checkpoint(run.last)
        if state.get("finished"):
            raise UsageError(f"{run.root} already finished training", hint="use another --out, or drop --resume")
        _check_resume_config(cfg, state.get("config") or {}, run)
        return state
    if run.last.exists():
        raise UsageError(
            f"{run.root} already holds a run (checkpoints/last.pt)",
            hint="pass --resume to continue it, or choose another --out",
        )
    return None


# Settings that change what a checkpoint's weights mean; every other flag (epochs, workers, feed, logging,
# patience, ckpt-every, device, ...) may change on --resume.
_RESUME_FIXED = ("label_cols", "image_col", "mask_col")
_RESUME_FIXED_TASK = (
    "target",
    "labels",
    "num_classes",
    "in_chans",
    "windows",
    "img_size",
    "model",
    "model_kwargs",
    "heads",
    "label_groups",
    "batch_size",
    "mean",
    "std",
    "context",
    "context_mode",
)


def _check_resume_config(cfg: TrainConfig, old: dict[str, Any], run: RunDir) -> None:
    """Refuse a ``--resume`` whose flags change what the checkpoint's weights mean, naming each key (old -> new)."""
    import json

    def plain(value: Any) -> Any:  # tuples and lists alike, as run.json holds them
        return json.loads(json.dumps(value, default=str))

    now = cfg.to_dict()
    sides = [("", old, now, _RESUME_FIXED), ("task.", old.get("task") or {}, now["task"], _RESUME_FIXED_TASK)]
    diffs = [
        f"{prefix}{k}: {plain(before[k])!r} -> {plain(after[k])!r}"
        for prefix, before, after, keys in sides
        for k in keys
        if k in before and k in after and plain(before[k]) != plain(after[k])
    ]
    if diffs:
        raise UsageError(
            f"--resume with flags that change the run in {run.root}: " + "; ".join(diffs),
            hint=f"resume with the flags of {run.root / 'run.json'}, or start a new run with another --out",
        )


def _setup(cfg: TrainConfig, run: RunDir, rt: Any, data: Any, resume: dict[str, Any] | None) -> Trainer:
    """Build every part of the run (restored from ``resume`` when given)."""
    from medkit.engine.feed import make_feeder
    from medkit.engine.feeders import plan_feed
    from medkit.engine.spec import spec_of
    from medkit.engine.stages import plan_stages
    from medkit.metrics import build_metric, greater_is_better

    task = cfg.task
    if rt.is_main:
        from medkit.console import info

        info(f"data: {data.description}; target {data.target}, {data.num_outputs} output(s)")
    if len(data.val) == 0:
        raise DataError("the validation split is empty", hint="check --fold / the split column")
    mspec, parts, caps = _parts(cfg, data, rt)
    epochs = 1 if cfg.dry_run else task.epochs
    stages = plan_stages(
        task,
        epochs,
        stage2_optimizer=cfg.stage2_optimizer,
        stage2_epochs=cfg.stage2_epochs,
        stage2_lr=cfg.stage2_lr,
        optimizer_kwargs=cfg.optimizer_kwargs,
        scheduler_kwargs=cfg.scheduler_kwargs,
    )
    metric = build_metric(task.metric)
    greater = greater_is_better(metric)
    # Decided once for the run; the rows of every split are held (once) before the first feeder is made.
    feed = plan_feed([data.train, data.val, data.test], rt, cfg.feed)
    if rt.is_main:
        info(str(feed))
    train_feed = make_feeder(data.train, task.batch_size, rt, train=True, seed=cfg.seed, feed=feed.name)
    transforms, mean, std = _transforms(cfg, data, rt)
    ctx = StepContext(
        loss_fn=parts.loss,
        optimizer=None,  # set by _use_stage
        runtime=rt,
        transforms=transforms,
        prepare_target=functools.partial(
            data.target.loss_target, num_classes=data.num_classes, grades_as_is=caps.takes_grades
        ),
        caps=caps,
        scaler=parts.scaler,
        ema=parts.ema,
        grad_clip=cfg.grad_clip,
    )
    tr = Trainer(
        cfg=cfg,
        run=run,
        rt=rt,
        data=data,
        spec=spec_of(task, data, mspec, mean, std, stages, greater, cfg.ema),
        stages=stages,
        parts=parts,
        state=TrainState.from_checkpoint(resume) if resume is not None else TrainState(),
        ctx=ctx,
        feed=feed,
        train_feed=train_feed,
        val_feed=make_feeder(data.val, task.batch_size, rt, train=False, seed=cfg.seed, feed=feed.name),
        train_model=rt.wrap_for_training(parts.model, cfg.compile),
        metric=metric,
        greater=greater,
        steps_per_epoch=len(train_feed.order.batches()),
        epochs=epochs,
        config=cfg.to_dict(),
    )
    _use_stage(tr, tr.state.stage)
    if resume is not None:
        _restore(tr, resume)
    if cfg.profile:
        from medkit.engine.profile import Profiler

        tr.profiler = Profiler(enabled=True, sync=rt.synchronize)
    return tr


def _parts(cfg: TrainConfig, data: Any, rt: Any) -> tuple[Any, TrainParts, Any]:
    """The model (on the device), the loss and its capabilities, the EMA and the scaler; the optimizer comes with
    the stage."""
    from medkit.engine import components as C

    task = cfg.task
    mspec = C.model_spec(task, data)
    model = rt.place_model(C.build_model(mspec, cfg.pretrained, cfg.weights))
    loss_fn, caps = C.build_loss(task, data)
    if caps.takes_grades and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise UsageError(
            f"--mixup/--cutmix cannot mix the integer grades that loss '{task.loss}' takes",
            hint="use --loss bce (cumulative targets mix fine), or drop --mixup/--cutmix",
        )
    loss_fn = loss_fn.to(rt.device) if hasattr(loss_fn, "to") else loss_fn
    ema = C.build_ema(model, cfg.ema_decay) if cfg.ema else None
    return mspec, TrainParts(model, None, None, rt.grad_scaler(), ema, loss_fn), caps


def _transforms(cfg: TrainConfig, data: Any, rt: Any) -> tuple[Any, list[float], list[float]]:
    """The on-device transforms, and the per-channel mean and std they normalise with."""
    from medkit.engine.components import InputTransforms

    task = cfg.task
    has_mask = data.mask_col is not None
    mean, std = data.mean_std(task.mean, task.std)
    transforms = InputTransforms(
        mean,
        std,
        task.img_size,
        task.augment,
        image_channels=len(mean) - 1 if has_mask else None,  # the mask is the last channel
        mixup=cfg.mixup,
        cutmix=cfg.cutmix,
        num_classes=data.num_classes if data.target.softmax else None,
        seed=cfg.seed + 1_000_003 * rt.dist.rank,
    )
    return transforms, mean, std


def _use_stage(tr: Trainer, number: int) -> None:
    """Make stage ``number`` (1-based) current: a fresh optimizer over the same weights, a restarted schedule."""
    from medkit.engine.components import build_optimizer, build_schedule

    stage = tr.stages[number - 1]
    opt = build_optimizer(stage, tr.parts.model, stage.epochs * tr.steps_per_epoch)
    schedule = build_schedule(
        stage.scheduler, opt, stage.epochs, tr.steps_per_epoch, stage.scheduler_kwargs, tr.greater
    )
    tr.state.stage = number
    tr.parts.optimizer, tr.parts.schedule = opt, schedule
    tr.ctx.optimizer, tr.ctx.schedule = opt, schedule


def _restore(tr: Trainer, ckpt: dict[str, Any]) -> None:
    """Load every part and this rank's RNG states from a checkpoint."""
    tr.parts.load(ckpt)
    rngs = ckpt["rng"]
    rank = tr.rt.dist.rank
    per_rank = rngs.get(rank, rngs.get(0)) if isinstance(rngs, dict) and 0 in rngs else rngs
    set_rng_state(per_rank, {"augment": tr.ctx.transforms.generator})
    st = tr.state
    _log(tr, f"resuming {tr.run.root} at epoch {st.epoch + 1}, step {st.progress.step} ({st.global_step} steps done)")


def _run_record(tr: Trainer) -> dict[str, Any]:
    """run.json: the resolved configuration, the run spec, the runtime, versions and the data it saw."""
    from medkit.config import provenance

    data, rt = tr.data, tr.rt
    record = provenance({k: v for k, v in tr.config.items() if k != "argv"})  # argv once, at the top
    record.update(
        data_hash=data.data_hash,
        data=data.description,
        label_names=data.label_names,
        target=data.target.name,
        world_size=rt.dist.world_size,
        metric=tr.cfg.task.metric,
        greater_is_better=tr.greater,
        in_chans=data.in_chans,
        mask_col=data.mask_col,
        img_size=tr.cfg.task.img_size,
        runtime={
            "device": str(rt.device),
            "amp": tr.cfg.amp,
            "amp_dtype": str(rt.amp_dtype).removeprefix("torch."),
            "channels_last": rt.channels_last,
            "cudnn_benchmark": rt.cudnn_benchmark,
            "workers": rt.workers,
            "feed": tr.feed.name,
            "feed_reason": tr.feed.reason,
            "loss_every": rt.loss_every,
        },
        spec=tr.spec.to_dict(),
    )
    if tr.cfg.pretrain:
        from medkit.engine.pretrain import PRETRAIN_DIR

        record["child"] = {"pretrain": str((tr.run.root / PRETRAIN_DIR).resolve())}
    return record


# ---------------------------------------------------------------------------------------------------- checkpoints
def _checkpoint(tr: Trainer, finished: bool = False) -> dict[str, Any]:
    """The checkpoint dict; collective under DDP (every rank must call it: the RNG states are gathered)."""
    import medkit

    # The pending losses are read first: one that is not finite stops the run before its weights are saved.
    tr.state.progress.settle()
    info = tr.rt.dist
    rngs = {info.rank: rng_state({"augment": tr.ctx.transforms.generator})}
    if info.enabled:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, rngs[info.rank])
        rngs = dict(enumerate(gathered))
    return {
        **tr.parts.state_dicts(),
        **tr.state.to_checkpoint(),
        "rng": rngs,
        "spec": tr.spec.to_dict(),
        "config": tr.config,
        "label_names": tr.data.label_names,
        "target": tr.data.target.name,
        "medkit_version": medkit.__version__,
        "finished": finished,
    }


def _save_last(tr: Trainer, finished: bool = False) -> None:
    state = _checkpoint(tr, finished)
    if tr.rt.is_main:
        save_checkpoint(tr.run.last, state)


def _mark_finished(tr: Trainer) -> None:
    """Mark last.pt finished once every output is written (a run killed before this completes with --resume).

    The mark is set on the saved checkpoint, not on the live parts: scoring the test split loaded best.pt's weights.
    """
    if tr.rt.is_main and tr.run.last.exists():
        state = load_checkpoint(tr.run.last)
        state["finished"] = True
        save_checkpoint(tr.run.last, state)


def _on_step(tr: Trainer, progress: EpochState) -> bool:
    """After every optimizer step: periodic checkpoints, and the ``--max-steps`` stop."""
    tr.state.global_step += 1
    cfg = tr.cfg
    if cfg.ckpt_every and tr.state.global_step % cfg.ckpt_every == 0:
        _save_last(tr)
    if cfg.max_steps and tr.state.global_step >= cfg.max_steps:
        tr.stopped = "max_steps"
        return True
    return False


# ---------------------------------------------------------------------------------------------------- epochs
def _train(tr: Trainer) -> None:
    """Epochs until the end, an early stop, a dry run's single batch or ``--max-steps``."""
    from medkit.engine.stages import stage_of_epoch

    st = tr.state
    if st.epoch and (st.epoch >= tr.epochs or (tr.cfg.patience and st.bad_epochs >= tr.cfg.patience)):
        # A run killed after its last checkpoint but before its outputs: write them instead of training on.
        _log(tr, f"training had finished ({st.epoch} epochs); writing the outputs it did not write")
        if tr.rt.is_main:  # as _end_epoch writes them
            tr.loggers.log_epoch(st.history)
            draw_curves(tr.run.curve_png, st.history, ["train_loss", "val_loss", tr.cfg.task.metric], st.best_epoch)
        return
    while tr.state.epoch < tr.epochs:
        number = stage_of_epoch(tr.stages, tr.state.epoch)[0] + 1
        if number != tr.state.stage:
            _use_stage(tr, number)
            st = tr.stages[number - 1]
            _log(tr, f"stage {number}: {st.optimizer} for the last {st.epochs} epoch(s)")
        outcome = _run_epoch(tr)
        if outcome is None:  # --max-steps
            return
        _end_epoch(tr, *outcome)
        if tr.cfg.dry_run:
            tr.stopped = "dry_run"
            return
        if tr.cfg.patience and tr.state.bad_epochs >= tr.cfg.patience:
            tr.stopped = "early"
            _log(tr, f"early stop: no {tr.cfg.task.metric} improvement for {tr.cfg.patience} epoch(s)")
            return


def _run_epoch(tr: Trainer) -> tuple[Predictions, float, float] | None:
    """Train one epoch (from where a resumed one stopped) and validate; None when ``--max-steps`` stopped it."""
    from medkit.console import Progress

    st, cfg = tr.state, tr.cfg
    tr.train_feed.set_epoch(st.epoch, st.progress.step)
    total = sum(len(b) for b in tr.train_feed.order.batches()) if not cfg.dry_run else None
    bar_cm = Progress(total=total, description=f"epoch {st.epoch + 1}/{tr.epochs}", unit="img", enabled=tr.rt.is_main)
    with bar_cm as bar:
        if st.progress.seen:
            bar.update(st.progress.seen, train_loss=st.progress.loss)
        t0 = time.perf_counter()
        on_step = functools.partial(_on_step, tr)
        train_one_epoch(tr.train_model, tr.train_feed, tr.ctx, st.progress, on_step, cfg.dry_run, bar, tr.profiler)
        if tr.stopped == "max_steps":
            return None
        preds = _validate(tr)
        value = score(tr.metric, tr.data.target, tr.data.val.targets[preds.rows], preds.probs)
        bar.update(0, **{f"val_{cfg.task.metric}": value})  # next to the bar's train loss: say which split
    return preds, value, time.perf_counter() - t0


def _validate(tr: Trainer) -> Predictions:
    """Predictions of the evaluated weights (the EMA when kept) on the validation split, every rank joined."""
    caps = tr.ctx.caps
    loss_fn = None if caps.needs_indices or caps.needs_model else tr.parts.loss
    tr.val_feed.set_epoch(0)
    preds = predict(
        tr.parts.eval_model,
        tr.val_feed,
        tr.rt,
        tr.data.target,
        tr.ctx.transforms.eval,
        loss_fn,
        tr.ctx.prepare_target,
        dry_run=tr.cfg.dry_run,
    )
    return gather(preds, tr.rt.dist, tr.data.val)


def _end_epoch(tr: Trainer, preds: Predictions, value: float, seconds: float) -> None:
    """Record the epoch, step the epoch schedule, keep the best checkpoint and its OOF, write last.pt."""
    st, metric = tr.state, tr.cfg.task.metric
    progress = st.progress
    train_loss = progress.loss
    if tr.rt.dist.enabled:
        from medkit.engine.ddp import all_reduce_mean

        train_loss = all_reduce_mean(train_loss, tr.rt.dist, tr.rt.device)
    st.history.append(
        {
            "epoch": st.epoch + 1,
            "stage": st.stage,
            "train_loss": train_loss,
            "val_loss": preds.loss,
            metric: value,
            "lr": float(tr.parts.optimizer.param_groups[0]["lr"]),
            "img_per_s": progress.seen * tr.rt.dist.world_size / max(progress.seconds, 1e-9),
            "data_wait_s": progress.data_seconds,
            "epoch_s": seconds,
        }
    )
    if tr.parts.schedule is not None and hasattr(tr.parts.schedule, "step_epoch"):
        tr.parts.schedule.step_epoch(value if math.isfinite(value) else None)
    is_best = st.end_epoch(value, tr.greater)
    _log(
        tr,
        f"epoch {st.epoch}: train_loss {train_loss:.4f} val_loss {preds.loss:.4f} "
        f"val_{metric} {value:.4f}{' (best)' if is_best else ''}",
    )
    if is_best:
        best = _checkpoint(tr)
        if tr.rt.is_main:
            save_checkpoint(tr.run.best, weights_only(best))
            _write_oof(tr.run, tr.data, preds)
    # Not marked finished yet: metrics.csv, curve.png and test.json come after (fit marks it at the very end).
    _save_last(tr)
    if tr.rt.is_main:
        tr.loggers.log_epoch(st.history)  # metrics.csv (csv, always on), TensorBoard, MLflow
        draw_curves(tr.run.curve_png, st.history, ["train_loss", "val_loss", metric], st.best_epoch)


def _finish(tr: Trainer) -> dict[str, float]:
    """After the epochs: a resumable checkpoint after ``--max-steps``, else the test split's scores."""
    if tr.stopped == "max_steps":
        if not tr.cfg.profile:
            _save_last(tr)
            _log(tr, f"stopped after {tr.state.global_step} steps (--max-steps); resume with --resume")
        return {}
    if tr.data.test is None or not tr.cfg.evaluate_test or not tr.run.best.exists():
        return {}
    scores = _score_test(tr)
    if tr.rt.is_main and scores:
        from medkit._io import write_json

        write_json(tr.run.root / "test.json", scores)
    return scores


def _write_oof(run: RunDir, data: Any, preds: Predictions) -> None:
    idx = preds.rows
    extra = {"patient_id": [data.val.groups[i] for i in idx]} if data.val.groups else None
    write_oof(run.oof_csv, preds.ids or [], data.val.targets[idx], preds.probs, data.label_names, extra)


def _score_test(tr: Trainer) -> dict[str, float]:
    """Score the held-out test split with the best checkpoint: the task metric, plus AUC / ACC for binary."""
    from medkit.engine.feed import make_feeder
    from medkit.engine.spec import evaluated_weights

    data, model = tr.data, tr.parts.model
    model.load_state_dict(evaluated_weights(load_checkpoint(tr.run.best, map_location="cpu")))
    feed = make_feeder(data.test, tr.cfg.task.batch_size, tr.rt, train=False, seed=tr.cfg.seed, feed=tr.feed.name)
    preds = gather(
        predict(model, feed, tr.rt, data.target, tr.ctx.transforms.eval, dry_run=tr.cfg.dry_run), tr.rt.dist, data.test
    )
    y = data.test.targets[preds.rows]
    tr.test_outputs = (y, preds.probs)
    scores = {tr.cfg.task.metric: score(tr.metric, data.target, y, preds.probs), "n": float(len(y))}
    if data.target is BINARY:
        from sklearn.metrics import roc_auc_score

        yt, p = y.reshape(-1), preds.probs.reshape(-1)
        if len(np.unique(yt)) == 2:
            scores["auc"] = float(roc_auc_score(yt, p))
        scores["acc"] = float(np.mean((p > 0.5) == (yt > 0.5)))
    elif data.target.softmax:
        scores["acc"] = float(np.mean(preds.probs.argmax(1) == y))
    return scores


# ---------------------------------------------------------------------------------------------------- profile
def profile_steps(cfg: TrainConfig, steps: int) -> dict[str, Any]:
    """Train ``steps`` steps into a throw-away folder and return the data-wait vs step-time summary, with the
    feeder that fed them (``feed``)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medkit-profile-") as tmp:
        sub = replace(
            cfg,
            out=tmp,
            max_steps=steps,
            profile=steps,
            resume=False,
            ckpt_every=0,
            dry_run=False,
            evaluate_test=False,
            loggers=("csv",),
        )
        result = fit(sub)
        return {**result.profile, "feed": result.feed}

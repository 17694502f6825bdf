"""`medkit train TASK`: train a model from a task preset, every field overridable by a flag (docs/train.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.cli._options import (
    AmpDtypeOpt,
    AmpOpt,
    DataOpt,
    DeviceOpt,
    FeedOpt,
    FoldOpt,
    FoldsOpt,
    ImageColOpt,
    JsonOpt,
    LabelColsOpt,
    LabelsOpt,
    OutOpt,
    SeedOpt,
    device_spec,
    precision,
    split_columns,
)
from medkit.errors import UsageError

__all__ = ["train"]

_PANEL_MODEL = "Model and optimisation"
_PANEL_RUN = "Run control"


def _kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options; values are Python literals when they parse as one, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{flag} expects KEY=VALUE, got '{item}'", hint=f"e.g. {flag} milestones=[50,75]")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip().replace("-", "_")] = value
    return out


TrainWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        help="DataLoader processes reading batches for the model (default: cores - 1 on a GPU; 0 on a CPU, where "
        "the model needs every core).",
        min=0,
    ),
]


# The options of `medkit train`, one alias each (shared ones come from _options.py), so that the command's
# signature reads on one screen.
TaskOpt = Annotated[str, typer.Argument(help="Task preset: ct, cxr, wsi, scan, binary, multiclass, multilabel.")]
MaskColOpt = Annotated[
    str | None,
    typer.Option(
        "--mask-col",
        help="Column of mask files stacked as an extra channel (default: 'mask' if present; 'none' = off).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="MODELS name, e.g. resnet34 or timm/convnext_tiny.", rich_help_panel=_PANEL_MODEL),
]
HeadsOpt = Annotated[
    str | None,
    typer.Option("--heads", help="single | groups (one head per label group).", rich_help_panel=_PANEL_MODEL),
]
InChansOpt = Annotated[
    int | None,
    typer.Option("--in-chans", help="Input channels (1 gray, 3 RGB/windows).", rich_help_panel=_PANEL_MODEL),
]
WindowsOpt = Annotated[
    str | None,
    typer.Option("--windows", help="CT windows as channels, e.g. brain,subdural,bone.", rich_help_panel=_PANEL_MODEL),
]
PretrainedOpt = Annotated[
    bool,
    typer.Option("--pretrained/--no-pretrained", help="Start from timm weights.", rich_help_panel=_PANEL_MODEL),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Local state dict to start from.", dir_okay=False, rich_help_panel=_PANEL_MODEL),
]
LossOpt = Annotated[
    str | None,
    typer.Option("--loss", help="LOSSES name (bce, wbce, asl, focal, ...).", rich_help_panel=_PANEL_MODEL),
]
LossArgOpt = Annotated[
    list[str] | None,
    typer.Option("--loss-arg", help="Loss option KEY=VALUE (repeatable).", rich_help_panel=_PANEL_MODEL),
]
MetricOpt = Annotated[
    str | None,
    typer.Option("--metric", help="METRICS name that picks the best checkpoint.", rich_help_panel=_PANEL_MODEL),
]
OptimizerOpt = Annotated[
    str | None,
    typer.Option("--optimizer", help="OPTIMIZERS name (adam, adamw, ...).", rich_help_panel=_PANEL_MODEL),
]
OptimizerArgOpt = Annotated[
    list[str] | None,
    typer.Option("--optimizer-arg", help="Optimizer option KEY=VALUE.", rich_help_panel=_PANEL_MODEL),
]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate.", rich_help_panel=_PANEL_MODEL)]
WeightDecayOpt = Annotated[
    float | None, typer.Option("--weight-decay", help="Weight decay.", rich_help_panel=_PANEL_MODEL)
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="SCHEDULERS name (cosine, multistep, ...).", rich_help_panel=_PANEL_MODEL),
]
SchedulerArgOpt = Annotated[
    list[str] | None,
    typer.Option("--scheduler-arg", help="Scheduler option KEY=VALUE.", rich_help_panel=_PANEL_MODEL),
]
Stage2OptimizerOpt = Annotated[
    str | None,
    typer.Option(
        "--stage2-optimizer", help="Switch to this optimizer for the last epochs.", rich_help_panel=_PANEL_MODEL
    ),
]
Stage2EpochsOpt = Annotated[
    int, typer.Option("--stage2-epochs", help="Epochs of the second stage.", min=0, rich_help_panel=_PANEL_MODEL)
]
Stage2LrOpt = Annotated[
    float | None,
    typer.Option("--stage2-lr", help="Learning rate of the second stage.", rich_help_panel=_PANEL_MODEL),
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Epochs.", min=1)]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Global batch size.", min=1)]
ImgSizeOpt = Annotated[int | None, typer.Option("--img-size", help="Training image size (square).", min=8)]
MixupOpt = Annotated[float, typer.Option("--mixup", help="Mixup alpha (0 = off).", min=0.0)]
CutmixOpt = Annotated[float, typer.Option("--cutmix", help="CutMix alpha (0 = off).", min=0.0)]
NoAugmentOpt = Annotated[bool, typer.Option("--no-augment", help="Switch off the task's augmentation.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Keep an EMA of the weights; evaluate and save it.")]
EmaDecayOpt = Annotated[float, typer.Option("--ema-decay", help="EMA decay per step.")]
GradClipOpt = Annotated[float, typer.Option("--grad-clip", help="Clip the gradient norm (0 = off).", min=0.0)]
PatienceOpt = Annotated[
    int,
    typer.Option(
        "--patience", help="Early stop after N epochs without improvement.", min=0, rich_help_panel=_PANEL_RUN
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in --out from checkpoints/last.pt.", rich_help_panel=_PANEL_RUN),
]
CkptEveryOpt = Annotated[
    int,
    typer.Option(
        "--ckpt-every", help="Write last.pt every N steps (0 = epoch ends).", min=0, rich_help_panel=_PANEL_RUN
    ),
]
MaxStepsOpt = Annotated[
    int,
    typer.Option(
        "--max-steps", help="Stop resumably after N optimizer steps in total.", min=0, rich_help_panel=_PANEL_RUN
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="One batch of training and one of validation.", rich_help_panel=_PANEL_RUN)
]
ProfileOpt = Annotated[
    int,
    typer.Option("--profile", help="Time N steps: data wait vs step, then exit.", min=0, rich_help_panel=_PANEL_RUN),
]
DeterministicOpt = Annotated[
    bool, typer.Option("--deterministic", help="Deterministic kernels (slower).", rich_help_panel=_PANEL_RUN)
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Preprocess once into a uint8 cache in this folder.",
        file_okay=False,
        rich_help_panel=_PANEL_RUN,
    ),
]
CacheWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--cache-workers",
        help="Processes decoding files into the --cache (default: every core).",
        min=0,
        rich_help_panel=_PANEL_RUN,
    ),
]
GpusOpt = Annotated[
    int,
    typer.Option(
        "--gpus", help="Processes for DDP (re-runs itself under torchrun).", min=1, rich_help_panel=_PANEL_RUN
    ),
]


def train(
    ctx: typer.Context,
    task: TaskOpt,
    data: DataOpt,
    labels: LabelsOpt = None,
    folds: FoldsOpt = None,
    fold: FoldOpt = None,
    label_cols: LabelColsOpt = None,
    image_col: ImageColOpt = None,
    mask_col: MaskColOpt = None,
    model: ModelOpt = None,
    heads: HeadsOpt = None,
    in_chans: InChansOpt = None,
    windows: WindowsOpt = None,
    pretrained: PretrainedOpt = False,
    weights: WeightsOpt = None,
    loss: LossOpt = None,
    loss_arg: LossArgOpt = None,
    metric: MetricOpt = None,
    optimizer: OptimizerOpt = None,
    optimizer_arg: OptimizerArgOpt = None,
    lr: LrOpt = None,
    weight_decay: WeightDecayOpt = None,
    scheduler: SchedulerOpt = None,
    scheduler_arg: SchedulerArgOpt = None,
    stage2_optimizer: Stage2OptimizerOpt = None,
    stage2_epochs: Stage2EpochsOpt = 0,
    stage2_lr: Stage2LrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    img_size: ImgSizeOpt = None,
    mixup: MixupOpt = 0.0,
    cutmix: CutmixOpt = 0.0,
    no_augment: NoAugmentOpt = False,
    amp: AmpOpt = None,
    amp_dtype: AmpDtypeOpt = "auto",
    compile_: CompileOpt = False,
    ema: EmaOpt = False,
    ema_decay: EmaDecayOpt = 0.999,
    grad_clip: GradClipOpt = 0.0,
    patience: PatienceOpt = 0,
    resume: ResumeOpt = False,
    ckpt_every: CkptEveryOpt = 0,
    max_steps: MaxStepsOpt = 0,
    dry_run: DryRunOpt = False,
    profile: ProfileOpt = 0,
    deterministic: DeterministicOpt = False,
    cache: CacheOpt = None,
    cache_workers: CacheWorkersOpt = None,
    gpus: GpusOpt = 1,
    out: OutOpt = None,
    seed: SeedOpt = 0,
    workers: TrainWorkersOpt = None,
    feed: FeedOpt = "auto",
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
    competition: CompetitionOpt = None,
) -> None:
    """Train a model on a task preset (ct, cxr, wsi, scan, binary, multiclass, multilabel), resumable, DDP-ready."""
    from medkit.engine.ddp import dist_info
    from medkit.engine.fit import TrainConfig, fit, profile_steps
    from medkit.engine.folds import fit_folds

    if gpus > 1 and dist_info().world_size == 1:
        _relaunch(gpus)
    preset = _preset(
        task,
        data,
        img_size,
        loss_kwargs=_kv(loss_arg, "--loss-arg") if loss_arg else None,
        augment={} if no_augment else None,
        model=model,
        heads=heads,
        in_chans=in_chans,
        windows=windows,
        loss=loss,
        metric=metric,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        scheduler=scheduler,
        epochs=epochs,
        batch_size=batch_size,
        labels=label_cols,
    )
    if competition is not None:  # the Kaggle preset fills what the flags left unset
        preset, label_cols = _with_competition(preset, competition, metric, label_cols)
    if stage2_optimizer and stage2_epochs < 1:  # checked again by plan_stages; here before any data is read
        raise UsageError("--stage2-optimizer needs --stage2-epochs N", hint="e.g. --stage2-epochs 2")
    run_out = out or Path("runs") / f"{task}-{preset.model.replace('/', '_')}"
    cfg = TrainConfig(
        task=preset,
        data=str(data),
        labels=str(labels) if labels else None,
        out=str(run_out),
        folds=str(folds) if folds else None,
        fold=_fold_number(fold),
        label_cols=split_columns(label_cols),
        image_col=image_col,
        pretrained=pretrained,
        weights=str(weights) if weights else None,
        device=device_spec(ctx, device),
        amp=precision(amp, amp_dtype),
        compile=compile_,
        ema=ema,
        ema_decay=ema_decay,
        seed=seed,
        deterministic=deterministic,
        workers=workers,
        feed=feed,
        cache_workers=cache_workers,
        ckpt_every=ckpt_every,
        max_steps=max_steps,
        dry_run=dry_run,
        patience=patience,
        stage2_optimizer=stage2_optimizer,
        stage2_epochs=stage2_epochs,
        stage2_lr=stage2_lr,
        scheduler_kwargs=_kv(scheduler_arg, "--scheduler-arg"),
        optimizer_kwargs=_kv(optimizer_arg, "--optimizer-arg"),
        mixup=mixup,
        cutmix=cutmix,
        grad_clip=grad_clip,
        cache_dir=str(cache) if cache else None,
        mask_col="auto" if mask_col is None else (None if mask_col.lower() == "none" else mask_col),
        resume=resume,
        profile=profile,
        argv=sys.argv[:],
    )
    if profile:
        summary = profile_steps(cfg, profile)
        if dist_info().is_main:
            _print_profile(summary, json_out)
    elif fold == "all":
        from medkit.data.dataset import fold_numbers

        record = fit_folds(cfg, fold_numbers(folds or labels))
        if dist_info().is_main:
            _print_folds(record, run_out, json_out)
    else:
        result = fit(cfg)
        if dist_info().is_main:  # under DDP only rank 0 reports
            _print_run(task, result, json_out)


def _relaunch(gpus: int) -> None:
    """Re-run this command under torch.distributed.run with ``gpus`` processes, and exit with its code."""
    import subprocess

    from medkit.console import info
    from medkit.engine.ddp import relaunch_argv

    info(f"launching {gpus} processes under torch.distributed.run")
    raise typer.Exit(subprocess.call(relaunch_argv(gpus, sys.argv[1:])))


def _preset(name: str, data: Path, img_size: int | None, **overrides: Any) -> Any:
    """The task preset with the flags that were given; a MedMNIST archive keeps its own image size by default."""
    from medkit.registries import TASKS

    preset = TASKS.create(name, img_size=img_size, **overrides)
    if img_size is None and data.suffix.lower() == ".npz":
        from medkit.data.dataset import archive_task

        preset = archive_task(preset, data)
    return preset


CompetitionOpt = Annotated[
    str | None,
    typer.Option(
        "--competition",
        help="Kaggle preset (rsna, ranzcr, panda, siim-isic): its metric, label columns and groups, unless given.",
    ),
]


def _with_competition(preset: Any, name: str, metric: str | None, label_cols: str | None) -> tuple[Any, str | None]:
    """The task preset with a competition's metric, label columns and label groups where no flag set them."""
    from medkit.registries import COMPETITIONS

    comp = COMPETITIONS.create(name)
    labels = label_cols or ",".join(comp.target_columns)
    changes = {
        "metric": None if metric else (comp.metric or None),
        "labels": None if label_cols else tuple(comp.target_columns),
        "label_groups": comp.label_groups or None,
    }
    return preset.with_(**changes), labels


def _fold_number(fold: str | None) -> int | None:
    if fold is None or fold == "all":
        return None
    try:
        return int(fold)
    except ValueError:
        raise UsageError(f"--fold must be an integer or 'all', not '{fold}'") from None


def _print_profile(summary: dict[str, Any], json_out: bool) -> None:
    from medkit.console import out, print_json

    if json_out:
        print_json(summary)
        return
    out.print(
        f"profile: {int(summary['steps'])} steps, feed {summary['feed']}, "
        f"data wait {summary['data_wait_ms']:.1f} ms, step {summary['step_ms']:.1f} ms, "
        f"waiting {100 * summary['wait_fraction']:.0f}% of the time, {summary['img_per_s']:.0f} img/s"
    )


def _print_folds(record: dict[str, Any], run_out: Path, json_out: bool) -> None:
    from rich.table import Table

    from medkit.console import out, print_json

    if json_out:
        print_json({"run_dir": str(run_out), **record})
        return
    table = Table(title=f"cross-validation: {record['metric']}")
    table.add_column("fold")
    table.add_column(record["metric"], justify="right")
    for k, v in record["folds"].items():
        table.add_row(k, f"{v:.4f}")
    table.add_row("mean", f"{record['mean']:.4f}")
    if "cv" in record:
        table.add_row("OOF", f"{record['cv']:.4f}")
    out.print(table)
    out.print(str(Path(run_out) / "cv.json"))


def _print_run(task: str, result: Any, json_out: bool) -> None:
    from rich.table import Table

    from medkit.console import out, print_json

    if json_out:
        print_json(
            {
                "run_dir": str(result.run_dir),
                "metric": result.metric,
                "best": result.best_metric,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs_done,
                "steps": result.steps,
                "stopped": result.stopped or None,
                "test": result.test or None,
            }
        )
        return
    table = Table(title=f"medkit train {task}")
    table.add_column("run")
    table.add_column(f"best {result.metric}", justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("steps", justify="right")
    tests = {k: v for k, v in result.test.items() if k != "n"}
    for k in tests:
        table.add_column(f"test {k}", justify="right")
    table.add_row(
        str(result.run_dir),
        f"{result.best_metric:.4f}",
        str(result.best_epoch),
        str(result.steps),
        *[f"{v:.4f}" for v in tests.values()],
    )
    out.print(table)

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
from medkit.cli._sequence import (
    AuxLossOpt,
    DiversityOpt,
    FromRunOpt,
    SeqArgOpt,
    SeqEmbeddingsOpt,
    SeqMaskOpt,
    SeqModelOpt,
    SeqRecipeOpt,
    SeqStageOpt,
    run_sequence,
)
from medkit.cli.refine import RefineEpochsOpt, RefineLrOpt, RefineSeqOpt, train_then_refine
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
    typer.Option(
        "--heads",
        help="single | groups (one head per label group: the table's RANZCR groups) | 'NAME=COL,COL;NAME=COL' "
        "(your own groups; their columns are the labels unless --label-cols is given).",
        rich_help_panel=_PANEL_MODEL,
    ),
]
InChansOpt = Annotated[
    int | None,
    typer.Option("--in-chans", help="Input channels (1 gray, 3 RGB/windows).", rich_help_panel=_PANEL_MODEL),
]
WindowsOpt = Annotated[
    str | None,
    typer.Option("--windows", help="CT windows as channels, e.g. brain,subdural,bone.", rich_help_panel=_PANEL_MODEL),
]
ContextOpt = Annotated[
    int,
    typer.Option(
        "--context",
        help="Stack each slice with its neighbours in the series as channels: K slices per stack (odd; 1 = off; "
        "the end slices of a series repeated). Needs series and slice-order columns, or DICOM headers.",
        min=1,
    ),
]
ContextModeOpt = Annotated[
    str,
    typer.Option(
        "--context-mode",
        help="all: every slice in every window (K x windows channels); middle: the centre slice in every window, "
        "its neighbours in the first (windows + K - 1).",
    ),
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
PretrainOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrain",
        help="Pretrain the backbone first, into RUN/pretrain (PRETRAINERS: siamese = label-sharing image pairs).",
        rich_help_panel=_PANEL_MODEL,
    ),
]
PretrainEpochsOpt = Annotated[
    int, typer.Option("--pretrain-epochs", help="Epochs of --pretrain.", min=0, rich_help_panel=_PANEL_MODEL)
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Epochs.", min=1)]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Global batch size.", min=1)]
ImgSizeOpt = Annotated[int | None, typer.Option("--img-size", help="Training image size (square).", min=8)]
MixupOpt = Annotated[float, typer.Option("--mixup", help="Mixup alpha (0 = off).", min=0.0)]
CutmixOpt = Annotated[float, typer.Option("--cutmix", help="CutMix alpha (0 = off).", min=0.0)]
NoAugmentOpt = Annotated[bool, typer.Option("--no-augment", help="Switch off the task's augmentation.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Keep an EMA of the weights; evaluate and save it.")]
EmaDecayOpt = Annotated[
    float | None, typer.Option("--ema-decay", help="EMA decay per step (default: the recipe's, else 0.999).")
]
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="Recommended settings over the task preset (flags still win): small-image (28-64 px, docs/quality.md).",
        rich_help_panel=_PANEL_MODEL,
    ),
]
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
LoggerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        metavar="NAME",
        help="Also log to: tensorboard, mlflow (optional extras; repeatable or comma list). metrics.csv (csv) is "
        "always written.",
        rich_help_panel=_PANEL_RUN,
    ),
]
KeepLastOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-last/--no-keep-last",
        help="Keep checkpoints/last.pt (optimizer state, for --resume) once the run finished (default: keep; with "
        "--fold all: drop).",
        show_default=False,
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
    context: ContextOpt = 1,
    context_mode: ContextModeOpt = "all",
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
    pretrain: PretrainOpt = None,
    pretrain_epochs: PretrainEpochsOpt = 0,
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
    ema_decay: EmaDecayOpt = None,
    recipe: RecipeOpt = None,
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
    logger: LoggerOpt = None,
    keep_last: KeepLastOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = 0,
    workers: TrainWorkersOpt = None,
    feed: FeedOpt = "auto",
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
    competition: CompetitionOpt = None,
    seq_model: SeqModelOpt = None,
    seq_embeddings: SeqEmbeddingsOpt = False,
    from_run: FromRunOpt = None,
    aux_loss: AuxLossOpt = None,
    seq_mask: SeqMaskOpt = 0.0,
    diversity: DiversityOpt = 0.0,
    seq_recipe: SeqRecipeOpt = None,
    seq_stage: SeqStageOpt = None,
    seq_arg: SeqArgOpt = None,
    refine_seq: RefineSeqOpt = 0,
    refine_lr: RefineLrOpt = 1e-6,
    refine_epochs: RefineEpochsOpt = 2,
) -> None:
    """Train a model on a task preset (ct, cxr, wsi, scan, binary, multiclass, multilabel), resumable, DDP-ready."""
    from medkit.engine.ddp import dist_info

    if gpus > 1 and dist_info().world_size == 1:
        _relaunch(gpus)
    preset, label_cols = _preset(
        task,
        data,
        img_size,
        recipe,
        loss_kwargs=_kv(loss_arg, "--loss-arg") if loss_arg else None,
        augment={} if no_augment else None,
        model=model,
        heads=heads,
        **_inputs(in_chans, windows, context, context_mode),
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
    cfg = _train_config(ctx, preset, label_cols, run_out)
    _run(cfg, ctx.params, task, run_out, folds or labels)


def _train_config(ctx: typer.Context, preset: Any, label_cols: Any, run_out: Path) -> Any:
    """The `medkit.engine.fit.TrainConfig` of the parsed flags (``ctx.params``), the task preset and the run folder."""
    from medkit.engine.fit import TrainConfig

    p = ctx.params
    return TrainConfig(
        task=preset,
        data=str(p["data"]),
        labels=str(p["labels"]) if p["labels"] else None,
        out=str(run_out),
        folds=str(p["folds"]) if p["folds"] else None,
        fold=_fold_number(p["fold"]),
        label_cols=split_columns(label_cols),
        image_col=p["image_col"],
        pretrained=p["pretrained"],
        weights=str(p["weights"]) if p["weights"] else None,
        device=device_spec(ctx, p["device"]),
        amp=precision(p["amp"], p["amp_dtype"]),
        compile=p["compile_"],
        **_ema(p["recipe"], p["ema"], p["ema_decay"]),
        seed=p["seed"],
        deterministic=p["deterministic"],
        workers=p["workers"],
        feed=p["feed"],
        cache_workers=p["cache_workers"],
        ckpt_every=p["ckpt_every"],
        max_steps=p["max_steps"],
        dry_run=p["dry_run"],
        patience=p["patience"],
        stage2_optimizer=p["stage2_optimizer"],
        stage2_epochs=p["stage2_epochs"],
        stage2_lr=p["stage2_lr"],
        pretrain=p["pretrain"],
        pretrain_epochs=p["pretrain_epochs"],
        scheduler_kwargs=_kv(p["scheduler_arg"], "--scheduler-arg"),
        optimizer_kwargs=_kv(p["optimizer_arg"], "--optimizer-arg"),
        mixup=p["mixup"],
        cutmix=p["cutmix"],
        grad_clip=p["grad_clip"],
        cache_dir=str(p["cache"]) if p["cache"] else None,
        mask_col="auto" if p["mask_col"] is None else (None if p["mask_col"].lower() == "none" else p["mask_col"]),
        resume=p["resume"],
        profile=p["profile"],
        **_run_outputs(p["fold"], p["keep_last"], p["logger"]),
        argv=sys.argv[:],
    )


def _run(cfg: Any, params: dict[str, Any], task: str, run_out: Path, fold_table: Path | None) -> None:
    """Carry out the configured training: a sequence model or slice-then-refine stages (CT series), a profile, every
    fold of ``fold_table`` (``--fold all``), or one run; rank 0 reports."""
    from medkit.engine.ddp import dist_info
    from medkit.engine.fit import fit, profile_steps
    from medkit.engine.folds import fit_folds

    json_out = bool(params.get("json_out"))
    if params.get("seq_model") or params.get("refine_seq"):  # docs/sequence.md, docs/series.md; flags from params
        return run_sequence(cfg, params) if params.get("seq_model") else train_then_refine(cfg, params)
    if cfg.profile:
        summary = profile_steps(cfg, cfg.profile)
        if dist_info().is_main:
            _print_profile(summary, json_out)
    elif params.get("fold") == "all":
        from medkit.data.dataset import fold_numbers

        record = fit_folds(cfg, fold_numbers(fold_table))
        if dist_info().is_main:
            _print_folds(record, run_out, json_out)
    else:
        result = fit(cfg)
        if dist_info().is_main:  # under DDP only rank 0 reports
            _print_run(task, result, json_out)


def _inputs(in_chans: int | None, windows: str | None, context: int, context_mode: str) -> dict[str, Any]:
    """The task fields that decide what one model input is: ``--in-chans``, ``--windows`` (the channels of a slice)
    and ``--context`` / ``--context-mode`` (2.5D stacks of slices, `medkit.data.context`); checked here, before any
    data is read."""
    from medkit.data.context import check_context

    check_context(context, context_mode)
    return {"in_chans": in_chans, "windows": windows, "context": context, "context_mode": context_mode}


def _run_outputs(fold: str | None, keep_last: bool | None, logger: list[str] | None) -> dict[str, Any]:
    """``keep_last`` (default: keep for one run, drop for every fold of ``--fold all``) and the checked loggers."""
    from medkit.engine.loggers import resolve_loggers

    return {"keep_last": fold != "all" if keep_last is None else keep_last, "loggers": resolve_loggers(logger)}


def _ema(recipe: str | None, ema: bool, ema_decay: float | None) -> dict[str, Any]:
    """``--ema`` / ``--ema-decay``, else the ``--recipe``'s EMA, else none (decay 0.999 when switched on)."""
    from medkit.tasks import recipe as find_recipe

    rec = find_recipe(recipe) if recipe else None
    decay = ema_decay if ema_decay is not None else (rec.ema_decay if rec else 0.999)
    return {"ema": ema or bool(rec and rec.ema), "ema_decay": decay}


def _relaunch(gpus: int) -> None:
    """Re-run this command under torch.distributed.run with ``gpus`` processes, and exit with its code."""
    import subprocess

    from medkit.console import info
    from medkit.engine.ddp import relaunch_argv

    info(f"launching {gpus} processes under torch.distributed.run")
    raise typer.Exit(subprocess.call(relaunch_argv(gpus, sys.argv[1:])))


def _preset(name: str, data: Path, img_size: int | None, recipe: str | None, **overrides: Any) -> tuple[Any, Any]:
    """The task preset, then the ``--recipe``'s fields, then the flags that were given; a MedMNIST archive keeps its
    own image size by default. Also the label columns: ``--label-cols``, else those of ``--heads NAME=COL,..``."""
    from medkit.registries import TASKS
    from medkit.tasks import recipe as find_recipe

    fields = find_recipe(recipe).task if recipe else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    preset = TASKS.create(name, img_size=img_size, **{**fields, **given})
    if img_size is None and data.suffix.lower() == ".npz":
        from medkit.data.dataset import archive_task

        preset = archive_task(preset, data)
    label_cols = overrides.get("labels")
    if label_cols is None and "=" in str(overrides.get("heads") or ""):
        label_cols = ",".join(preset.labels)  # named groups: their columns are the labels, and must exist
    return preset, label_cols


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
    table.add_column("best epoch", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("total steps", justify="right")
    tests = {k: v for k, v in result.test.items() if k != "n"}
    binary = "acc_at_threshold" in tests  # accuracy at 0.5 and at the threshold chosen on validation
    names = {"acc": "acc@0.5", "acc_at_threshold": "acc@thr", "threshold": "thr"} if binary else {}
    for k in tests:
        table.add_column(f"test {names.get(k, k)}", justify="right")
    table.add_row(
        str(result.run_dir),
        f"{result.best_metric:.4f}",
        str(result.best_epoch),
        str(result.epochs_done),
        str(result.steps),
        *[f"{v:.4f}" for v in tests.values()],
    )
    out.print(table)
    if (Path(result.run_dir) / "plots").is_dir():
        out.print(f"pictures: {Path(result.run_dir) / 'plots'} and curve.png; results: run.json")

"""`medkit refine RUN_DIR --seq N`: continue a trained CT slice run on stacks of N neighbouring slices (docs/series.md).

Also the ``--refine-*`` options of `medkit train` (train, then refine in the same command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.cli._options import DeviceOpt, JsonOpt, OutOpt, device_spec
from medkit.errors import UsageError

__all__ = ["refine", "RefineSeqOpt", "RefineLrOpt", "RefineEpochsOpt", "train_then_refine"]

_PANEL = "Neighbour refinement (CT series)"

RefineSeqOpt = Annotated[
    int,
    typer.Option(
        "--refine-seq",
        help="After training, refine the model on stacks of N neighbouring slices (odd; 0 = off); one run "
        "folder per stage under --out.",
        min=0,
        rich_help_panel=_PANEL,
    ),
]
RefineLrOpt = Annotated[
    float, typer.Option("--refine-lr", help="Learning rate of the refine stage.", rich_help_panel=_PANEL)
]
RefineEpochsOpt = Annotated[
    int, typer.Option("--refine-epochs", help="Epochs of the refine stage.", min=1, rich_help_panel=_PANEL)
]


def _options(**kw: Any) -> Any:
    from medkit.engine.refine import RefineOptions

    return RefineOptions(**kw)


def refine(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A finished `medkit train` run (its folder).", file_okay=False)],
    seq: Annotated[int, typer.Option("--seq", help="Slices per stack (odd): the slice and its neighbours.", min=1)] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (small: the model is trained already).")] = 1e-6,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs.", min=1)] = 2,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="OPTIMIZERS name (default: the run's).")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="LOSSES name (default: the run's).")] = None,
    freeze: Annotated[
        list[str] | None,
        typer.Option("--freeze", help="Keep parameters whose name matches this pattern (e.g. 'layer1.*'); repeatable."),
    ] = None,
    distill: Annotated[
        Path | None,
        typer.Option("--distill", help="Teacher run whose predictions are soft targets too.", file_okay=False),
    ] = None,
    distill_weight: Annotated[float, typer.Option("--distill-weight", help="Weight of the teacher term.")] = 0.5,
    pseudo_labels: Annotated[
        Path | None,
        typer.Option("--pseudo-labels", help="Prediction CSV whose probabilities replace the targets of its images."),
    ] = None,
    init_weights: Annotated[
        str | None,
        typer.Option("--init-weights", help="Starting neighbour weights, e.g. 0.1,0.2,0.4,0.2,0.1 (default: centred)."),
    ] = None,
    fixed_weights: Annotated[
        bool, typer.Option("--fixed-weights", help="Keep the neighbour weights at their start (train the CNN only).")
    ] = False,
    weights_lr: Annotated[
        float,
        typer.Option("--weights-lr", help="Learning rate of the neighbour weights (the CNN takes --lr).", min=0.0),
    ] = 1e-3,
    update_bn: Annotated[
        bool,
        typer.Option(
            "--update-bn", help="Update batch norm statistics on the stacks (default: keep the parent's; see docs)."
        ),
    ] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Stacks per step.", min=1)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the stage from its checkpoints/last.pt.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="One step of training and one of validation.")] = False,
    out: OutOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Refine a trained CT slice run on N neighbouring slices: a new run whose spec carries the learned weights."""
    from medkit.engine.refine import refine_run

    opts = _options(
        seq=seq,
        lr=lr,
        epochs=epochs,
        optimizer=optimizer,
        loss=loss,
        freeze=tuple(freeze or ()),
        distill=str(distill) if distill else None,
        distill_weight=distill_weight,
        pseudo_labels=str(pseudo_labels) if pseudo_labels else None,
        init_weights=init_weights,
        learn_weights=not fixed_weights,
        weights_lr=weights_lr,
        update_bn=update_bn,
        batch_size=batch_size,
        out=str(out) if out else None,
        resume=resume,
        device=device_spec(ctx, device),
        dry_run=dry_run,
    )
    result = refine_run(run_dir, opts)
    _print(result, json_out)


def _print(result: Any, json_out: bool) -> None:
    from medkit.console import out, print_json

    if json_out:
        print_json(
            {
                "run_dir": str(result.run_dir),
                "metric": result.metric,
                "best": result.best_metric,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs_done,
            }
        )
        return
    out.print(f"{result.run_dir}: best {result.metric} {result.best_metric:.4f} at epoch {result.best_epoch}")


def train_then_refine(cfg: Any, params: dict[str, Any]) -> None:
    """`medkit train ... --refine-seq N`: the slice stage into ``OUT/1-slice``, the refine stage into
    ``OUT/2-refine<N>``, and ``OUT/stages.json`` listing both. ``--resume`` resumes the unfinished stage.

    Args:
        cfg: The slice stage's `medkit.engine.fit.TrainConfig`.
        params: The parsed flags of `medkit train` (``refine_seq``, ``refine_lr``, ``refine_epochs``, ``fold``,
            ``json_out``).

    Raises:
        UsageError: An even N, or ``--fold all`` (refine one fold's run with `medkit refine`).
    """
    from dataclasses import replace

    from medkit._io import write_json
    from medkit.engine.fit import fit
    from medkit.engine.refine import centred_window

    seq, lr, epochs = int(params["refine_seq"]), float(params["refine_lr"]), int(params["refine_epochs"])
    json_out = bool(params.get("json_out"))
    centred_window(seq)
    if params.get("fold") == "all":
        raise UsageError("--refine-seq trains one fold", hint="pass --fold K, and refine each fold's run")
    if cfg.profile:
        raise UsageError("--refine-seq does not combine with --profile")
    root = Path(cfg.out)
    first, second = root / "1-slice", root / f"2-refine{seq}"
    done = (first / "checkpoints" / "best.pt").is_file() and _finished(first)
    if done and cfg.resume:
        from medkit.console import info

        info(f"stage 1 finished before: {first}")
    else:
        result = fit(replace(cfg, out=str(first)))
        _print(result, json_out)
        if result.stopped and result.stopped not in ("dry_run", "early"):
            return  # interrupted or --max-steps: resume it first
    opts = _options(
        seq=seq, lr=lr, epochs=epochs, out=str(second), resume=cfg.resume, device=cfg.device, dry_run=cfg.dry_run
    )
    from medkit.engine.refine import refine_run

    result = refine_run(first, opts)
    write_json(root / "stages.json", {"stages": [str(first), str(second)], "refine_seq": seq})
    _print(result, json_out)


def _finished(run: Path) -> bool:
    """Whether a slice run got to its end (run.json marks it)."""
    from medkit.engine.outputs import run_finished
    from medkit.engine.run import RunDir

    return run_finished(RunDir(run))

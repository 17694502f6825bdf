"""The ``--seq-*`` options of `medkit train` (the sequence model over CT series, docs/sequence.md) and their run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.errors import UsageError

__all__ = [
    "SeqModelOpt",
    "SeqEmbeddingsOpt",
    "FromRunOpt",
    "AuxLossOpt",
    "SeqMaskOpt",
    "DiversityOpt",
    "SeqRecipeOpt",
    "SeqStageOpt",
    "SeqArgOpt",
    "SeqFlags",
    "run_sequence",
]

_PANEL = "Sequence model (CT series)"

SeqModelOpt = Annotated[
    str | None,
    typer.Option(
        "--seq-model",
        help="Read whole series: the CNN (--model) embeds each slice, this reader (gru, lstm, transformer) reads "
        "the series, a head labels every slice.",
        rich_help_panel=_PANEL,
    ),
]
SeqEmbeddingsOpt = Annotated[
    bool,
    typer.Option(
        "--seq-embeddings",
        help="Embed every slice once with the CNN of --from-run / --weights and train only the reader (fast).",
        rich_help_panel=_PANEL,
    ),
]
FromRunOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-run",
        help="A trained slice run whose model and weights are the sequence model's CNN.",
        file_okay=False,
        rich_help_panel=_PANEL,
    ),
]
AuxLossOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--aux-loss",
        help="Loss term NAME=WEIGHT (repeatable): main, aux, count, embed, cpc (main=1 unless given).",
        rich_help_panel=_PANEL,
    ),
]
SeqMaskOpt = Annotated[
    float,
    typer.Option(
        "--seq-mask", help="Mask this share of slice embeddings in training.", min=0.0, max=0.99, rich_help_panel=_PANEL
    ),
]
DiversityOpt = Annotated[
    float,
    typer.Option(
        "--diversity",
        help="Diversity transfer rate: add single-finding feature changes to this share of slices.",
        min=0.0,
        max=0.99,
        rich_help_panel=_PANEL,
    ),
]
SeqRecipeOpt = Annotated[
    Path | None,
    typer.Option(
        "--seq-recipe",
        help="TOML file of stage tables (docs/sequence.md): a staged schedule, one run folder per stage.",
        dir_okay=False,
        rich_help_panel=_PANEL,
    ),
]
SeqStageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--seq-stage",
        help='One stage as "name=all epochs=2 lr=1e-4 seq_mask=0.15 diversity=0.15 cpc=0.1" (repeatable).',
        rich_help_panel=_PANEL,
    ),
]
SeqArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--seq-arg",
        help="Sequence model option KEY=VALUE: hidden_size (256), num_layers (1), dropout (0), max_len (64).",
        rich_help_panel=_PANEL,
    ),
]

_SEQ_ARGS = {"hidden_size": int, "num_layers": int, "dropout": float, "max_len": int}


def _seq_args(items: list[str] | None) -> dict[str, Any]:
    from medkit.errors import did_you_mean

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--seq-arg expects KEY=VALUE, got '{item}'", hint="e.g. --seq-arg hidden_size=128")
        key, value = (s.strip() for s in item.split("=", 1))
        key = key.replace("-", "_")
        if key not in _SEQ_ARGS:
            raise UsageError(
                f"unknown --seq-arg '{key}'{did_you_mean(key, _SEQ_ARGS)}", hint=f"keys: {', '.join(_SEQ_ARGS)}"
            )
        try:
            out[key] = _SEQ_ARGS[key](value)
        except ValueError:
            raise UsageError(f"--seq-arg {key}: '{value}' is not a {_SEQ_ARGS[key].__name__}") from None
    if out.get("max_len", 1) < 1 or out.get("hidden_size", 1) < 1 or out.get("num_layers", 1) < 1:
        raise UsageError("--seq-arg hidden_size, num_layers and max_len must be >= 1")
    return out


@dataclass(frozen=True)
class SeqFlags:
    """The ``--seq-*`` flags of one ``medkit train`` call."""

    reader: str
    embeddings: bool = False
    from_run: Path | None = None
    aux_loss: list[str] | None = None
    seq_mask: float = 0.0
    diversity: float = 0.0
    recipe: Path | None = None
    stages: list[str] | None = None
    seq_arg: list[str] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SeqFlags:
        """The flags from ``ctx.params`` of ``medkit train``."""
        return cls(
            params["seq_model"],
            bool(params.get("seq_embeddings")),
            params.get("from_run"),
            params.get("aux_loss"),
            float(params.get("seq_mask") or 0.0),
            float(params.get("diversity") or 0.0),
            params.get("seq_recipe"),
            params.get("seq_stage"),
            params.get("seq_arg"),
        )


def run_sequence(cfg: Any, params: Mapping[str, Any]) -> None:
    """Train the sequence model of ``cfg`` (the `TrainConfig` of the other flags) and print its stages.

    Args:
        cfg: The run configuration built from the other flags.
        params: Every parsed flag of ``medkit train`` by parameter name (``ctx.params``): the ``--seq-*`` flags,
            and ``--loss`` (None: ``asl`` for the main term), ``--batch-size`` (None: 4 series), ``--out`` (None:
            ``runs/<task>-seq_<reader>``), ``--fold`` and ``--json``.

    Raises:
        UsageError: Flags that do not combine (``--fold all``, ``--profile``, ``--context``, both a recipe and
            stages).
    """
    flags = SeqFlags.from_params(params)
    loss, batch_size, fold = params.get("loss"), params.get("batch_size"), params.get("fold")
    out_given, json_out = params.get("out") is not None, bool(params.get("json_out"))
    from medkit.engine.sequence import SeqOptions, SeqStage, fit_sequence, parse_stage, plan_seq_stages, read_recipe
    from medkit.losses.multitask import parse_term_weights
    from medkit.registries import SEQ_READERS

    reader = flags.reader
    SEQ_READERS.get(reader)  # a mistyped reader fails before any data is read
    if fold == "all":
        raise UsageError("--seq-model trains one fold at a time", hint="run it per --fold K")
    if cfg.profile:
        raise UsageError("--profile does not apply to --seq-model", hint="drop --profile")
    if cfg.task.context > 1:  # the reader sees every slice of a series already
        raise UsageError("--context does not combine with --seq-model", hint="drop --context, or --seq-model")
    unused = [flag for flag, on in (("--ema", cfg.ema), ("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)) if on]
    if unused:
        raise UsageError(f"{', '.join(unused)} do(es) not apply to --seq-model", hint=f"drop {', '.join(unused)}")
    if flags.recipe is not None and flags.stages:
        raise UsageError("give either --seq-recipe or --seq-stage, not both")
    if flags.embeddings and not (flags.from_run or cfg.weights):
        raise UsageError(
            "--seq-embeddings needs the CNN that embeds the slices",
            hint="pass --from-run RUN (a trained `medkit train ct` run) or --weights FILE",
        )
    task = cfg.task
    if batch_size is None:  # the preset's batch counts slices; here an item is a whole series
        task = task.with_(batch_size=4)
    weights = {"main": 1.0, **parse_term_weights(flags.aux_loss)}
    base = SeqStage(
        "main",
        task.epochs,
        task.lr,
        task.optimizer,
        task.weight_decay,
        task.scheduler,
        weights,
        flags.seq_mask,
        flags.diversity,
    )
    items = read_recipe(flags.recipe) if flags.recipe is not None else [parse_stage(s) for s in flags.stages or []]
    out = cfg.out if out_given else str(Path("runs") / f"{task.name}-seq_{reader}")
    cfg = replace(cfg, task=task, out=out)
    opts = SeqOptions(
        reader=reader,
        stages=plan_seq_stages(base, items),
        cached=flags.embeddings,
        from_run=str(flags.from_run) if flags.from_run else None,
        loss=loss or "asl",
        **_seq_args(flags.seq_arg),
    )
    results = fit_sequence(cfg, opts)
    _print(results, task.metric, json_out)


def _print(results: list[Any], metric: str, json_out: bool) -> None:
    from rich.table import Table

    from medkit.console import out, print_json

    if json_out:
        print_json(
            {
                "stages": [
                    {
                        "run_dir": str(r.run_dir),
                        "best": r.best_metric,
                        "best_epoch": r.best_epoch,
                        "epochs": r.epochs_done,
                    }
                    for r in results
                ],
                "metric": metric,
            }
        )
        return
    table = Table(title="medkit train: sequence model")
    table.add_column("stage run")
    table.add_column(f"best {metric}", justify="right")
    table.add_column("epoch", justify="right")
    for r in results:
        table.add_row(str(r.run_dir), f"{r.best_metric:.4f}", str(r.best_epoch))
    out.print(table)

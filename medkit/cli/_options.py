"""Options shared by several commands, declared once: one help text, one meaning and one ``MEDKIT_*`` variable.

The same flag means the same thing in every command: ``--data`` is the image root (or one archive),
``--labels`` the dataset table (one row per image), ``--label-cols`` the label columns of that table,
``--image-col`` its image column, ``--folds`` a fold table written by ``medkit split``, and ``--workers`` the
processes that decode files (every core by default). Options a single command owns stay in its module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from medkit.device import DEVICE_HELP

__all__ = [
    "CliState",
    "DeviceOpt",
    "SeedOpt",
    "FoldOpt",
    "OutOpt",
    "JsonOpt",
    "WorkersOpt",
    "DataOpt",
    "LabelsOpt",
    "LabelColsOpt",
    "ImageColOpt",
    "FoldsOpt",
    "AmpOpt",
    "AmpDtypeOpt",
    "FeedOpt",
    "device_spec",
    "precision",
    "split_columns",
]


@dataclass
class CliState:
    """Global options resolved by the app callback (``ctx.obj``), read by the commands.

    Attributes:
        device: The global ``--device`` (None: not given).
        config: The ``--config`` file, if any.
        config_data: Its parsed tables.
    """

    device: str | None = None
    config: Path | None = None
    config_data: dict[str, Any] = field(default_factory=dict)


DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help=f"Compute device: {DEVICE_HELP}.", envvar="MEDKIT_DEVICE", show_default=False),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (runs are reproducible for a seed).", envvar="MEDKIT_SEED")
]
FoldOpt = Annotated[
    str | None,
    typer.Option("--fold", help="Validation fold: an integer, or 'all' to train every fold.", envvar="MEDKIT_FOLD"),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output path (file or folder).", envvar="MEDKIT_OUT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.", envvar=None)]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        help="Processes decoding files (default: every core; 0 = in this process).",
        envvar="MEDKIT_WORKERS",
        min=0,
    ),
]
DataOpt = Annotated[
    Path,
    typer.Option("--data", help="Image folder (paths in the table are relative to it), or a MedMNIST .npz."),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option("--labels", "-l", help="Dataset table (CSV, TSV, parquet), one row per image.", dir_okay=False),
]
LabelColsOpt = Annotated[
    str | None,
    typer.Option("--label-cols", help="Comma-separated label columns of the table (default: detected)."),
]
ImageColOpt = Annotated[
    str | None,
    typer.Option("--image-col", help="Image path/id column of the table (default: detected)."),
]
FoldsOpt = Annotated[
    Path | None,
    typer.Option("--folds", help="Fold table from `medkit split` (joined on the image column).", dir_okay=False),
]

AmpOpt = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="Mixed precision (bf16, or fp16 + GradScaler). Default: on a GPU, off on a CPU; --amp forces it "
        "(bf16 on a CPU), --no-amp switches it off.",
        show_default=False,
    ),
]
AmpDtypeOpt = Annotated[str, typer.Option("--amp-dtype", help="auto | bf16 | fp16: the mixed-precision dtype.")]
FeedOpt = Annotated[
    str,
    typer.Option(
        "--feed",
        help="How batches reach the model: auto (by size) | device (cache in GPU memory) | pinned (cache in "
        "pinned RAM) | stream (rows read from the cache) | workers (DataLoader; files without --cache).",
    ),
]


def _state(ctx: typer.Context | None) -> CliState:
    root = ctx.find_root() if ctx is not None else None
    obj = getattr(root, "obj", None)
    return obj if isinstance(obj, CliState) else CliState()


def device_spec(ctx: typer.Context | None, local: str | None) -> str:
    """The device spec in force: the command's own ``--device``, else the global one, else ``auto``."""
    return local or _state(ctx).device or "auto"


def split_columns(text: str | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ``("a", "b")`` (None stays None): how every ``--label-cols`` value is read."""
    if text is None:
        return None
    cols = tuple(c.strip() for c in text.split(",") if c.strip())
    return cols or None


def precision(amp: bool | None, dtype: str) -> str:
    """``TrainConfig.amp`` from ``--amp/--no-amp`` and ``--amp-dtype``: left unset, mixed precision follows the
    device (``auto``: on a GPU, off on a CPU) unless a dtype is named; ``--amp`` forces it, ``--no-amp`` is off."""
    if amp is False:
        return "off"
    if dtype != "auto":
        return dtype
    return "on" if amp else "auto"

"""Options shared by several commands, declared once (help text and ``MEDKIT_*`` environment variable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medkit.device import DEVICE_HELP

__all__ = ["DeviceOpt", "SeedOpt", "FoldOpt", "OutOpt", "JsonOpt", "WorkersOpt", "QuietOpt", "device_spec"]

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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-j", help="Worker processes (default: every core).", envvar="MEDKIT_WORKERS", min=0),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.", envvar="MEDKIT_QUIET")
]


def device_spec(local: str | None) -> str:
    """The device spec in force: the command's own ``--device``, else the global one, else ``auto``."""
    from medkit.cli._state import STATE

    return local or STATE.get("device") or "auto"

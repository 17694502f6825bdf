"""The one place medkit talks to the terminal.

``console`` writes to stderr (progress, logs, warnings, errors); ``out`` writes results to stdout, so
``medkit ... --json | jq`` works. ``progress()`` draws a rich bar on a terminal and, when stderr is not a
terminal (CI logs, nohup), prints a plain line at most every few seconds instead of redrawing. ``--quiet``
silences both bars and info messages; warnings and errors still show.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

__all__ = [
    "console",
    "out",
    "set_verbosity",
    "is_quiet",
    "verbosity",
    "info",
    "debug",
    "warn",
    "error",
    "print_json",
    "print_table",
    "progress",
    "Progress",
]

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)

_state: dict[str, Any] = {"quiet": False, "verbose": 0}

PIPED_TABLE_WIDTH = 100


def print_table(table: Any) -> None:
    """Print a rich table on stdout: the terminal's width, or 100 columns when piped (fits a pager or a file)."""
    out.print(table, width=None if out.is_terminal else PIPED_TABLE_WIDTH)


def set_verbosity(quiet: bool = False, verbose: int = 0) -> None:
    """Set the global verbosity (called once by the CLI entry point)."""
    _state["quiet"] = bool(quiet)
    _state["verbose"] = int(verbose)


def is_quiet() -> bool:
    """Whether ``--quiet`` is in force."""
    return bool(_state["quiet"])


def verbosity() -> int:
    """The ``--verbose`` count (0 by default)."""
    return int(_state["verbose"])


def info(message: str) -> None:
    """An informational line on stderr, hidden by ``--quiet``."""
    if not _state["quiet"]:
        console.print(message, soft_wrap=True)


def debug(message: str) -> None:
    """A detail shown only with ``--verbose``."""
    if _state["verbose"] > 0 and not _state["quiet"]:
        console.print(f"[dim]{message}[/dim]", soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr (shown even with ``--quiet``)."""
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def error(message: str, hint: str | None = None) -> None:
    """An error message on stderr, with an optional hint line."""
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    if hint:
        console.print(f"  [cyan]hint:[/cyan] {escape(hint)}", soft_wrap=True)


def print_json(data: Any) -> None:
    """Results as JSON on stdout (plain text, no colour, one document)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars alike (tolist of a scalar is the Python scalar)
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _fmt_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class Progress:
    """A progress bar that stays readable everywhere.

    Args:
        total: Number of steps, or None when unknown.
        description: Text before the bar.
        unit: Unit name for the rate (``"img"`` shows img/s).
        interval: Seconds between plain lines when stderr is not a terminal.
        enabled: False draws nothing at all (for DDP ranks other than 0, or callers that asked for silence).
    """

    def __init__(
        self,
        total: int | None = None,
        description: str = "",
        unit: str = "it",
        interval: float = 10.0,
        enabled: bool = True,
    ):
        self.total = total
        self.description = description
        self.unit = unit
        self.interval = interval
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_line = 0.0
        self._rich: Any = None
        self._task: Any = None
        self._enabled = enabled and not _state["quiet"]
        self._tty = console.is_terminal and os.environ.get("MEDKIT_PLAIN_PROGRESS", "") == ""

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        if self._enabled and self._tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=console,
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, extra="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        elif self._enabled and exc[0] is None:
            self._plain_line(final=True)

    @property
    def rate(self) -> float:
        """Steps per second since the start."""
        elapsed = time.perf_counter() - self._start
        return self.completed / elapsed if elapsed > 0 else 0.0

    def update(self, advance: int = 1, **fields: Any) -> None:
        """Advance by ``advance`` steps and set the fields shown after the bar (loss=..., auc=...)."""
        self.completed += advance
        self.fields.update(fields)
        if not self._enabled:
            return
        if self._rich is not None:
            extra = _fmt_fields({**self.fields, f"{self.unit}/s": round(self.rate, 1)})
            self._rich.update(self._task, advance=advance, extra=extra)
        else:
            now = time.perf_counter()
            # The last step is printed once, by __exit__ ("... done").
            if now - self._last_line >= self.interval and self.completed != self.total:
                self._plain_line()

    def _plain_line(self, final: bool = False) -> None:
        self._last_line = time.perf_counter()
        done = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        extra = _fmt_fields({**self.fields, f"{self.unit}/s": round(self.rate, 1)})
        tail = " done" if final else ""
        line = f"{self.description}: {done}{pct} {extra}{tail}".rstrip()
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    description: str = "",
    unit: str = "it",
) -> Iterator[T]:
    """Iterate with a progress bar (rich on a terminal, plain lines otherwise, nothing with ``--quiet``)."""
    if iterable is None:
        raise TypeError("progress() needs an iterable; use Progress(...) for manual updates")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total=total, description=description, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)

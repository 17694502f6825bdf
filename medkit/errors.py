"""Typed errors with a hint for the user; the CLI entry point turns them into a message and an exit code.

This module imports neither torch nor typer.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "MedkitError",
    "UsageError",
    "ConfigError",
    "DataError",
    "UnknownNameError",
    "DeviceError",
    "OfflineError",
    "ImageReadError",
    "Interrupted",
    "did_you_mean",
]


class MedkitError(Exception):
    """Base of every error medkit raises on purpose.

    Args:
        message: What went wrong, naming the file or value involved.
        hint: How to fix it (one sentence), shown under the message.
        exit_code: Process exit code when this reaches the CLI (2 = usage, configuration or runtime error).
    """

    exit_code: int = 2

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to a mistyped ``name``, or ``""`` when none is close.

    ``prefix`` is put before the suggestion (``timm/`` for a name looked up inside the ``timm/`` namespace).

    The one place medkit builds its "did you mean" suggestions (registry names, config keys, columns, windows,
    finding kinds), so they all read alike.
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


class UsageError(MedkitError):
    """A flag, option or argument combination that cannot work."""


class ConfigError(MedkitError):
    """A configuration file or environment variable that cannot be used."""


class DataError(MedkitError):
    """An input file or table that cannot be read or is inconsistent."""


class UnknownNameError(MedkitError, KeyError):
    """A registry lookup of a name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return MedkitError.__str__(self)


class DeviceError(MedkitError):
    """A requested compute device that is not available."""


class OfflineError(MedkitError):
    """Something had to be downloaded (pretrained weights, a dataset) and the network is unreachable."""


class ImageReadError(DataError):
    """A file that cannot be read as an image (empty, truncated, unsupported or too large)."""


class Interrupted(MedkitError):
    """Work stopped before the end (Ctrl-C, or ``--max-steps`` in training); what was done is saved to resume."""

    exit_code = 130

"""Typed errors with a hint for the user; the CLI entry point turns them into a message and an exit code.

This module imports neither torch nor typer.
"""

from __future__ import annotations

__all__ = [
    "MedkitError",
    "UsageError",
    "ConfigError",
    "DataError",
    "UnknownNameError",
    "DeviceError",
    "OfflineError",
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

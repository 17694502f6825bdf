"""`medkit train` (being built)."""

from __future__ import annotations

from medkit.errors import MedkitError


def train() -> None:
    """Not available yet."""
    raise MedkitError("medkit train is not available in this build yet")

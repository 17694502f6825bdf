"""`medkit inspect` (being built)."""

from __future__ import annotations

from medkit.errors import MedkitError


def inspect() -> None:
    """Not available yet."""
    raise MedkitError("medkit inspect is not available in this build yet")

"""`medkit tile` (being built)."""

from __future__ import annotations

from medkit.errors import MedkitError


def tile() -> None:
    """Not available yet."""
    raise MedkitError("medkit tile is not available in this build yet")

"""`medkit split` (being built)."""

from __future__ import annotations

from medkit.errors import MedkitError


def split() -> None:
    """Not available yet."""
    raise MedkitError("medkit split is not available in this build yet")

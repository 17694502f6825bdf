"""`medkit audit` (being built)."""

from __future__ import annotations

from medkit.errors import MedkitError


def audit() -> None:
    """Not available yet."""
    raise MedkitError("medkit audit is not available in this build yet")

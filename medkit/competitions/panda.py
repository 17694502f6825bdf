"""Prostate cANcer graDe Assessment (PANDA, 2020): the ``train.csv`` layout and the preset.

This module imports nothing heavy: `from_panda` takes a pandas DataFrame but does not import pandas.
"""

from __future__ import annotations

from typing import Any

from medkit.competitions._base import Competition
from medkit.errors import DataError
from medkit.registries import COMPETITIONS

__all__ = ["PANDA_COLUMNS", "from_panda", "panda"]

# The columns from_panda needs; gleason_score (and anything else) is carried along.
PANDA_COLUMNS: tuple[str, ...] = ("image_id", "data_provider", "isup_grade")


def from_panda(df: Any) -> Any:
    """PANDA ``train.csv`` to the convention: ``image`` from image_id; isup_grade, data_provider, gleason kept.

    Args:
        df: The competition's ``train.csv`` (pandas DataFrame).

    Returns:
        The table with ``image_id`` renamed to ``image``.

    Raises:
        DataError: When ``image_id``, ``data_provider`` or ``isup_grade`` is missing.
    """
    missing = [c for c in PANDA_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"PANDA table lacks columns: {', '.join(missing)}", hint="pass the competition's train.csv")
    return df.rename(columns={"image_id": "image"})


@COMPETITIONS.register("panda", task="wsi", submission="code", aliases=("prostate-cancer-grade-assessment",))
def panda() -> Competition:
    """Prostate cANcer graDe Assessment (2020): ISUP grade 0-5 from biopsy slides, quadratic weighted kappa."""
    return Competition(
        name="panda",
        slug="prostate-cancer-grade-assessment",
        title="Prostate cANcer graDe Assessment (PANDA) Challenge",
        task="wsi",
        id_column="image_id",
        target_columns=("isup_grade",),
        metric="qwk",
        submission="code",
    )

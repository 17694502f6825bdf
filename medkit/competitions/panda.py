"""Prostate cANcer graDe Assessment (PANDA, 2020): the ``train.csv`` layout and the preset.

This module imports nothing heavy: `from_panda` takes a pandas DataFrame but does not import pandas.
"""

from __future__ import annotations

from typing import Any

from medkit.competitions._base import Competition, Values
from medkit.errors import DataError
from medkit.registries import COMPETITIONS

__all__ = ["PANDA_COLUMNS", "ISUP_GRADES", "from_panda", "gleason_to_isup", "panda"]

# The columns from_panda needs; gleason_score (and anything else) is carried along.
PANDA_COLUMNS: tuple[str, ...] = ("image_id", "data_provider", "isup_grade")
#: ISUP grade groups 0 (no cancer) to 5.
ISUP_GRADES = Values("integer", 0, 5)
# ISUP grade group of each Gleason pattern pair (primary, secondary) that PANDA uses.
_ISUP_OF_GLEASON: dict[tuple[int, int], int] = {
    (0, 0): 0,
    (3, 3): 1,
    (3, 4): 2,
    (4, 3): 3,
    (4, 4): 4,
    (3, 5): 4,
    (5, 3): 4,
    (4, 5): 5,
    (5, 4): 5,
    (5, 5): 5,
}


def gleason_to_isup(score: str | tuple[int, int]) -> int:
    """ISUP grade group of a Gleason score: ``"3+4"`` -> 2.

    ``0+0`` and ``negative`` (how the two PANDA providers write a benign slide) give 0; 3+3 gives 1, 3+4 2, 4+3
    3, 4+4 / 3+5 / 5+3 4, and 4+5 / 5+4 / 5+5 5.

    Args:
        score: ``"primary+secondary"`` (spaces allowed), ``"negative"``, or a ``(primary, secondary)`` pair.

    Raises:
        DataError: A score that is not one of the above.
    """
    if isinstance(score, str):
        text = score.strip().lower()
        if text == "negative":
            return 0
        parts = text.replace(" ", "").split("+")
        try:
            pair = (int(parts[0]), int(parts[1])) if len(parts) == 2 else None
        except ValueError:
            pair = None
    else:
        pair = (int(score[0]), int(score[1])) if len(score) == 2 else None
    if pair not in _ISUP_OF_GLEASON:
        raise DataError(
            f"'{score}' is not a Gleason score PANDA uses",
            hint="write it as primary+secondary with patterns 3-5 (e.g. 3+4), or 0+0 / negative for benign",
        )
    return _ISUP_OF_GLEASON[pair]


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
        values=ISUP_GRADES,
        id_pattern=r"^[0-9a-f]{32}$",
        test_dir="test_images",
        test_table="test.csv",
    )

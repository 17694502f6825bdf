"""RANZCR CLiP (2021): catheter and line position on chest X-rays; the 11 labels, their 4 groups and the preset.

This module imports nothing heavy: `from_ranzcr` takes a pandas DataFrame but does not import pandas.
"""

from __future__ import annotations

from typing import Any

from medkit.competitions._base import Competition
from medkit.errors import DataError
from medkit.registries import COMPETITIONS

__all__ = ["RANZCR_LABELS", "RANZCR_GROUPS", "from_ranzcr", "ranzcr"]

RANZCR_LABELS: tuple[str, ...] = (
    "ETT - Abnormal",
    "ETT - Borderline",
    "ETT - Normal",
    "NGT - Abnormal",
    "NGT - Borderline",
    "NGT - Incompletely Imaged",
    "NGT - Normal",
    "CVC - Abnormal",
    "CVC - Borderline",
    "CVC - Normal",
    "Swan Ganz Catheter Present",
)
# One model head per group (--heads groups); detect_spec attaches them to a table with all 11 columns.
RANZCR_GROUPS: dict[str, tuple[str, ...]] = {
    "ETT": RANZCR_LABELS[0:3],
    "NGT": RANZCR_LABELS[3:7],
    "CVC": RANZCR_LABELS[7:10],
    "SwanGanz": RANZCR_LABELS[10:11],
}


def from_ranzcr(df: Any) -> Any:
    """RANZCR CLiP ``train.csv`` to the convention: ``image`` from StudyInstanceUID, ``patient_id`` from PatientID.

    Args:
        df: The competition's ``train.csv`` (pandas DataFrame).

    Returns:
        A table with ``image``, the 11 label columns and ``patient_id``.

    Raises:
        DataError: When a competition column is missing.
    """
    missing = [c for c in ("StudyInstanceUID", "PatientID", *RANZCR_LABELS) if c not in df.columns]
    if missing:
        raise DataError(f"RANZCR table lacks columns: {', '.join(missing)}", hint="pass the competition's train.csv")
    return df.rename(columns={"StudyInstanceUID": "image", "PatientID": "patient_id"})[
        ["image", *RANZCR_LABELS, "patient_id"]
    ]


@COMPETITIONS.register("ranzcr", task="cxr", submission="code", aliases=("ranzcr-clip-catheter-line-classification",))
def ranzcr() -> Competition:
    """RANZCR CLiP (2021): catheter and line position on chest X-rays, 11 labels in 4 groups, mean column AUC."""
    return Competition(
        name="ranzcr",
        slug="ranzcr-clip-catheter-line-classification",
        title="RANZCR CLiP - Catheter and Line Position Challenge",
        task="cxr",
        id_column="StudyInstanceUID",
        target_columns=RANZCR_LABELS,
        metric="auc",
        submission="code",
        label_groups=dict(RANZCR_GROUPS),
        id_pattern=r"^[0-9]+(\.[0-9]+)+$",  # a DICOM UID
        test_dir="test",
    )

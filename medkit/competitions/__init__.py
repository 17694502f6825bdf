"""Kaggle competition presets (COMPETITIONS registry): slug, id/target columns, metric and submission layout.

A preset is data, not code: `medkit submit` (to come) and `medkit train --competition` read it to know which
columns a submission needs, which metric scores it, and whether the competition takes a file or a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medkit.data.table import RANZCR_LABELS, RSNA_SUBTYPES
from medkit.registries import COMPETITIONS

__all__ = ["Competition"]


@dataclass(frozen=True)
class Competition:
    """What medkit needs to know about one Kaggle competition.

    Attributes:
        name: Registry name.
        slug: The Kaggle competition slug (``kaggle competitions submit -c <slug>``).
        title: Human-readable title.
        task: The medkit task preset that fits the data.
        id_column: Submission id column.
        target_columns: Submission target columns, in order.
        metric: METRICS name of the competition metric.
        submission: ``"file"`` (upload a CSV) or ``"code"`` (submit a notebook that writes the CSV).
        long_format: Whether the submission has one row per (image, label) with ids ``<image>_<label>``.
        label_groups: Named groups of target columns (one model head per group).
    """

    name: str
    slug: str
    title: str
    task: str
    id_column: str
    target_columns: tuple[str, ...]
    metric: str
    submission: str = "file"
    long_format: bool = False
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)


@COMPETITIONS.register("rsna", task="ct", submission="file", aliases=("rsna-intracranial-hemorrhage-detection",))
def rsna() -> Competition:
    """RSNA Intracranial Hemorrhage Detection (2019): 5 subtypes + any, weighted multi-label log loss."""
    return Competition(
        name="rsna",
        slug="rsna-intracranial-hemorrhage-detection",
        title="RSNA Intracranial Hemorrhage Detection",
        task="ct",
        id_column="ID",
        target_columns=RSNA_SUBTYPES,
        metric="rsna_logloss",
        submission="file",
        long_format=True,
    )


@COMPETITIONS.register("ranzcr", task="cxr", submission="code", aliases=("ranzcr-clip-catheter-line-classification",))
def ranzcr() -> Competition:
    """RANZCR CLiP (2021): catheter and line position on chest X-rays, 11 labels in 4 groups, mean column AUC."""
    from medkit.data.table import RANZCR_GROUPS

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
    )


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

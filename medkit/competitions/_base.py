"""The `Competition` record: what medkit needs to know about one Kaggle competition.

This module imports nothing heavy (no pandas, numpy or torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

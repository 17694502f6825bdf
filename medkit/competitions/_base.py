"""The `Competition` record: what medkit needs to know about one Kaggle competition.

A preset is data: the submission layout (id column, target columns, wide or long), what each target column holds
(`Values`), the metric, whether Kaggle takes a file or a notebook, and where the test data lies inside the
competition's files. Two optional hooks cover what data cannot say: ``id_rule`` (an image id from the predictions
to the submission's id) and ``writer`` (a whole custom predictions -> submission conversion, for a plugin whose
layout is neither wide nor long). `medkit.submit` turns predictions into a submission with these.

This module imports nothing heavy (no pandas, numpy or torch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from medkit.errors import UnknownNameError, UsageError, did_you_mean

__all__ = [
    "Values",
    "PROBABILITY",
    "ANY_NUMBER",
    "Competition",
    "IMAGE_SUFFIXES",
    "image_stem",
    "generic_competition",
    "resolve_competition",
]

#: File suffixes stripped from an image path to get its id (``test/ID_0a1b.dcm`` -> ``ID_0a1b``). Only these:
#: a DICOM UID (``1.2.826.0.1.3680043.8.498.12``) has dots that are not a suffix.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy", ".npz", ".gz", ".nii"}
)


@dataclass(frozen=True)
class Values:
    """What every target column of a submission holds.

    Attributes:
        kind: ``"probability"`` (a float in [low, high]), ``"integer"`` (a whole number in [low, high], such as an
            ISUP grade) or ``"number"`` (any finite number).
        low: Smallest allowed value.
        high: Largest allowed value.
    """

    kind: str = "probability"
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("probability", "integer", "number"):
            raise UsageError(f"unknown submission value kind '{self.kind}'", hint="probability, integer or number")
        if self.low > self.high:
            raise UsageError(f"submission value range [{self.low}, {self.high}] is empty")

    def describe(self) -> str:
        """``"probability in [0, 1]"``, ``"integer in [0, 5]"`` or ``"finite number"``."""
        if self.kind == "number" and math.isinf(self.low) and math.isinf(self.high):
            return "finite number"
        return f"{self.kind} in [{self.low:g}, {self.high:g}]"


PROBABILITY = Values("probability", 0.0, 1.0)
ANY_NUMBER = Values("number", -math.inf, math.inf)


def image_stem(image: str) -> str:
    """The id of an image named by a path: folder and a known image suffix removed (`IMAGE_SUFFIXES`).

    ``stage_2_test/ID_0fbf6a978.dcm`` -> ``ID_0fbf6a978``; ``test/1.2.826.0.1.3680043.8.498.1.jpg`` ->
    ``1.2.826.0.1.3680043.8.498.1``; ``ISIC_0052060`` stays.
    """
    name = PurePosixPath(str(image).replace("\\", "/")).name
    while True:
        stem, dot, suffix = name.rpartition(".")
        if not dot or not stem or f".{suffix.lower()}" not in IMAGE_SUFFIXES:
            return name
        name = stem


@dataclass(frozen=True)
class Competition:
    """What medkit needs to know about one Kaggle competition.

    Attributes:
        name: Registry name.
        slug: The Kaggle competition slug (``kaggle competitions submit -c <slug>``).
        title: Human-readable title.
        task: The medkit task preset that fits the data (empty for a bare slug).
        id_column: Submission id column.
        target_columns: Submission target columns, in order; for a long layout, the label suffixes of the ids.
        metric: METRICS name of the competition metric (empty when medkit has none for it).
        submission: ``"file"`` (upload a CSV) or ``"code"`` (submit a notebook that writes the CSV).
        long_format: One row per (image, label) with ids ``<image>_<label>`` and one value column.
        label_groups: Named groups of target columns (one model head per group).
        value_column: The value column of a long layout (``Label`` for RSNA).
        values: What every target column holds (probability in [0, 1], integer grade 0..5, ...).
        clip_eps: Probabilities are clipped to ``[clip_eps, 1 - clip_eps]`` before writing (log-loss metrics,
            where a confident 0 or 1 that is wrong costs without bound); 0 = no clipping.
        id_pattern: Regular expression every submission id matches (checked when there is no sample
            submission to compare with); empty = not checked.
        id_rule: Turns an ``image`` of the predictions into the image's submission id; None = `image_stem`.
        writer: ``writer(competition, predictions, sample) -> submission`` (pandas DataFrames; ``sample`` may be
            None) replacing the wide / long conversion of `medkit.submit`; None = the built-in one.
        sample_file: The sample submission inside the competition's files.
        test_dir: The test images inside the competition's files (what a code-competition notebook predicts).
        test_table: A table of the test images inside the competition's files, if there is one.
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
    value_column: str = "Label"
    values: Values = PROBABILITY
    clip_eps: float = 0.0
    id_pattern: str = ""
    id_rule: Callable[[str], str] | None = None
    writer: Callable[[Competition, Any, Any], Any] | None = None
    sample_file: str = "sample_submission.csv"
    test_dir: str = "test"
    test_table: str = ""

    def __post_init__(self) -> None:
        if self.submission not in ("file", "code"):
            raise UsageError(f"competition '{self.name}': submission must be 'file' or 'code', not '{self.submission}'")
        if not 0.0 <= self.clip_eps < 0.5:
            raise UsageError(f"competition '{self.name}': clip_eps must lie in [0, 0.5), got {self.clip_eps}")

    @property
    def code(self) -> bool:
        """Whether Kaggle takes only a notebook (code competition)."""
        return self.submission == "code"

    @property
    def columns(self) -> tuple[str, ...]:
        """The submission header: ``(id, value)`` for a long layout, ``(id, *targets)`` for a wide one."""
        if self.long_format:
            return (self.id_column, self.value_column)
        return (self.id_column, *self.target_columns)

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The columns that hold values (checked against `values`)."""
        return (self.value_column,) if self.long_format else tuple(self.target_columns)

    def image_id(self, image: str) -> str:
        """The submission id of an image named in the predictions (`id_rule`, else `image_stem`)."""
        return (self.id_rule or image_stem)(str(image))

    def with_layout(self, columns: Sequence[str]) -> Competition:
        """This competition with the wide layout of a sample submission: its first column is the id, the rest
        the targets, in the sample's order.

        Raises:
            DataError: A long-format competition whose sample lacks its id or value column, or a preset whose
                sample lacks one of its target columns or adds another.
        """
        from medkit.errors import DataError

        columns = tuple(str(c) for c in columns)
        if len(columns) < 2:
            raise DataError(
                f"a sample submission needs an id column and at least one target column, got {list(columns)}",
                hint="pass the competition's sample_submission.csv to --sample",
            )
        if self.long_format:
            if columns != self.columns:
                raise DataError(
                    f"sample submission columns {list(columns)} are not {list(self.columns)} ({self.name})",
                    hint=f"pass the {self.name} sample submission ({self.sample_file})",
                )
            return self
        if self.target_columns and set(columns[1:]) != set(self.target_columns):
            missing = [c for c in self.target_columns if c not in columns[1:]]
            extra = [c for c in columns[1:] if c not in self.target_columns]
            raise DataError(
                f"sample submission does not fit {self.name}: missing {missing or 'nothing'}, extra {extra or 'none'}",
                hint=f"pass the {self.name} sample submission ({self.sample_file}), or use the bare slug",
            )
        if self.target_columns and columns[0] != self.id_column:
            raise DataError(
                f"sample submission id column is '{columns[0]}', {self.name} uses '{self.id_column}'",
                hint=f"pass the {self.name} sample submission ({self.sample_file})",
            )
        return replace(self, id_column=columns[0], target_columns=columns[1:])


_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,79}$")


def generic_competition(slug: str) -> Competition:
    """A competition medkit has no preset for, reached by its Kaggle slug: a file competition whose layout comes
    from a sample submission (`Competition.with_layout`), values any finite number.

    Raises:
        UsageError: A name that cannot be a Kaggle slug.
    """
    if not _SLUG.match(slug):
        raise UsageError(
            f"'{slug}' is neither a competition preset nor a Kaggle slug",
            hint="a slug is the lowercase name in the competition's URL, e.g. rsna-intracranial-hemorrhage-detection",
        )
    return Competition(
        name=slug, slug=slug, title=slug, task="", id_column="", target_columns=(), metric="", values=ANY_NUMBER
    )


def resolve_competition(name: str) -> Competition:
    """The preset registered as ``name`` (a short name or a slug alias, plugins included), else a bare slug
    (`generic_competition`).

    A name that is one typo away from a preset is an error with a suggestion rather than a bare slug.

    Raises:
        UnknownNameError: A near miss of a preset name.
        UsageError: A name that is neither a preset nor a slug.
    """
    from medkit.registries import COMPETITIONS

    if name in COMPETITIONS:
        return COMPETITIONS.create(name)
    guess = did_you_mean(name, COMPETITIONS.names(), cutoff=0.8)
    if guess:
        raise UnknownNameError(
            f"unknown competition '{name}'{guess}",
            hint="run `medkit list competitions`; a Kaggle slug medkit has no preset for also works with --sample",
        )
    return generic_competition(name)

"""Checking a submission before anything is sent: ids, columns, values; clipping of log-loss probabilities.

`validate_submission` never raises on a bad submission: it returns a `ValidationReport` listing every problem
with its count and first examples, so one run shows everything that is wrong. pandas and numpy load inside the
functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medkit.competitions import Competition

__all__ = ["Problem", "ValidationReport", "validate_submission", "clip_probabilities", "EXAMPLES"]

#: How many offending ids or values a problem quotes.
EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """One thing that makes a submission invalid.

    Attributes:
        check: Short name of the check (``missing_ids``, ``duplicate_ids``, ``columns``, ``out_of_range``, ...).
        message: What is wrong, in a sentence.
        count: How many rows (or columns) it affects.
        examples: The first few offending ids or values.
    """

    check: str
    message: str
    count: int = 1
    examples: tuple[str, ...] = ()


@dataclass
class ValidationReport:
    """The result of checking a submission.

    Attributes:
        competition: Registry name (or slug) of the competition.
        rows: Rows of the submission.
        columns: Its header.
        expected_rows: Rows the sample submission has (None without a sample).
        problems: Everything that makes it invalid; empty when it is valid.
        notes: Things worth knowing that do not make it invalid (clipped values, predictions left out).
        clipped: Probabilities moved into ``[eps, 1 - eps]``.
    """

    competition: str
    rows: int
    columns: tuple[str, ...]
    expected_rows: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    clipped: int = 0

    @property
    def ok(self) -> bool:
        """Whether the submission may be sent."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "competition": self.competition,
            "valid": self.ok,
            "rows": self.rows,
            "expected_rows": self.expected_rows,
            "columns": list(self.columns),
            "problems": [
                {"check": p.check, "message": p.message, "count": p.count, "examples": list(p.examples)}
                for p in self.problems
            ],
            "notes": list(self.notes),
            "clipped": self.clipped,
        }


def _first(values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in list(values)[:EXAMPLES])


def clip_probabilities(frame: Any, columns: Sequence[str], eps: float) -> tuple[Any, int]:
    """Clip the finite probabilities of ``columns`` to ``[eps, 1 - eps]``.

    Values outside [0, 1], missing or infinite values are left alone: they are errors for `validate_submission`
    to report, not rounding to hide.

    Returns:
        ``(clipped copy, number of values moved)``.
    """
    import numpy as np

    out = frame.copy()
    moved = 0
    if eps <= 0:
        return out, 0
    for col in columns:
        if col not in out.columns or out[col].dtype.kind not in "fiu":
            continue
        values = out[col].to_numpy(dtype=np.float64)
        inside = np.isfinite(values) & (values >= 0) & (values <= 1)
        clipped = np.where(inside, np.clip(values, eps, 1 - eps), values)
        moved += int((clipped != values)[inside].sum())
        out[col] = clipped
    return out, moved


def validate_submission(frame: Any, competition: Competition, sample: Any = None) -> ValidationReport:
    """Check a submission against the competition (and its sample submission, when given).

    Checks: the header is exactly the competition's (or the sample's) columns in order; ids are present, unique
    and, with a sample, exactly the sample's ids (none missing, none extra, same row count); without a sample,
    ids match the competition's id pattern and a long layout has every label of every image; every value is a
    finite number of the competition's kind and range.

    Args:
        frame: The submission (pandas DataFrame).
        competition: Its competition, with the layout of the sample when there is one.
        sample: The sample submission (pandas DataFrame) or None.

    Returns:
        The report; ``report.ok`` is False when anything is wrong.
    """
    expected = tuple(sample.columns) if sample is not None else competition.columns
    report = ValidationReport(
        competition=competition.name,
        rows=len(frame),
        columns=tuple(str(c) for c in frame.columns),
        expected_rows=len(sample) if sample is not None else None,
    )
    if report.columns != tuple(expected):
        missing = [c for c in expected if c not in report.columns]
        extra = [c for c in report.columns if c not in expected]
        detail = f"missing {missing}" if missing else ""
        detail += ("; " if detail and extra else "") + (f"unexpected {extra}" if extra else "")
        report.problems.append(
            Problem(
                "columns",
                f"header is {list(report.columns)}, expected {list(expected)} ({detail or 'wrong order'})",
                count=len(missing) + len(extra) or 1,
            )
        )
    id_col = expected[0]
    if id_col in frame.columns:
        report.problems += _id_problems(frame, competition, id_col, sample)
    for col in competition.value_columns:
        if col in frame.columns:
            report.problems += _value_problems(frame, col, competition, id_col)
    return report


def _id_problems(frame: Any, competition: Competition, id_col: str, sample: Any) -> list[Problem]:
    problems: list[Problem] = []
    raw = frame[id_col]
    empty = raw.isna() | (raw.astype(str).str.strip() == "")
    if empty.any():
        problems.append(Problem("empty_ids", f"{int(empty.sum())} rows have no id", int(empty.sum())))
    ids = raw[~empty].astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        extra_rows = int(ids.duplicated().sum())
        problems.append(
            Problem(
                "duplicate_ids",
                f"{dup.nunique()} ids appear more than once ({extra_rows} extra rows)",
                extra_rows,
                _first(dup.drop_duplicates()),
            )
        )
    if sample is not None:
        problems += _against_sample(ids, frame, sample, id_col)
        return problems
    if competition.id_pattern:
        pattern = re.compile(competition.id_pattern)
        bad = ids[~ids.map(lambda s: bool(pattern.match(s)))]
        if len(bad):
            problems.append(
                Problem("id_format", f"{len(bad)} ids do not look like {competition.name} ids", len(bad), _first(bad))
            )
    if competition.long_format:
        problems += _incomplete_images(ids, competition)
    return problems


def _against_sample(ids: Any, frame: Any, sample: Any, id_col: str) -> list[Problem]:
    problems: list[Problem] = []
    want = sample[id_col].astype(str)
    have = set(ids)
    missing = want[~want.isin(have)]
    if len(missing):
        problems.append(
            Problem(
                "missing_ids",
                f"{len(missing)} ids of the sample submission are missing",
                len(missing),
                _first(missing),
            )
        )
    extra = ids[~ids.isin(set(want))]
    if len(extra):
        problems.append(
            Problem("extra_ids", f"{len(extra)} ids are not in the sample submission", len(extra), _first(extra))
        )
    if len(frame) != len(sample):
        problems.append(
            Problem(
                "row_count",
                f"{len(frame)} rows, the sample submission has {len(sample)}",
                abs(len(frame) - len(sample)),
            )
        )
    return problems


def _incomplete_images(ids: Any, competition: Competition) -> list[Problem]:
    """A long layout without a sample: every image needs one row per label, and no other suffix."""
    labels = set(competition.target_columns)
    parts = ids.str.rsplit("_", n=1)
    image, label = parts.str[0], parts.str[-1]
    unknown = ids[~label.isin(labels)]
    problems = []
    if len(unknown):
        problems.append(
            Problem(
                "unknown_labels",
                f"{len(unknown)} ids end in none of {', '.join(competition.target_columns)}",
                len(unknown),
                _first(unknown),
            )
        )
    known = label.isin(labels)
    counts = image[known].groupby(image[known]).size()
    short = counts[counts < len(labels)]
    if len(short):
        problems.append(
            Problem(
                "incomplete_images",
                f"{len(short)} images lack some of their {len(labels)} label rows",
                len(short),
                _first(short.index),
            )
        )
    return problems


def _value_problems(frame: Any, col: str, competition: Competition, id_col: str) -> list[Problem]:
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(frame[col], errors="coerce")
    ids = frame[id_col].astype(str) if id_col in frame.columns else pd.Series(range(len(frame))).astype(str)
    problems: list[Problem] = []

    def add(check: str, what: str, mask: Any) -> None:
        n = int(mask.sum())
        if n:
            shown = [f"{i}: {v}" for i, v in zip(ids[mask], frame[col][mask], strict=True)]
            problems.append(Problem(check, f"column '{col}': {n} {what}", n, _first(shown)))

    add("not_numeric", "values are not numbers", values.isna() & frame[col].notna())
    add("missing_values", "values are missing (NaN)", frame[col].isna())
    arr = values.to_numpy(dtype=np.float64)
    add("infinite_values", "values are infinite", pd.Series(np.isinf(arr), index=frame.index))
    spec = competition.values
    finite = np.isfinite(arr)
    out = finite & ((arr < spec.low) | (arr > spec.high))
    add("out_of_range", f"values are outside [{spec.low:g}, {spec.high:g}]", pd.Series(out, index=frame.index))
    if spec.kind == "integer":
        frac = finite & ~out & (arr != np.round(arr))
        add("not_integer", "values are not whole numbers", pd.Series(frac, index=frame.index))
    return problems

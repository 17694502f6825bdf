"""Building the file that is sent: read the input and the sample, convert, clip, validate, write.

The input is either a prediction table (``image`` + ``<label>_prob`` / ``grade`` columns, from `medkit predict` or
`medkit ensemble`) or a submission already in the competition's layout, which is checked as it is. The file is
always written (atomically), also when it is invalid, so it can be inspected; only a valid one may be sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkit.competitions import Competition
from medkit.errors import DataError, UsageError, did_you_mean
from medkit.submit._validate import EXAMPLES, Problem, ValidationReport, clip_probabilities, validate_submission
from medkit.submit._write import to_submission

__all__ = ["PreparedSubmission", "prepare_submission", "read_sample", "read_input"]


@dataclass
class PreparedSubmission:
    """A submission written to disk and checked.

    Attributes:
        competition: The competition, with the sample's layout when there was one.
        path: The file written.
        report: The validation report (``report.ok``: it may be sent).
        source: ``"predictions"`` (converted from a prediction table) or ``"submission"`` (checked as given).
        frame: The submission (pandas DataFrame).
    """

    competition: Competition
    path: Path
    report: ValidationReport
    source: str
    frame: Any


def _read_csv(path: Path, what: str, id_col: str | None = None) -> Any:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: no such {what}", hint="check the path")
    try:
        header = pd.read_csv(path, nrows=0)
        first = id_col if id_col in header.columns else (str(header.columns[0]) if len(header.columns) else None)
        return pd.read_csv(path, dtype={first: str} if first else None, keep_default_na=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})", hint=f"pass the {what} as a CSV file") from exc


def read_sample(path: str | os.PathLike[str], competition: Competition) -> tuple[Any, Competition]:
    """Read a sample submission and adapt the competition to its layout.

    Returns:
        ``(sample, competition with the sample's columns)``.

    Raises:
        DataError: An unreadable sample, or one that does not fit the competition.
    """
    path = Path(path)
    sample = _read_csv(path, "sample submission", competition.id_column or None)
    try:
        return sample, competition.with_layout(list(sample.columns))
    except DataError as exc:
        raise DataError(f"{path}: {exc.message}", hint=exc.hint) from None


def read_input(path: str | os.PathLike[str], competition: Competition) -> tuple[Any, str]:
    """Read what is to be submitted: a prediction table, or a submission in the competition's layout.

    Returns:
        ``(frame, "predictions" | "submission")``.

    Raises:
        DataError: An unreadable file, a prediction table that breaks the convention (see
            `medkit.data.predictions.read_predictions`), or a table that is neither.
    """
    import pandas as pd

    from medkit.data.predictions import PROB_SUFFIX, read_predictions

    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise DataError(f"{path}: no such file", hint="pass the preds.csv that medkit predict or ensemble wrote")
    try:
        header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})", hint="pass a CSV file") from exc
    if "image" in header and (any(c.endswith(PROB_SUFFIX) for c in header) or "grade" in header):
        frame, _ = read_predictions(path)
        return frame, "predictions"
    if competition.columns and competition.columns[0] in header:
        return _read_csv(path, "submission", competition.columns[0]), "submission"
    raise DataError(
        f"{path}: neither a prediction table (image + <label>_prob columns) nor a {competition.name} submission "
        f"(columns {list(competition.columns)}); it has {header[:8]}",
        hint="pass what medkit predict or medkit ensemble wrote",
    )


def _needs_layout(competition: Competition) -> None:
    from medkit.registries import COMPETITIONS

    if competition.target_columns and competition.id_column:
        return
    raise UsageError(
        f"medkit has no preset for '{competition.slug}'{did_you_mean(competition.slug, COMPETITIONS.names())}: "
        "its submission layout is unknown",
        hint="pass the competition's sample submission with --sample (download it with --download)",
    )


def _tidy_integers(frame: Any, competition: Competition) -> Any:
    """Integer targets written as integers (``3``, not ``3.0``) when every value is a whole number."""
    import numpy as np

    if competition.values.kind != "integer":
        return frame
    frame = frame.copy()
    for col in competition.value_columns:
        if col in frame.columns and frame[col].dtype.kind == "f":
            values = frame[col].to_numpy()
            if np.isfinite(values).all() and (values == np.round(values)).all():
                frame[col] = values.astype(np.int64)
    return frame


def prepare_submission(
    input_path: str | os.PathLike[str],
    competition: Competition,
    out: str | os.PathLike[str],
    sample_path: str | os.PathLike[str] | None = None,
    clip_eps: float | None = None,
) -> PreparedSubmission:
    """Read predictions (or a ready submission), convert them to the competition's layout, clip, validate, write.

    Args:
        input_path: Prediction table or submission CSV.
        competition: The competition (a preset, or a bare slug with ``sample_path``).
        out: The submission file to write.
        sample_path: The competition's sample submission: ids, row order and column order to match.
        clip_eps: Clip probabilities to ``[eps, 1 - eps]`` (None: the competition's ``clip_eps``; 0: never).

    Returns:
        The written, checked submission.

    Raises:
        UsageError: ``out`` is the input file, or a bare slug without a sample.
        DataError: Unreadable inputs, or predictions that cannot feed the competition's columns.
    """
    from medkit._io import write_csv

    src, dst = Path(input_path), Path(out)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UsageError(f"--out {dst} is the input file", hint="write the submission to another file")
    sample = None
    if sample_path is not None:
        sample, competition = read_sample(sample_path, competition)
    _needs_layout(competition)
    frame, source = read_input(src, competition)
    left_out: list[str] = []
    unpredicted: list[str] = []
    if source == "predictions":
        converted = to_submission(competition, frame, sample, str(src))
        frame, left_out, unpredicted = converted.frame, converted.left_out, converted.unpredicted
    eps = competition.clip_eps if clip_eps is None else clip_eps
    clipped = 0
    if competition.values.kind == "probability" and eps > 0:
        frame, clipped = clip_probabilities(frame, competition.value_columns, eps)
    frame = _tidy_integers(frame, competition)
    report = validate_submission(frame, competition, sample)
    if unpredicted:
        n = len(unpredicted)
        what = f"{n} ids of the sample submission have no prediction (predict every test image)"
        report.problems.insert(0, Problem("missing_predictions", what, n, tuple(unpredicted[:EXAMPLES])))
    report.clipped = clipped
    if clipped:
        report.notes.append(f"{clipped} probabilities clipped to [{eps:g}, 1 - {eps:g}]")
    if left_out:
        report.notes.append(
            f"{len(left_out)} predicted images are not in the sample submission and were left out "
            f"(first: {', '.join(left_out[:3])})"
        )
    write_csv(dst, frame)
    return PreparedSubmission(competition, dst, report, source, frame)

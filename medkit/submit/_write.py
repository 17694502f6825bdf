"""Predictions to a competition's submission layout: wide (one row per image) or long (one row per image and label).

The input is a prediction table as `medkit predict` and `medkit ensemble` write it (`medkit.data.predictions`):
``image`` plus one ``<label>_prob`` column per label, and ``grade`` for ordinal and multiclass outputs. Each target
column of the competition is fed by ``<target>_prob`` (probabilities), or by ``grade`` (integer targets such as
the ISUP grade); a single probability column feeds a single target whatever its name. Image ids become
submission ids through the competition's `id_rule`. With a sample submission, rows follow the sample's order and
ids the predictions lack stay empty, for the validation to report. pandas loads inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medkit.competitions import Competition
from medkit.data.predictions import PROB_SUFFIX, label_of
from medkit.errors import DataError

__all__ = ["Converted", "to_submission", "target_sources"]


@dataclass
class Converted:
    """A submission built from predictions.

    Attributes:
        frame: The submission (pandas DataFrame) in the competition's layout.
        left_out: Predicted image ids that the sample submission does not have (not written).
        unpredicted: Ids of the sample submission that no prediction covers (written without a value).
    """

    frame: Any
    left_out: list[str] = field(default_factory=list)
    unpredicted: list[str] = field(default_factory=list)


def target_sources(competition: Competition, columns: list[str], where: str = "predictions") -> dict[str, str]:
    """Which prediction column feeds each target column of the competition.

    Args:
        competition: The competition (with the sample's layout when there is one).
        columns: The columns of the prediction table.
        where: The file, for messages.

    Raises:
        DataError: A target column no prediction column can feed.
    """
    probs = [c for c in columns if c.endswith(PROB_SUFFIX)]
    targets = list(competition.target_columns)
    if competition.values.kind == "integer":
        if len(targets) == 1 and "grade" in columns:
            return {targets[0]: "grade"}
        found = {t: t for t in targets if t in columns}
    else:
        found = {t: f"{t}{PROB_SUFFIX}" for t in targets if f"{t}{PROB_SUFFIX}" in columns}
        if not found and len(targets) == 1 and len(probs) == 1:
            found = {targets[0]: probs[0]}
    missing = [t for t in targets if t not in found]
    if missing:
        have = ", ".join(label_of(c) for c in probs) or "none"
        need = "'grade' (an ordinal or multiclass run)" if competition.values.kind == "integer" else "'<target>_prob'"
        raise DataError(
            f"{where}: nothing to write for {competition.name} column(s) {', '.join(missing)} "
            f"(probabilities for: {have})",
            hint=f"the predictions need {need} columns: train with `medkit train --competition {competition.name}`",
        )
    return found


def to_submission(competition: Competition, predictions: Any, sample: Any = None, where: str = "") -> Converted:
    """Convert a prediction table to the competition's submission layout.

    Args:
        competition: The competition, with the sample's layout when there is one (`Competition.with_layout`).
        predictions: The prediction table (pandas DataFrame).
        sample: The sample submission (pandas DataFrame) or None.
        where: The predictions file, for messages.

    Returns:
        The submission and the predicted ids it left out.

    Raises:
        DataError: A target column that nothing in the predictions feeds.
    """
    if competition.writer is not None:
        return Converted(competition.writer(competition, predictions, sample))
    sources = target_sources(competition, [str(c) for c in predictions.columns], where or "predictions")
    ids = predictions["image"].astype(str).map(competition.image_id)
    if competition.long_format:
        frame = _long(competition, ids, predictions, sources)
    else:
        frame = predictions[list(sources.values())].set_axis(list(sources), axis=1)
        frame.insert(0, competition.id_column, ids.to_numpy())
        frame = frame.reset_index(drop=True)
    if sample is None:
        return Converted(frame)
    return _like_sample(frame, sample, competition.columns[0])


def _long(competition: Competition, ids: Any, predictions: Any, sources: dict[str, str]) -> Any:
    """One row per (image, label), image-major, labels in the competition's order: ``<image id>_<label>``."""
    import numpy as np
    import pandas as pd

    labels = list(competition.target_columns)
    values = predictions[[sources[t] for t in labels]].to_numpy()
    images = np.repeat(ids.to_numpy().astype(str), len(labels)).astype(object)
    row_ids = images + "_" + np.tile(np.asarray(labels, dtype=object), len(ids))
    return pd.DataFrame({competition.id_column: row_ids, competition.value_column: values.reshape(-1)})


def _like_sample(frame: Any, sample: Any, id_col: str) -> Converted:
    """Rows in the sample's order (ids the predictions lack stay empty); predicted ids not in the sample go."""
    want = sample[[id_col]].astype(str)
    left_out = frame.loc[~frame[id_col].isin(set(want[id_col])), id_col].astype(str).tolist()
    unpredicted = want.loc[~want[id_col].isin(set(frame[id_col])), id_col].tolist()
    merged = want.merge(frame, on=id_col, how="left", sort=False)
    return Converted(merged[list(sample.columns)], left_out, unpredicted)

"""Validation of a submission, one test per kind of problem (count and first examples), and clipping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _factories import write_prediction_table

from medkit.competitions.rsna import RSNA_SUBTYPES
from medkit.errors import DataError, UsageError
from medkit.registries import COMPETITIONS
from medkit.submit import clip_probabilities, prepare_submission, validate_submission

SIIM = COMPETITIONS.create("siim-isic")
RSNA = COMPETITIONS.create("rsna")
PANDA = COMPETITIONS.create("panda")


def _siim(ids: list[str], target: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"image_name": ids, "target": target})


def _checks(report: object) -> dict[str, object]:
    return {p.check: p for p in report.problems}  # type: ignore[attr-defined]


def test_a_valid_submission_has_no_problems() -> None:
    report = validate_submission(_siim(["ISIC_0052060", "ISIC_0052349"], [0.1, 0.9]), SIIM)
    assert report.ok and report.rows == 2 and report.problems == []
    assert report.to_dict()["valid"] is True


def test_columns_must_be_exact_and_in_order() -> None:
    swapped = _siim(["ISIC_0052060"], [0.5])[["target", "image_name"]]
    (problem,) = validate_submission(swapped, SIIM).problems
    assert problem.check == "columns" and "wrong order" in problem.message
    extra = _siim(["ISIC_0052060"], [0.5]).assign(fold=0)
    problem = _checks(validate_submission(extra, SIIM))["columns"]
    assert "unexpected ['fold']" in problem.message
    missing = pd.DataFrame({"image_name": ["ISIC_0052060"]})
    assert "missing ['target']" in _checks(validate_submission(missing, SIIM))["columns"].message


def test_ids_must_be_present_unique_and_well_formed() -> None:
    frame = _siim(["ISIC_0052060", "ISIC_0052060", "ISIC_0052060", None, "0052349", "ISIC_7"], [0.5] * 6)
    found = _checks(validate_submission(frame, SIIM))
    assert found["duplicate_ids"].count == 2 and found["duplicate_ids"].examples == ("ISIC_0052060",)
    assert found["empty_ids"].count == 1
    assert found["id_format"].count == 2 and found["id_format"].examples == ("0052349", "ISIC_7")


def test_ids_must_match_the_sample_exactly() -> None:
    sample = _siim([f"ISIC_000000{i}" for i in range(8)], [0.0] * 8)
    frame = _siim([f"ISIC_000000{i}" for i in range(2, 8)] + ["ISIC_0000009"], [0.5] * 7)
    found = _checks(validate_submission(frame, SIIM, sample))
    assert found["missing_ids"].count == 2 and found["missing_ids"].examples == ("ISIC_0000000", "ISIC_0000001")
    assert found["extra_ids"].count == 1 and found["extra_ids"].examples == ("ISIC_0000009",)
    assert found["row_count"].message == "7 rows, the sample submission has 8"
    assert "id_format" not in found  # the sample, not the pattern, is the reference when there is one


def test_values_must_be_finite_numbers_in_range() -> None:
    ids = [f"ISIC_000000{i}" for i in range(6)]
    frame = _siim(ids, [0.5, np.nan, np.inf, 1.5, -0.1, "high"])
    found = _checks(validate_submission(frame, SIIM))
    assert found["missing_values"].examples == ("ISIC_0000001: nan",)
    assert found["infinite_values"].count == 1
    assert found["out_of_range"].count == 2 and found["out_of_range"].examples == (
        "ISIC_0000003: 1.5",
        "ISIC_0000004: -0.1",
    )
    assert found["not_numeric"].examples == ("ISIC_0000005: high",)


def test_grades_must_be_whole_numbers_from_0_to_5() -> None:
    ids = ["0005f7aaab2800f6170c399693a96917", "000920ad0b612851f8e01bcc880d9b3d", "0018ae58b01bdadc8e347995b69f99aa"]
    frame = pd.DataFrame({"image_id": ids, "isup_grade": [2.0, 2.5, 6]})
    found = _checks(validate_submission(frame, PANDA))
    assert found["not_integer"].count == 1 and found["out_of_range"].count == 1 and len(found) == 2


def test_long_layout_needs_every_label_of_every_image() -> None:
    ids = [f"ID_00000000a_{s}" for s in RSNA_SUBTYPES] + ["ID_00000000b_any", "ID_00000000b_bleed"]
    found = _checks(validate_submission(pd.DataFrame({"ID": ids, "Label": 0.5}), RSNA))
    assert found["incomplete_images"].examples == ("ID_00000000b",)
    assert found["unknown_labels"].examples == ("ID_00000000b_bleed",)
    assert found["id_format"].count == 1


def test_many_problems_quote_only_the_first_examples() -> None:
    frame = _siim([f"bad{i}" for i in range(50)], [0.5] * 50)
    problem = _checks(validate_submission(frame, SIIM))["id_format"]
    assert problem.count == 50 and problem.examples == ("bad0", "bad1", "bad2", "bad3", "bad4")


# ---------------------------------------------------------------------------------------------- clipping
def test_clipping_moves_only_finite_probabilities_and_counts_them() -> None:
    frame = pd.DataFrame({"p": [0.0, 1e-9, 0.5, 1.0, np.nan, 1.5], "q": [0.0] * 6})
    clipped, moved = clip_probabilities(frame, ["p"], 1e-3)
    assert clipped["p"].tolist()[:4] == [1e-3, 1e-3, 0.5, 1 - 1e-3] and moved == 3
    assert math.isnan(clipped["p"].iloc[4]) and clipped["p"].iloc[5] == 1.5  # errors stay for the validation
    assert clipped["q"].tolist() == [0.0] * 6 and frame["p"].iloc[0] == 0.0  # other columns and the input untouched
    assert clip_probabilities(frame, ["p"], 0)[1] == 0


# ---------------------------------------------------------------------------------------------- prepare
def test_a_ready_submission_is_checked_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    _siim(["ISIC_0052060", "ISIC_0052349"], [0.5, None]).to_csv(path, index=False)
    done = prepare_submission(path, SIIM, tmp_path / "out.csv")
    assert done.source == "submission" and not done.report.ok
    assert [p.check for p in done.report.problems] == ["missing_values"]
    assert (tmp_path / "out.csv").is_file()  # written also when invalid, to be inspected


def test_predictions_not_in_the_sample_are_left_out_with_a_note(tmp_path: Path) -> None:
    preds = write_prediction_table(tmp_path / "p.csv", ["ISIC_0052060", "ISIC_0052349", "ISIC_0099999"], ["target"])
    _siim(["ISIC_0052349", "ISIC_0052060"], [0.0, 0.0]).to_csv(tmp_path / "sample.csv", index=False)
    done = prepare_submission(preds, SIIM, tmp_path / "s.csv", sample_path=tmp_path / "sample.csv")
    assert done.report.ok and done.report.notes == [
        "1 predicted images are not in the sample submission and were left out (first: ISIC_0099999)"
    ]
    assert pd.read_csv(tmp_path / "s.csv")["image_name"].tolist() == ["ISIC_0052349", "ISIC_0052060"]


def test_missing_predictions_become_missing_ids(tmp_path: Path) -> None:
    preds = write_prediction_table(tmp_path / "p.csv", ["ISIC_0052060"], ["target"])
    _siim(["ISIC_0052060", "ISIC_0052349"], [0.0, 0.0]).to_csv(tmp_path / "sample.csv", index=False)
    done = prepare_submission(preds, SIIM, tmp_path / "s.csv", sample_path=tmp_path / "sample.csv")
    found = _checks(done.report)
    assert found["missing_predictions"].examples == ("ISIC_0052349",) and found["missing_values"].count == 1
    assert pd.read_csv(tmp_path / "s.csv")["image_name"].tolist() == ["ISIC_0052060", "ISIC_0052349"]


def test_input_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare_submission(tmp_path / "nope.csv", SIIM, tmp_path / "s.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="neither a prediction table"):
        prepare_submission(tmp_path / "other.csv", SIIM, tmp_path / "s.csv")
    with pytest.raises(UsageError, match="is the input file"):
        prepare_submission(tmp_path / "other.csv", SIIM, tmp_path / "other.csv")
    bad = pd.DataFrame({"image": ["ISIC_0052060"], "target_prob": [1.7]})
    bad.to_csv(tmp_path / "logits.csv", index=False)
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):  # the prediction-table convention's own check
        prepare_submission(tmp_path / "logits.csv", SIIM, tmp_path / "s.csv")

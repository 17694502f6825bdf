"""The prediction-table convention: what predict and ensemble write and what ensemble and submit read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medkit.data.predictions import (
    PredictionsMeta,
    label_of,
    oof_arrays,
    prob_columns,
    read_meta,
    read_predictions,
    sidecar_path,
    write_predictions,
)
from medkit.errors import DataError


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": ["a.png", "b.png", "c.png"],
            "patient_id": ["p1", "p1", "p2"],
            "any_prob": [0.1, 0.9, 0.5],
            "subdural_prob": [0.0, 1.0, 0.25],
        }
    )


def _meta() -> PredictionsMeta:
    return PredictionsMeta(target="multilabel", label_names=("any", "subdural"), metric="auc", task="ct")


def test_write_then_read_round_trips_table_and_sidecar(tmp_path) -> None:
    path = write_predictions(tmp_path / "preds.csv", _frame(), _meta())
    frame, meta = read_predictions(path)
    assert sidecar_path(path) == tmp_path / "preds.json"
    assert list(frame.columns) == ["image", "patient_id", "any_prob", "subdural_prob"]
    np.testing.assert_allclose(frame["subdural_prob"].to_numpy(), [0.0, 1.0, 0.25])
    assert meta == _meta()
    assert json.loads(sidecar_path(path).read_text())["kind"] == "medkit-predictions"


def test_table_without_sidecar_reads_with_no_meta(tmp_path) -> None:
    _frame().to_csv(tmp_path / "p.csv", index=False)
    frame, meta = read_predictions(tmp_path / "p.csv")
    assert meta is None and prob_columns(frame) == ["any_prob", "subdural_prob"]
    assert label_of("any_prob") == "any" and label_of("image") == "image"


def test_numeric_looking_ids_stay_strings(tmp_path) -> None:
    df = pd.DataFrame({"image": ["007", "010"], "x_prob": [0.2, 0.3]})
    df.to_csv(tmp_path / "p.csv", index=False)
    frame, _ = read_predictions(tmp_path / "p.csv")
    assert frame["image"].tolist() == ["007", "010"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns=["image"]), "no 'image' column"),
        (lambda d: d.assign(image=["a.png", "a.png", "c.png"]), "'a.png' appears 2 times"),
        (lambda d: d.assign(image=["a.png", None, "c.png"]), "1 rows have no image id"),
        (lambda d: d.drop(columns=["any_prob", "subdural_prob"]), "no probability columns"),
        (lambda d: d.assign(any_prob=[0.1, np.nan, 0.5]), "1 missing or infinite values (first: image 'b.png')"),
        (lambda d: d.assign(any_prob=[0.1, np.inf, 0.5]), "missing or infinite"),
        (lambda d: d.assign(subdural_prob=[0.0, 1.5, -2.0]), "2 values outside [0, 1] (image 'b.png': 1.5)"),
        (lambda d: d.assign(any_prob=["x", "y", "z"]), "'any_prob' is not numeric"),
    ],
)
def test_bad_tables_are_refused_naming_the_file_and_the_problem(tmp_path, change, message) -> None:
    path = tmp_path / "bad.csv"
    change(_frame()).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_predictions(path)
    assert str(path) in err.value.message and message in err.value.message
    assert err.value.hint


def test_write_refuses_a_bad_table_and_leaves_nothing(tmp_path) -> None:
    with pytest.raises(DataError, match="outside"):
        write_predictions(tmp_path / "p.csv", _frame().assign(any_prob=[2.0, 0.1, 0.1]), _meta())
    with pytest.raises(DataError, match="do not match the label names"):
        write_predictions(tmp_path / "p.csv", _frame(), PredictionsMeta("multilabel", ("subdural", "any")))
    assert list(tmp_path.iterdir()) == []


def test_sidecar_that_disagrees_with_the_table_is_an_error(tmp_path) -> None:
    path = write_predictions(tmp_path / "p.csv", _frame(), _meta())
    _frame().rename(columns={"any_prob": "edh_prob"}).to_csv(path, index=False)
    with pytest.raises(DataError, match="disagree with its sidecar"):
        read_predictions(path)
    sidecar_path(path).write_text('{"kind": "other"}')
    with pytest.raises(DataError, match="not a medkit prediction sidecar"):
        read_meta(path)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(DataError, match="unreadable sidecar"):
        read_meta(path)


def test_missing_file_and_run_folder(tmp_path) -> None:
    with pytest.raises(DataError, match="no such prediction file"):
        read_predictions(tmp_path / "nope.csv")
    (tmp_path / "run").mkdir()
    _frame().to_csv(tmp_path / "run" / "oof.csv", index=False)
    frame, _ = read_predictions(tmp_path / "run")  # a run folder means its oof.csv
    assert len(frame) == 3


def test_oof_arrays_for_each_target_kind() -> None:
    ml = pd.DataFrame({"image": ["a", "b"], "x": [1, 0], "y": [0, 1], "x_prob": [0.8, 0.1], "y_prob": [0.3, 0.6]})
    y, p = oof_arrays(ml, "multilabel")
    np.testing.assert_array_equal(y, [[1, 0], [0, 1]])
    np.testing.assert_allclose(p, [[0.8, 0.3], [0.1, 0.6]])
    binary = pd.DataFrame({"image": ["a", "b"], "label0": [1, 0], "label0_prob": [0.7, 0.2]})
    y, p = oof_arrays(binary, "binary")
    assert y.shape == (2,) and p.shape == (2, 1)
    ordinal = pd.DataFrame({"image": ["a"], "target": [3], ">0_prob": [0.9], ">1_prob": [0.8], ">2_prob": [0.6]})
    y, p = oof_arrays(ordinal, "ordinal")
    assert y.tolist() == [3] and p.shape == (1, 3)
    with pytest.raises(DataError, match="lacks target column"):
        oof_arrays(ml.drop(columns=["y"]), "multilabel")

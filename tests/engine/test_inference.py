"""`medkit.engine.inference`: fold averaging, out-of-fold reproduction, TTA end to end, neighbour aggregation and
ordinal grades against values computed separately."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.data.predictions import read_predictions
from medkit.engine.inference import PredictOptions, image_set, ordinal_cut_points, predict_runs, resolve_runs
from medkit.errors import DataError
from medkit.metrics import apply_thresholds, optimise_thresholds

runner = CliRunner()
LABELS = {"a": [i % 2 for i in range(24)], "b": [(i // 3) % 2 for i in range(24)]}


def _train(*args: str | Path) -> None:
    res = runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr


def _opts(tmp: Path, name: str, **kw: object) -> PredictOptions:
    return PredictOptions(out=tmp / f"{name}.csv", device="cpu", workers=0, **kw)


def _probs(path: Path, cols: list[str]) -> np.ndarray:
    return pd.read_csv(path)[cols].to_numpy(np.float64)


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A --fold all multilabel run (2 folds) over 24 random PNGs: (data root, run root)."""
    from _factories import png_table

    tmp = tmp_path_factory.mktemp("folds")
    table = png_table(tmp / "d", LABELS, 24)
    _train(
        "multilabel", "--data", tmp / "d", "--labels", table, "--fold", "all", "--model", "cnn_small",
        "--img-size", "32", "--batch-size", "5", "--epochs", "1", "--device", "cpu", "--workers", "0",
        "--out", tmp / "run",
    )  # fmt: skip
    return tmp / "d", tmp / "run"


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A binary cnn_small run on a synthetic MedMNIST archive: (archive, run)."""
    from _factories import synthetic_medmnist

    tmp = tmp_path_factory.mktemp("npz")
    npz = synthetic_medmnist(tmp / "m.npz", (40, 16, 16))
    _train("binary", "--data", npz, "--model", "cnn_small", "--epochs", "1", "--device", "cpu", "--out", tmp / "run")
    return npz, tmp / "run"


def test_fold_all_root_averages_its_folds(folds: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = folds
    assert resolve_runs([run]) == [run / "fold0", run / "fold1"]
    labels = root / "labels.csv"
    both = predict_runs([run], _opts(tmp_path, "both", data=root, labels=labels))
    one = [predict_runs([run / f"fold{k}"], _opts(tmp_path, f"f{k}", data=root, labels=labels)) for k in (0, 1)]
    cols = ["a_prob", "b_prob"]
    mean = (_probs(one[0].out, cols) + _probs(one[1].out, cols)) / 2
    np.testing.assert_allclose(_probs(both.out, cols), mean, atol=1e-6)
    assert np.abs(_probs(one[0].out, cols) - _probs(one[1].out, cols)).max() > 1e-4  # the folds differ
    frame, meta = read_predictions(both.out)
    assert frame["image"].tolist() == pd.read_csv(labels)["image"].tolist()
    assert list(frame.columns) == ["image", "patient_id", "a_prob", "b_prob"]
    assert meta.sources == (str((run / "fold0").resolve()), str((run / "fold1").resolve()))
    assert meta.target == "multilabel" and meta.metric == "auc" and meta.details["tta"] == ["identity"]


def test_predicting_a_runs_validation_images_reproduces_its_oof(folds: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = folds
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    table = pd.read_csv(root / "labels.csv").set_index("image").loc[oof["image"]].reset_index()
    table.to_csv(tmp_path / "val.csv", index=False)
    res = predict_runs([run / "fold0"], _opts(tmp_path, "val", data=root, labels=tmp_path / "val.csv"))
    cols = ["a_prob", "b_prob"]
    np.testing.assert_allclose(_probs(res.out, cols), oof[cols].to_numpy(np.float64), rtol=0, atol=1e-6)
    from medkit.engine.folds import oof_score

    assert res.score == pytest.approx(oof_score("auc", "multilabel", oof), abs=1e-6)


def test_archive_split_reproduces_the_oof_and_tta_is_the_mean_of_the_views(
    npz_run: tuple[Path, Path], tmp_path: Path
) -> None:
    npz, run = npz_run
    val = predict_runs([run], _opts(tmp_path, "val", data=npz, split="val"))
    oof = pd.read_csv(run / "oof.csv")
    assert val.frame["image"].tolist() == oof["image"].tolist() == [f"val/{i}" for i in range(16)]
    np.testing.assert_allclose(_probs(val.out, ["label0_prob"]), oof[["label0_prob"]], atol=1e-6)
    # --tta hflip = mean of the plain prediction and the prediction of a mirrored copy of the archive
    arrays = dict(np.load(npz))
    arrays["test_images"] = arrays["test_images"][:, :, ::-1].copy()
    np.savez(tmp_path / "mirrored.npz", **arrays)
    plain = predict_runs([run], _opts(tmp_path, "plain", data=npz))
    mirrored = predict_runs([run], _opts(tmp_path, "mirrored", data=tmp_path / "mirrored.npz"))
    tta = predict_runs([run], _opts(tmp_path, "tta", data=npz, tta="hflip"))
    cols = ["label0_prob"]
    np.testing.assert_allclose(
        _probs(tta.out, cols), (_probs(plain.out, cols) + _probs(mirrored.out, cols)) / 2, atol=1e-6
    )
    assert np.abs(_probs(plain.out, cols) - _probs(mirrored.out, cols)).max() > 1e-5
    assert tta.meta.details["split"] == "test" and plain.score is not None


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_neighbour_aggregation_combines_the_plain_logits(folds: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = folds
    table = pd.read_csv(root / "labels.csv")
    table["series_id"] = [f"s{i % 3}" for i in range(len(table))]
    table["slice_index"] = [(7 * i) % 11 for i in range(len(table))]
    table.to_csv(tmp_path / "ct.csv", index=False)
    kw = {"data": root, "labels": tmp_path / "ct.csv"}
    plain = predict_runs([run / "fold0"], _opts(tmp_path, "plain", **kw))
    agg = predict_runs([run / "fold0"], _opts(tmp_path, "agg", neighbours="0.2,0.6,0.2", **kw))
    assert list(agg.frame.columns) == ["image", "patient_id", "series", "order", "a_prob", "b_prob"]
    z = _logit(_probs(plain.out, ["a_prob", "b_prob"]))
    expected = np.empty_like(z)
    for s in ("s0", "s1", "s2"):
        rows = sorted(np.flatnonzero(table["series_id"] == s), key=lambda i: table["slice_index"][i])
        for p, i in enumerate(rows):
            before, after = rows[max(p - 1, 0)], rows[min(p + 1, len(rows) - 1)]
            expected[i] = 0.2 * z[before] + 0.6 * z[i] + 0.2 * z[after]
    np.testing.assert_allclose(_probs(agg.out, ["a_prob", "b_prob"]), 1 / (1 + np.exp(-expected)), atol=1e-5)
    assert agg.meta.details["neighbours"] == {str((run / "fold0").resolve()): [0.2, 0.6, 0.2]}


def _wsi_table(root: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(3)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"t{i}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "img" / f"t{i}_mask.png"), rng.integers(0, 6, (40, 40), dtype=np.uint8))
        rows.append({"image": f"img/t{i}.png", "mask": f"img/t{i}_mask.png", "isup_grade": i % 6, "fold": i % 2})
    pd.DataFrame(rows).to_csv(root / "tiles.csv", index=False)
    return root / "tiles.csv"


def test_ordinal_runs_write_the_grade_cut_at_points_fitted_on_their_oof(tmp_path: Path) -> None:
    table = _wsi_table(tmp_path / "d")
    run = tmp_path / "run"
    _train(
        "wsi", "--data", tmp_path / "d", "--labels", table, "--fold", "0", "--model", "cnn_small", "--img-size",
        "32", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--out", run,
    )  # fmt: skip
    assert json.loads((run / "run.json").read_text())["mask_col"] == "mask"
    res = predict_runs([run], _opts(tmp_path, "grades", data=tmp_path / "d", labels=table))
    cols = [f">{k}_prob" for k in range(5)]
    assert list(res.frame.columns) == ["image", *cols, "grade"]
    oof = pd.read_csv(run / "oof.csv")
    cuts = optimise_thresholds(oof["target"].to_numpy(), oof[cols].to_numpy(np.float64).sum(axis=1), 6)
    assert res.meta.cut_points == pytest.approx(tuple(cuts))
    assert ordinal_cut_points([run], 6)[0] == pytest.approx(tuple(cuts))
    expected = apply_thresholds(_probs(res.out, cols).sum(axis=1), cuts)
    np.testing.assert_array_equal(pd.read_csv(res.out)["grade"].to_numpy(), expected)
    assert "QWK-optimised" in res.meta.details["cut_points_from"]
    (run / "oof.csv").unlink()
    assert ordinal_cut_points([run], 6) == ((0.5, 1.5, 2.5, 3.5, 4.5), "rounding (no oof.csv)")
    with pytest.raises(DataError, match="has no column 'mask'"):
        pd.read_csv(table).drop(columns="mask").to_csv(tmp_path / "nomask.csv", index=False)
        predict_runs([run], _opts(tmp_path, "x", data=tmp_path / "d", labels=tmp_path / "nomask.csv"))


def test_a_folder_without_a_table_predicts_every_image_by_relative_path(tmp_path: Path) -> None:
    for rel in ("b/2.png", "a/1.png", "c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    images = image_set(tmp_path)
    assert images.ids == ["a/1.png", "b/2.png", "c.png"]
    assert images.paths == [tmp_path / "a/1.png", tmp_path / "b/2.png", tmp_path / "c.png"]
    assert images.name == tmp_path.name and images.columns == {}


def test_a_table_split_column_selects_rows_and_carries_the_id_columns(tmp_path: Path) -> None:
    rows = []
    for i, split in enumerate(["train", "valid", "test", "test", "Validation"]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((8, 8), np.uint8))
        rows.append({"image": f"{i}.png", "split": split, "PatientID": 100 + i, "SeriesInstanceUID": "s", "z": i})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    assert image_set(tmp_path, tmp_path / "t.csv", split="test").ids == ["2.png", "3.png"]
    val = image_set(tmp_path, tmp_path / "t.csv", split="val")
    assert val.ids == ["1.png", "4.png"]  # 'valid' and 'validation' are validation rows, as in training
    assert val.columns == {"patient_id": ["101", "104"], "series": ["s", "s"], "order": [1, 4]}
    assert val.name == "t" and image_set(tmp_path, tmp_path / "t.csv").ids == [f"{i}.png" for i in range(5)]
    with pytest.raises(DataError, match="no rows with split == 'dev'"):
        image_set(tmp_path, tmp_path / "t.csv", split="dev")
    pd.DataFrame(rows + rows[:1]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataError, match="image '0.png' appears 2 times"):
        image_set(tmp_path, tmp_path / "dup.csv")

"""`medkit predict`: the table `medkit submit` reads, fold averaging, Grad-CAM files, JSON, and the errors."""

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

runner = CliRunner()


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, [*map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two binary runs on one synthetic archive (different seeds), and a multilabel run on a PNG table."""
    from _factories import png_table, synthetic_medmnist

    tmp = tmp_path_factory.mktemp("runs")
    npz = synthetic_medmnist(tmp / "m.npz", (40, 16, 16))
    out = {"npz": npz, "root": tmp / "d"}
    for seed in (0, 1):
        res = _invoke(
            "train", "binary", "--data", npz, "--model", "cnn_small", "--epochs", "1", "--seed", seed,
            "--device", "cpu", "--out", tmp / f"bin{seed}",
        )  # fmt: skip
        assert res.exit_code == 0, res.stderr
        out[f"bin{seed}"] = tmp / f"bin{seed}"
    table = png_table(tmp / "d", {"a": [i % 2 for i in range(16)], "b": [(i // 3) % 2 for i in range(16)]}, 16)
    res = _invoke(
        "train", "multilabel", "--data", tmp / "d", "--labels", table, "--fold", "0", "--model", "cnn_small",
        "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--out", tmp / "ml",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    out["ml"], out["table"] = tmp / "ml", table
    return out


def test_predict_an_archive_split_into_the_runs_predictions_folder(runs: dict[str, Path]) -> None:
    res = _invoke("predict", runs["bin0"], "--data", runs["npz"], "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    path = runs["bin0"] / "predictions" / "test.csv"
    assert f"wrote {path}" in res.stdout and "auc: " in res.stdout
    assert "img/s" in res.stderr and "1 run(s) x 1 view(s)" in res.stderr
    frame, meta = read_predictions(path)
    assert list(frame.columns) == ["image", "label0_prob"]
    assert frame["image"].tolist() == [f"test/{i}" for i in range(16)]
    assert meta is not None and meta.target == "binary" and meta.label_names == ("label0",)


def test_two_runs_are_averaged_and_json_reports_the_score(runs: dict[str, Path], tmp_path: Path) -> None:
    singles = []
    for k in (0, 1):
        res = _invoke("predict", runs[f"bin{k}"], "--data", runs["npz"], "--out", tmp_path / f"p{k}.csv")
        assert res.exit_code == 0, res.stderr
        singles.append(pd.read_csv(tmp_path / f"p{k}.csv")["label0_prob"].to_numpy())
    res = _invoke("predict", runs["bin0"], runs["bin1"], "--data", runs["npz"], "--out", tmp_path / "m.csv", "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["rows"] == 16 and record["metric"] == "auc" and 0.0 <= record["score"] <= 1.0
    assert record["runs"] == [str(runs["bin0"]), str(runs["bin1"])] and record["views"] == ["identity"]
    got = pd.read_csv(tmp_path / "m.csv")["label0_prob"].to_numpy()
    np.testing.assert_allclose(got, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert np.abs(singles[0] - singles[1]).max() > 1e-4


def test_grad_cam_writes_overlays_and_a_contact_sheet(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    res = _invoke(
        "predict", runs["ml"], "--data", runs["root"], "--labels", runs["table"], "--cam", "4", "--out", out,
        "--tta", "hflip,vflip",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    files = sorted((tmp_path / "preds_cam").iterdir())
    assert len(files) == 5 and files[-1].name == "contact_sheet.png"
    assert "Grad-CAM: 4 overlay(s)" in res.stdout
    tile = cv2.imread(str(files[0]))
    assert tile.shape == (224 + 44, 2 * 224 + 4, 3)
    sheet = cv2.imread(str(files[-1]))
    assert sheet.shape[1] == 4 * tile.shape[1] + 5 * 8  # four tiles in a row with gaps
    frame, meta = read_predictions(out)
    assert list(frame.columns) == ["image", "patient_id", "a_prob", "b_prob"]
    assert meta.details["tta"] == ["identity", "hflip", "vflip"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tta", "hfilp"], "unknown TTA transform 'hfilp' (did you mean 'hflip'?)"),
        (["--neighbours", "0.25,0.5,0.25"], "neighbour aggregation needs the series and slice order"),
        (["--neighbours", "0.5,0.5"], "odd count"),
        (["--split", "dev"], "no 'dev' split"),
    ],
)
def test_option_errors_exit_2_with_a_hint(
    runs: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    res = _invoke("predict", runs["bin0"], "--data", runs["npz"], "--out", tmp_path / "p.csv", *extra)
    assert res.exit_code == 2
    assert message in " ".join(res.stderr.split()) and "hint:" in res.stderr
    assert res.stdout == "" and not (tmp_path / "p.csv").exists()


def test_missing_runs_and_runs_that_disagree_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("predict", tmp_path / "nope", "--data", runs["npz"])
    assert res.exit_code == 2 and "run folder not found" in res.stderr
    (tmp_path / "empty").mkdir()
    res = _invoke("predict", tmp_path / "empty", "--data", runs["npz"])
    assert res.exit_code == 2 and "no trained run here" in res.stderr
    res = _invoke("predict", runs["ml"], runs["bin0"], "--data", runs["root"], "--labels", runs["table"])
    assert res.exit_code == 2
    assert "runs predict different things" in " ".join(res.stderr.split())
    res = _invoke("predict", runs["bin0"], "--data", runs["root"], "--labels", runs["table"])
    assert res.exit_code == 2 and "trained on archive images" in res.stderr


def test_every_feed_gives_the_same_predictions_and_says_which_it_used(runs: dict[str, Path], tmp_path: Path) -> None:
    probs = {}
    for feed in ("workers", "pinned", "device"):
        out = tmp_path / f"{feed}.csv"
        res = _invoke("predict", runs["bin0"], "--data", runs["npz"], "--device", "cpu", "--no-amp", "--feed", feed,
                      "--out", out)  # fmt: skip
        assert res.exit_code == 0, res.stderr
        assert f"feed: {feed}" in res.stderr
        probs[feed] = read_predictions(out)[0]["label0_prob"].to_numpy()
    np.testing.assert_array_equal(probs["pinned"], probs["workers"])
    np.testing.assert_array_equal(probs["device"], probs["workers"])
    res = _invoke("predict", runs["bin0"], "--data", runs["npz"], "--feed", "gpu", "--out", tmp_path / "x.csv")
    assert res.exit_code == 2 and "gpu" in res.stderr

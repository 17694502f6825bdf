"""A reloadable run: the run spec in run.json and the checkpoints, `load_run`, and predictions that agree with the
out-of-fold table to the last digit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.data.dataset import Split
from medkit.engine.feed import make_feeder
from medkit.engine.predict import gather, predict
from medkit.engine.runtime import Runtime
from medkit.engine.spec import RunSpec, load_run
from medkit.errors import DataError

runner = CliRunner()
CPU = Runtime(torch.device("cpu"))


def _train(*args: str | Path) -> object:
    res = runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return res


def _predict_files(run: Path, root: Path, images: list[str]) -> np.ndarray:
    """Predict image files through `load_run`, the way `medkit predict` will: a source of the files prepared as
    in training, fed in the run's batch size."""
    model, inputs = load_run(run)
    source = inputs.file_source([root / p for p in images])
    split = Split(source, np.arange(len(images)), np.zeros((len(images), 0), np.float32), list(images))
    feed = make_feeder(split, inputs.spec.batch_size, CPU, train=False)
    preds = gather(predict(model, feed, CPU, inputs.target, inputs.transforms.eval), CPU.dist, split)
    assert preds.ids == images
    return preds.probs


def test_oof_and_a_later_predict_of_the_same_files_agree_exactly(tmp_path: Path, png_table_writer) -> None:  # noqa: ANN001
    table = png_table_writer(
        tmp_path / "d", {"a": [i % 2 for i in range(24)], "b": [(i // 3) % 2 for i in range(24)]}, 24
    )
    run = tmp_path / "run"
    _train(
        "multilabel", "--data", tmp_path / "d", "--labels", table, "--fold", "0", "--model", "cnn_small",
        "--img-size", "32", "--batch-size", "5", "--epochs", "2", "--device", "cpu", "--workers", "0",
        "--out", run,
    )  # fmt: skip
    oof = pd.read_csv(run / "oof.csv")
    probs = _predict_files(run, tmp_path / "d", oof["image"].tolist())
    np.testing.assert_array_equal(probs.astype(np.float32), oof[["a_prob", "b_prob"]].to_numpy(np.float32))
    spec = RunSpec.from_dict(json.loads((run / "run.json").read_text())["spec"])
    assert spec.model.name == "cnn_small" and spec.model.kwargs == {"num_classes": 2, "in_chans": 1}
    assert spec.preprocess["size"] == [32, 32] and spec.label_names == ("a", "b") and spec.target == "multilabel"
    assert spec == RunSpec.from_dict(torch.load(run / "checkpoints" / "best.pt", weights_only=False)["spec"])


def test_load_run_rebuilds_ema_weights_and_ordinal_heads(tmp_path: Path, png_table_writer) -> None:  # noqa: ANN001
    grades = [i % 4 for i in range(20)]
    table = png_table_writer(tmp_path / "d", {"isup_grade": grades}, 20, rgb=True)
    run = tmp_path / "run"
    _train(
        "wsi", "--data", tmp_path / "d", "--labels", table, "--fold", "1", "--model", "cnn_small", "--img-size",
        "32", "--batch-size", "4", "--epochs", "1", "--ema", "--ema-decay", "0.5", "--device", "cpu", "--out", run,
    )  # fmt: skip
    loaded = load_run(run)
    assert loaded.inputs.spec.model.kwargs["head"] == "ordinal" and loaded.inputs.spec.ema
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], ema[k]) for k in got)
    assert not all(torch.equal(got[k], state["model"][k]) for k in got if got[k].is_floating_point())
    oof = pd.read_csv(run / "oof.csv")
    probs = _predict_files(run, tmp_path / "d", oof["image"].tolist())
    cols = [c for c in oof.columns if c.endswith("_prob")]
    assert len(cols) == 5  # the wsi preset has 6 ISUP grades: 5 cumulative "grade > k" outputs
    np.testing.assert_array_equal(probs.astype(np.float32), oof[cols].to_numpy(np.float32))


def test_medmnist_run_records_no_file_preprocessing(tmp_path: Path, medmnist_writer) -> None:  # noqa: ANN001
    npz = medmnist_writer(tmp_path / "m.npz", (24, 8, 8))
    run = tmp_path / "run"
    _train("binary", "--data", npz, "--model", "cnn_small", "--epochs", "1", "--device", "cpu", "--out", run)
    model, inputs = load_run(run)
    assert inputs.preprocess is None and inputs.spec.img_size == 28
    with pytest.raises(DataError, match="archive images"):
        inputs.file_source([tmp_path / "x.png"])
    x = torch.from_numpy(np.load(npz)["val_images"][:8]).unsqueeze(1)
    with torch.no_grad():
        probs = torch.sigmoid(model(inputs.transforms.eval(x))).numpy()
    oof = pd.read_csv(run / "oof.csv")
    np.testing.assert_array_equal(probs[:, 0].astype(np.float32), oof["label0_prob"].to_numpy(np.float32)[:8])


def test_load_run_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found"):
        load_run(tmp_path / "nothing")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}}, tmp_path / "old" / "checkpoints" / "best.pt")
    with pytest.raises(DataError, match="no run spec"):
        load_run(tmp_path / "old")

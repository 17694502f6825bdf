"""What a run directory holds at the end: the pictures, the results in run.json, a weights-only best.pt, and
last.pt kept or dropped (``--keep-last/--no-keep-last``; ``--fold all`` drops it by default)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()
FAST = ["--model", "cnn_small", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
PICTURES = {f"plots/{s}_{p}.png" for s in ("val", "test") for p in ("roc", "pr", "calibration", "confusion")}


def train(*args: str | Path) -> object:
    return runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)


def files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def multiclass_npz(path: Path, counts: tuple[int, ...] = (30, 15, 15), classes: int = 3) -> Path:
    """A MedMNIST-layout archive whose class is the image's brightness band."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        y = np.arange(n) % classes
        base = 40 + 80 * y[:, None, None]
        arrays[f"{split}_images"] = np.clip(base + rng.normal(0, 15, (n, 28, 28)), 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_a_binary_run_writes_pictures_results_and_a_weights_only_best(tmp_path: Path, medmnist_writer) -> None:  # noqa: ANN001
    from medkit.engine.spec import load_run

    npz = medmnist_writer(tmp_path / "breastmnist.npz", (24, 16, 16))
    out = tmp_path / "run"
    res = train("binary", "--data", npz, *FAST, "--epochs", "2", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert "best epoch" in res.stdout and "total steps" in res.stdout
    assert "val_auc=" in res.stderr  # the progress line names the split of the metric
    assert PICTURES | {"curve.png", "checkpoints/best.pt", "checkpoints/last.pt"} <= files(out)
    record = json.loads((out / "run.json").read_text())
    assert "argv" in record and "argv" not in record["config"]  # argv once
    results = record["results"]
    assert results["finished"] and results["device"] == "cpu" and results["precision"] == "fp32"
    assert results["metric"] == "auc" and results["best_epoch"] in (1, 2) and results["total_steps"] == 6
    assert results["best"] == pytest.approx(results["validation"]["auc"], abs=1e-6)
    assert results["label_meaning"] == {"label0": "1 = normal, benign; 0 = malignant"}  # named after the file
    test = json.loads((out / "test.json").read_text())
    assert results["test"] == test and test["n"] == 16
    assert {"auc", "acc", "acc_at_threshold", "threshold"} <= set(test)
    assert test["threshold"] == results["decision"]["threshold"] == results["validation"]["threshold"]
    assert set(results["pictures"]) == PICTURES | {"curve.png"}
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)  # no pickled objects inside
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert best["weights_only"] and "optimizer" not in best and "rng" not in best and best["spec"]
    assert "optimizer" in last and last["finished"]
    assert all(torch.equal(best["model"][k], v) for k, v in load_run(out).model.state_dict().items())


def test_no_keep_last_drops_last_pt_and_the_run_stays_finished(tmp_path: Path, medmnist_writer) -> None:  # noqa: ANN001
    npz = medmnist_writer(tmp_path / "m.npz", (16, 8, 8))
    out = tmp_path / "run"
    assert train("binary", "--data", npz, *FAST, "--epochs", "1", "--no-keep-last", "--out", out).exit_code == 0
    assert not (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").is_file()
    for extra in ((), ("--resume",)):  # neither a new run over it nor a resume
        res = runner.invoke(app, ["train", "binary", "--data", str(npz), *FAST, "--out", str(out), *extra])
        assert res.exit_code == 2 and "already finished training" in res.stderr


def test_fold_all_drops_last_pt_by_default_and_draws_the_joined_oof(tmp_path: Path, png_table_writer) -> None:  # noqa: ANN001
    table = png_table_writer(
        tmp_path / "d", {"a": [i % 2 for i in range(16)], "b": [(i // 2) % 2 for i in range(16)]}, 16
    )
    out = tmp_path / "cv"
    args = ["multilabel", "--data", tmp_path / "d", "--labels", table, "--fold", "all", *FAST, "--img-size", "32"]
    res = train(*args, "--epochs", "1", "--out", out)
    assert res.exit_code == 0, res.stderr
    for k in (0, 1):
        assert not (out / f"fold{k}" / "checkpoints" / "last.pt").exists()
        assert {"checkpoints/best.pt", "plots/val_roc.png", "curve.png"} <= files(out / f"fold{k}")
    assert {"plots/val_roc.png", "plots/val_pr.png", "plots/val_calibration.png"} <= files(out)
    assert "plots/val_confusion.png" not in files(out)  # multilabel: no single class per row
    cv = json.loads((out / "cv.json").read_text())
    assert cv["pictures"] == ["val_roc.png", "val_pr.png", "val_calibration.png"]
    # --resume finds both folds finished from their run.json (no last.pt to read) and trains nothing
    again = train(*args, "--epochs", "1", "--out", out, "--resume", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["folds"] == cv["folds"] and "epoch 1/1" not in again.stderr


def test_multiclass_run_draws_a_confusion_matrix_of_every_class(tmp_path: Path) -> None:
    npz = multiclass_npz(tmp_path / "m.npz")
    out = tmp_path / "run"
    res = train("multiclass", "--data", npz, *FAST, "--epochs", "1", "--keep-last", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert files(out) >= PICTURES and (out / "checkpoints" / "last.pt").is_file()
    results = json.loads((out / "run.json").read_text())["results"]
    assert results["decision"]["how"] == "most probable class"
    oof = pd.read_csv(out / "oof.csv")
    argmax = oof[["class0_prob", "class1_prob", "class2_prob"]].to_numpy().argmax(axis=1)
    assert results["validation"]["acc"] == pytest.approx(float(np.mean(argmax == oof["target"].to_numpy())))

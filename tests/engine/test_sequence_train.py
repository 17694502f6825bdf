"""The sequence model's training: stages and recipes, series batches, and `medkit train ct --seq-model` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.engine.sequence import (
    SeqStage,
    crop_series,
    pad_batch,
    parse_stage,
    plan_seq_stages,
    read_recipe,
    series_of,
)
from medkit.errors import ConfigError, UsageError

LABELS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]


# ---------------------------------------------------------------------------------------------------- stages
def test_stages_inherit_from_the_previous_one() -> None:
    base = SeqStage("main", 3, 1e-3, terms={"main": 1.0, "aux": 0.5})
    stages = plan_seq_stages(
        base,
        [
            {"name": "main"},
            parse_stage("name=augment epochs=2 seq_mask=0.15 diversity=0.15"),
            parse_stage("name=all;count=0.1;embed=0.1;cpc=0.1;lr=1e-4"),
        ],
    )
    assert [s.name for s in stages] == ["main", "augment", "all"]
    assert [s.epochs for s in stages] == [3, 2, 2]
    assert [s.seq_mask for s in stages] == [0.0, 0.15, 0.15]
    assert stages[2].lr == pytest.approx(1e-4) and stages[1].lr == pytest.approx(1e-3)
    assert stages[1].terms == {"main": 1.0, "aux": 0.5}
    assert stages[2].terms == {"main": 1.0, "aux": 0.5, "count": 0.1, "embed": 0.1, "cpc": 0.1}
    assert plan_seq_stages(base, []) == [base]
    assert plan_seq_stages(base, [{}, {}])[1].name == "stage2"


def test_stage_errors_name_the_problem() -> None:
    base = SeqStage("main", 1, 1e-3)
    with pytest.raises(UsageError, match="unknown key 'seq_mak'.*did you mean 'seq_mask'"):
        plan_seq_stages(base, [{"seq_mak": 0.1}])
    with pytest.raises(UsageError, match=r"seq_mask must be in \[0, 1\)"):
        plan_seq_stages(base, [{"seq_mask": 1.5}])
    with pytest.raises(UsageError, match="names must differ"):
        plan_seq_stages(base, [{"name": "a"}, {"name": "a"}])
    with pytest.raises(UsageError, match="epochs >= 1"):
        plan_seq_stages(base, [{"epochs": 0}])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_stage("epochs")
    with pytest.raises(UsageError, match="unknown key 'cpcc'.*did you mean 'cpc'"):
        plan_seq_stages(base, [{"cpcc": 1}])
    with pytest.raises(UsageError, match="not a number"):
        plan_seq_stages(base, [{"cpc": "x"}])


def test_recipe_file_reads_stage_tables_and_loss_weights(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[[stage]]\nname = "main"\nepochs = 2\n\n'
        '[[stage]]\nname = "all"\nseq_mask = 0.15\nlosses = {aux = 0.5, cpc = 0.1}\n'
    )
    items = read_recipe(recipe)
    assert items == [{"name": "main", "epochs": 2}, {"name": "all", "seq_mask": 0.15, "aux": 0.5, "cpc": 0.1}]
    stages = plan_seq_stages(SeqStage("main", 5, 1e-3), items)
    assert stages[1].terms == {"main": 1.0, "aux": 0.5, "cpc": 0.1} and stages[1].epochs == 2
    (tmp_path / "bad.toml").write_text("[[stage]\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        read_recipe(tmp_path / "bad.toml")
    (tmp_path / "empty.toml").write_text("x = 1\n")
    with pytest.raises(UsageError, match=r"no \[\[stage\]\] tables"):
        read_recipe(tmp_path / "empty.toml")


# ---------------------------------------------------------------------------------------------------- series
def test_series_are_grouped_and_sorted_by_slice_order() -> None:
    class _Split:
        rows = np.array([0, 1, 2, 3, 5])

    series = ["b", "a", "b", "a", "c", "b"]
    order = [2.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    got = series_of(_Split(), series, order)
    assert got.names == ["a", "b"]
    assert [r.tolist() for r in got.rows] == [[3, 1], [2, 5, 0]]


def test_crop_and_pad() -> None:
    rows = np.arange(10, 20)
    assert crop_series(rows, 20, np.random.default_rng(0)).tolist() == rows.tolist()
    assert crop_series(rows, 4, None).tolist() == [10, 11, 12, 13]
    starts = {int(crop_series(rows, 4, np.random.default_rng(s))[0]) for s in range(40)}
    assert starts == set(range(10, 17))  # every window of 4 consecutive slices, never past the end
    padded, valid = pad_batch([np.array([4, 5, 6]), np.array([9])])
    assert padded.tolist() == [[4, 5, 6], [9, -1, -1]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


# ---------------------------------------------------------------------------------------------------- end to end
def _write_series(root: Path, n_series: int = 6, n_slices: int = 5, size: int = 24) -> Path:
    """PNG slices of a few series with file names shuffled against the slice order, and a per-slice table."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for s in range(n_series):
        names = rng.permutation(n_slices)
        for t in range(n_slices):
            y = np.zeros(6, int)
            if s % 2 == 0 and 1 <= t <= 3:
                y[s % 5], y[5] = 1, 1
            img = (rng.random((size, size)) * 60 + 120 * y[5]).astype(np.uint8)
            name = f"img/s{s}_{names[t]}.png"
            cv2.imwrite(str(root / name), img)
            rows.append(
                {
                    "image": name,
                    "patient_id": f"p{s}",
                    "series_id": f"s{s}",
                    "slice_index": t,
                    **dict(zip(LABELS, y.tolist(), strict=True)),
                }
            )
    table = root / "labels.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(table, index=False)
    return table


def _train(tmp_path: Path, *extra: str) -> tuple[object, Path]:
    table = tmp_path / "labels.csv"
    if not table.exists():
        _write_series(tmp_path)
    out = tmp_path / "run"
    args = [
        "train", "ct", "--data", str(tmp_path), "--labels", str(table), "--model", "cnn_small", "--img-size", "24",
        "--epochs", "1", "--lr", "1e-3", "--metric", "auc", "--device", "cpu", "--seq-model", "gru",
        "--seq-arg", "hidden_size=8", "--out", str(out), *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    return result, out


def test_train_seq_model_writes_a_run_per_stage_with_per_slice_oof(tmp_path: Path) -> None:
    result, out = _train(
        tmp_path,
        "--aux-loss", "aux=0.5",
        "--seq-stage", "name=main",
        "--seq-stage", "name=all seq_mask=0.15 diversity=0.15 count=0.1 embed=0.1 cpc=0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stages = [out / "1-main", out / "2-all"]
    assert str(stages[0]) in result.stdout and str(stages[1]) in result.stdout
    assert json.loads((out / "stages.json").read_text())["stages"] == [str(s) for s in stages]
    first, second = (json.loads((s / "run.json").read_text()) for s in stages)
    assert first["parent"] is None and second["parent"] == str(stages[0].resolve())
    assert second["sequence"]["stage"]["terms"] == {"main": 1.0, "aux": 0.5, "count": 0.1, "embed": 0.1, "cpc": 0.1}
    assert second["spec"]["model"]["name"] == "seq/gru"
    table = pd.read_csv(tmp_path / "labels.csv")
    for s in stages:
        oof = pd.read_csv(s / "oof.csv")
        assert list(oof.columns[:4]) == ["image", "patient_id", "series", "order"]
        assert [f"{c}_prob" for c in LABELS] == [c for c in oof.columns if c.endswith("_prob")]
        val = table[table["series_id"].isin(oof["series"])]
        assert sorted(oof["image"]) == sorted(val["image"])  # every slice of every validation series, once
        for _, group in oof.groupby("series", sort=False):
            assert group["order"].tolist() == sorted(group["order"])
        truth = val.set_index("image").loc[oof["image"], LABELS].to_numpy()
        assert np.array_equal(oof[LABELS].to_numpy(), truth)
        assert (s / "metrics.csv").is_file() and (s / "checkpoints" / "best.pt").is_file()


def test_a_reloaded_sequence_run_gives_its_oof_probabilities(tmp_path: Path) -> None:
    result, out = _train(tmp_path)
    assert result.exit_code == 0, result.output
    assert not (out / "stages.json").exists()  # one stage: the run folder is --out itself
    from medkit.data.pipeline import FileSource
    from medkit.engine.spec import load_run

    model, inputs = load_run(out)
    oof = pd.read_csv(out / "oof.csv")
    source = FileSource([tmp_path / p for p in oof["image"]], inputs.preprocess)
    for _, group in oof.groupby("series", sort=False):
        idx = group.sort_values("order").index.to_numpy()
        x = torch.from_numpy(source.get_batch(idx)).permute(0, 3, 1, 2)
        with torch.no_grad():
            probs = torch.sigmoid(model(inputs.transforms.eval(x))).numpy()  # (N, C, H, W): one series
        want = oof.loc[idx, [f"{c}_prob" for c in LABELS]].to_numpy()
        np.testing.assert_allclose(probs, want, atol=1e-5)
    # medkit predict reads every series whole, like validation did
    preds = tmp_path / "preds.csv"
    args = ["predict", str(out), "--data", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--out", str(preds)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(preds).set_index("image").loc[oof["image"]]
    np.testing.assert_allclose(table["any_prob"].to_numpy(), oof["any_prob"].to_numpy(), atol=1e-5)
    assert len(pd.read_csv(preds)) == 30


def test_cached_embeddings_keep_the_cnn_frozen_and_resume_skips_finished_stages(tmp_path: Path) -> None:
    from medkit.registries import MODELS

    torch.manual_seed(1)
    cnn = MODELS.create("cnn_small", num_classes=6, in_chans=3)
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    args = ("--seq-embeddings", "--weights", str(tmp_path / "cnn.pt"), "--seq-stage", "name=a", "--seq-stage",
            "name=b aux=1")  # fmt: skip
    result, out = _train(tmp_path, *args)
    assert result.exit_code == 0, result.output
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (30, cnn.num_features)
    best = torch.load(out / "2-b" / "checkpoints" / "best.pt", weights_only=False)["model"]
    for k, v in cnn.backbone.state_dict().items():
        assert torch.equal(best[f"encoder.backbone.{k}"], v), k
    again, _ = _train(tmp_path, *args)
    assert again.exit_code == 2 and "already holds a run" in again.output
    import shutil

    shutil.rmtree(out / "2-b")
    resumed, _ = _train(tmp_path, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "finished before" in resumed.output and "cached slice embeddings" in resumed.output


def test_seq_errors_are_one_line_with_a_hint(tmp_path: Path) -> None:
    table = _write_series(tmp_path)
    result, _ = _train(tmp_path, "--seq-embeddings")
    assert result.exit_code == 2 and "--from-run RUN" in result.output
    pd.read_csv(table).drop(columns=["series_id"]).to_csv(tmp_path / "labels.csv", index=False)
    result, _ = _train(tmp_path)
    assert result.exit_code == 2 and "needs a series column" in result.output
    assert "Traceback" not in result.output
    result, _ = _train(tmp_path, "--aux-loss", "cpcc=1")
    assert result.exit_code == 2 and "did you mean 'cpc'" in result.output


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.engine.sequence as S
    from medkit.engine.fit import TrainConfig
    from medkit.registries import TASKS

    table = _write_series(tmp_path, n_series=4, n_slices=4, size=16)
    task = TASKS.create("ct", model="cnn_small", img_size=16, batch_size=2, metric="auc", lr=1e-3)

    def run(out: Path, resume: bool = False) -> None:
        cfg = TrainConfig(task=task, data=str(tmp_path), labels=str(table), out=str(out), device="cpu", resume=resume)
        stages = [SeqStage("main", 2, 1e-3, diversity=0.5, seq_mask=0.3, terms={"main": 1.0, "cpc": 0.1})]
        S.fit_sequence(cfg, S.SeqOptions("gru", stages, hidden_size=8))

    run(tmp_path / "whole")
    calls = {"n": 0}
    real = S._predict_val

    def stop_in_epoch_2(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(S, "_predict_val", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(S, "_predict_val", real)
    run(tmp_path / "cut", resume=True)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert cut["epoch"] == whole["epoch"] == 2 and cut["finished"]
    for key, value in whole["model"].items():
        assert torch.equal(cut["model"][key], value), key
    assert pd.read_csv(tmp_path / "cut" / "metrics.csv")["train_loss"].tolist() == pytest.approx(
        pd.read_csv(tmp_path / "whole" / "metrics.csv")["train_loss"].tolist()
    )


def test_from_run_takes_the_slice_runs_cnn_and_refuses_other_inputs(tmp_path: Path) -> None:
    table = _write_series(tmp_path, n_series=4, n_slices=4, size=16)
    slice_run = tmp_path / "slice"
    args = ["train", "ct", "--data", str(tmp_path), "--labels", str(table), "--model", "cnn_small", "--img-size", "16",
            "--epochs", "1", "--device", "cpu", "--out", str(slice_run)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    seq = tmp_path / "seq"
    common = [*args[:8], "--epochs", "1", "--device", "cpu", "--seq-model", "gru", "--seq-arg", "hidden_size=8"]
    result = CliRunner().invoke(app, [*common, "--img-size", "16", "--seq-embeddings", "--from-run", str(slice_run),
                                      "--out", str(seq)])  # fmt: skip
    assert result.exit_code == 0, result.output
    slice_best = torch.load(slice_run / "checkpoints" / "best.pt", weights_only=False)["model"]
    seq_best = torch.load(seq / "checkpoints" / "best.pt", weights_only=False)["model"]
    for key, value in slice_best.items():
        if key.startswith("backbone."):
            assert torch.equal(seq_best[f"encoder.{key}"], value), key
    assert json.loads((seq / "run.json").read_text())["spec"]["model"]["kwargs"]["backbone"] == "cnn_small"
    result = CliRunner().invoke(app, [*common, "--img-size", "24", "--seq-embeddings", "--from-run", str(slice_run),
                                      "--out", str(tmp_path / "bad")])  # fmt: skip
    assert result.exit_code == 2 and "does not fit this data: image size 16 vs 24" in result.output


def test_dicom_series_without_series_columns_are_ordered_from_their_headers(tmp_path: Path) -> None:
    from _ct_factory import make_ct_dataset

    table = make_ct_dataset(tmp_path / "ct", n_series=4, n_slices=8, size=24, seed=3, dicom=True)
    truth = pd.read_csv(table)
    truth.drop(columns=["series_id", "slice_index"]).sample(frac=1.0, random_state=1).to_csv(
        tmp_path / "bare.csv", index=False
    )
    out = tmp_path / "run"
    args = ["train", "ct", "--data", str(tmp_path / "ct"), "--labels", str(tmp_path / "bare.csv"), "--model",
            "cnn_small", "--img-size", "24", "--epochs", "1", "--device", "cpu", "--seq-model", "gru", "--seq-arg",
            "hidden_size=8", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "slice order from position" in result.output
    oof = pd.read_csv(out / "oof.csv").sort_values(["series", "order"])
    index = truth.set_index("image")
    for _, group in oof.groupby("series"):
        assert index.loc[group["image"], "slice_index"].tolist() == list(range(8))  # the true slice order
        assert index.loc[group["image"], "series_id"].nunique() == 1

"""2.5D input end to end: every feeder gives the DataLoader path's stacks, `medkit train ct --context K` builds the
model with the stacks' channels and records them, `medkit predict` rebuilds the same stacks, and the refusals
(no series, another --context on --resume, --seq-model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _ct_factory import make_ct_dataset
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.data.context import StackSource
from medkit.data.dataset import build_data
from medkit.engine.ddp import DistInfo
from medkit.engine.feed import EpochBatches, LoaderFeeder, make_feeder
from medkit.engine.runtime import Runtime
from medkit.registries import TASKS

runner = CliRunner()
FAST = ["--model", "cnn_small", "--img-size", "16", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6 series x 6 slices at 16 px, rows shuffled, with a fold column (3 series per fold)."""
    root = tmp_path_factory.mktemp("ct")
    table = make_ct_dataset(root / "data", n_series=6, n_slices=6, size=16, seed=1)
    df = pd.read_csv(table).sample(frac=1.0, random_state=0)
    df["fold"] = df["series_id"].str[1:].astype(int) % 2
    df.to_csv(root / "labels.csv", index=False)
    return root / "data", root / "labels.csv"


def _train(args: list[object]) -> object:
    res = runner.invoke(app, ["train", "ct", *[str(a) for a in args]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


# ---------------------------------------------------------------------------------------------------- feeders
@pytest.mark.parametrize("feed", ["device", "pinned", "stream"])
@pytest.mark.parametrize("mode", ["all", "middle"])
def test_every_feeder_gives_the_dataloader_stacks(ct: tuple[Path, Path], tmp_path: Path, feed: str, mode: str) -> None:
    root, table = ct
    task = TASKS.create("ct", img_size=16, context=5, context_mode=mode)
    data = build_data(task, root, table, cache_dir=tmp_path / "cache", fold=0)
    assert isinstance(data.train.source, StackSource)
    rt = Runtime(torch.device("cpu"), dist=DistInfo())
    feeder = make_feeder(data.train, 8, rt, train=True, seed=3, feed=feed)
    if feed != "stream":  # the slices are held, once, not the stacks
        held = rt.held[data.train.source.base]["device" if feed == "device" else "host"].images
        assert held.shape[-1] == 3 and len(held) <= len(data.train.source)
    reference = EpochBatches(len(data.train), 8, True, 3)
    for epoch, skip in ((0, 0), (1, 1)):
        feeder.set_epoch(epoch, skip)
        reference.set_epoch(epoch, skip)
        got, want = list(feeder), list(LoaderFeeder(data.train, reference, rt))
        assert len(got) == len(want) > 0
        for g, w in zip(got, want, strict=True):
            assert g.image.shape[1] == data.in_chans and torch.equal(g.image, w.image)
            assert g.image.stride() == w.image.stride()
            assert torch.equal(g.target, w.target) and torch.equal(g.index, w.index)
            # and the stacks themselves: the per-slice source's rows side by side
            rows = g.index.numpy()
            np.testing.assert_array_equal(g.image.permute(0, 2, 3, 1).numpy(), data.train.source.get_batch(rows))


@pytest.mark.gpu
@pytest.mark.parametrize("feed", ["device", "pinned"])
def test_cuda_feeders_assemble_the_cpu_stacks(ct: tuple[Path, Path], tmp_path: Path, feed: str) -> None:
    root, table = ct
    task = TASKS.create("ct", img_size=16, context=3, context_mode="middle")
    data = build_data(task, root, table, cache_dir=tmp_path / "cache", fold=0)
    gpu = Runtime(torch.device("cuda", 0), channels_last=True, pin_memory=True)
    cpu = Runtime(torch.device("cpu"), channels_last=True, dist=DistInfo())
    feeder = make_feeder(data.train, 8, gpu, train=True, seed=5, feed=feed)
    feeder.set_epoch(1)
    reference = EpochBatches(len(data.train), 8, True, 5)
    reference.set_epoch(1)
    got = list(feeder)
    torch.cuda.synchronize()
    want = list(LoaderFeeder(data.train, reference, cpu))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.image.is_cuda and g.image.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(g.image.cpu(), w.image) and torch.equal(g.index.cpu(), w.index)


# ---------------------------------------------------------------------------------------------------- train, predict
@pytest.fixture(scope="module")
def run3(ct: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, table = ct
    out = tmp_path_factory.mktemp("runs") / "ctx3"
    _train(["--data", root, "--labels", table, "--fold", "0", "--context", "3", "--epochs", "1", *FAST, "--out", out])
    return out


def test_train_context_3_records_nine_channels(run3: Path) -> None:
    record = json.loads((run3 / "run.json").read_text())
    assert record["in_chans"] == 9
    assert record["config"]["task"]["context"] == 3 and record["config"]["task"]["context_mode"] == "all"
    spec = record["spec"]
    assert spec["context"] == {"slices": 3, "mode": "all", "channels": 3, "in_chans": 9}
    assert spec["model"]["kwargs"]["in_chans"] == 9
    assert spec["mean"] == [0.485, 0.456, 0.406] * 3 and spec["std"] == [0.229, 0.224, 0.225] * 3
    weights = torch.load(run3 / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert next(v for v in weights.values() if v.ndim == 4).shape[1] == 9  # the first convolution reads 9 channels


def test_predict_rebuilds_the_stacks_of_training(run3: Path, ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    out = tmp_path / "pred.csv"
    args = ["predict", run3, "--data", root, "--labels", table, "--out", out, "--device", "cpu"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(out).merge(pd.read_csv(run3 / "oof.csv"), on="image", suffixes=("", "_oof"))
    assert len(pred) == 18  # the 3 validation series
    for name in ("any", "subdural"):
        np.testing.assert_allclose(pred[f"{name}_prob"], pred[f"{name}_prob_oof"], atol=1e-5)
    # the same rows in another order, without a label column: the same stacks, the same probabilities
    shuffled = pd.read_csv(table).sample(frac=1.0, random_state=7).drop(columns=["any"])
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    args[5], args[7] = tmp_path / "shuffled.csv", tmp_path / "pred2.csv"
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = pd.read_csv(tmp_path / "pred2.csv").merge(pd.read_csv(out), on="image", suffixes=("", "_1"))
    np.testing.assert_allclose(again["any_prob"], again["any_prob_1"], atol=1e-5)


def test_predict_without_series_is_refused(run3: Path, ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    pd.read_csv(table).drop(columns=["series_id", "slice_index"]).to_csv(tmp_path / "flat.csv", index=False)
    args = ["predict", run3, "--data", root, "--labels", tmp_path / "flat.csv", "--out", tmp_path / "p.csv"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2
    assert "a run trained with --context 3 needs the CT series" in res.output and "series_id" in res.output
    assert not (tmp_path / "p.csv").exists()


def test_train_without_series_is_refused(ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    pd.read_csv(table).drop(columns=["series_id", "slice_index"]).to_csv(tmp_path / "flat.csv", index=False)
    args = ["train", "ct", "--data", root, "--labels", tmp_path / "flat.csv", "--context", "3", *FAST]
    res = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "r"]])
    assert res.exit_code == 2
    assert "--context 3 needs the CT series of every slice" in res.output and "slice_index" in res.output


@pytest.mark.parametrize(("flags", "message"), [(["--context", "4"], "odd"), (["--context-mode", "mid"], "middle")])
def test_bad_context_flags_are_refused(ct: tuple[Path, Path], tmp_path: Path, flags: list[str], message: str) -> None:
    root, table = ct
    args = ["train", "ct", "--data", root, "--labels", table, *flags, *FAST, "--out", tmp_path / "r"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "r").exists()


def test_resume_with_another_context_is_refused(ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    base = ["--data", root, "--labels", table, "--fold", "0", *FAST, "--out", tmp_path / "r", "--epochs", "2"]
    _train([*base, "--context", "3", "--max-steps", "1"])
    res = runner.invoke(app, ["train", "ct", *[str(a) for a in [*base, "--context", "5", "--resume"]]])
    assert res.exit_code == 2
    assert "task.context: 3 -> 5" in res.output
    res = runner.invoke(app, ["train", "ct", *[str(a) for a in [*base, "--context-mode", "middle", "--resume"]]])
    assert res.exit_code == 2 and "task.context_mode: 'all' -> 'middle'" in res.output
    _train([*base, "--context", "3", "--resume"])  # the same flags continue it
    assert json.loads((tmp_path / "r" / "run.json").read_text())["results"]["epochs_done"] == 2


def test_fold_all_middle_mode_from_a_cache_on_the_device_feeder(ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    out = tmp_path / "cv"
    args = ["--data", root, "--labels", table, "--fold", "all", "--context", "5", "--context-mode", "middle"]
    _train([*args, "--cache", tmp_path / "cache", "--feed", "device", "--epochs", "1", *FAST, "--out", out])
    for k in (0, 1):
        record = json.loads((out / f"fold{k}" / "run.json").read_text())
        assert record["in_chans"] == 3 + 4 and record["runtime"]["feed"] == "device"
        assert record["spec"]["context"]["mode"] == "middle"
    assert (out / "oof.csv").is_file()
    res = runner.invoke(
        app, [str(a) for a in ["predict", out, "--data", root, "--labels", table, "--out", tmp_path / "p.csv"]]
    )
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 36


def test_refine_seq_on_a_2_5d_model(ct: tuple[Path, Path], tmp_path: Path) -> None:
    """Neighbour refinement of a 2.5D model: the refined CNN reads stacks, its OOF is what predict gives."""
    root, table = ct
    out = tmp_path / "rr"
    args = ["--data", root, "--labels", table, "--fold", "0", "--context", "3", "--epochs", "1", *FAST]
    _train([*args, "--loss", "asl", "--refine-seq", "3", "--refine-lr", "1e-3", "--refine-epochs", "1", "--out", out])
    second = out / "2-refine3"
    assert json.loads((second / "run.json").read_text())["spec"]["context"]["in_chans"] == 9
    args = ["predict", second, "--data", root, "--labels", table, "--out", tmp_path / "p.csv", "--device", "cpu"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "p.csv").merge(pd.read_csv(second / "oof.csv"), on="image", suffixes=("", "_oof"))
    assert len(pred) == 18
    np.testing.assert_allclose(pred["any_prob"], pred["any_prob_oof"], atol=1e-5)


def test_seq_model_with_context_is_refused(ct: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct
    args = ["train", "ct", "--data", root, "--labels", table, "--context", "3", "--seq-model", "gru", *FAST]
    res = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "s"]])
    assert res.exit_code == 2 and "--context does not combine with --seq-model" in res.output


def test_dicom_series_from_headers_train_and_predict_a_folder(tmp_path: Path) -> None:
    """RSNA long labels and DICOM slices under random names: the stacks follow the headers' geometry, in training
    and when a folder of slices is predicted without a table (Grad-CAM pictures show the slice itself)."""
    table = make_ct_dataset(tmp_path / "d", n_series=4, n_slices=5, size=16, seed=2, dicom=True)
    wide = pd.read_csv(table)
    subtypes = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    long = pd.DataFrame(
        [(f"{Path(row['image']).stem}_{s}", int(row[s])) for _, row in wide.iterrows() for s in subtypes],
        columns=["ID", "Label"],
    )
    long.to_csv(tmp_path / "stage_2_train.csv", index=False)
    args = ["--data", tmp_path / "d", "--labels", tmp_path / "stage_2_train.csv", "--context", "3", "--epochs", "1"]
    res = _train([*args, *FAST, "--out", tmp_path / "run"])
    assert "9 channels; 4 series, slice order from position" in res.output
    args = ["predict", tmp_path / "run", "--data", tmp_path / "d", "--out", tmp_path / "p.csv", "--cam", "2"]
    res = runner.invoke(app, [str(a) for a in [*args, "--device", "cpu"]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 20
    assert (tmp_path / "p_cam" / "contact_sheet.png").is_file()

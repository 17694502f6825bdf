"""Neighbour refinement: the weighted logit sum, the stacks fed to the model, `train --refine-seq`, `medkit refine`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _ct_factory import make_ct_dataset
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.engine.refine import _neighbour_module, _stack, centred_window, pseudo_targets

runner = CliRunner()
FAST = ["--model", "cnn_small", "--img-size", "16", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


def test_centred_window_by_hand() -> None:
    np.testing.assert_allclose(centred_window(5), np.array([1, 2, 3, 2, 1]) / 9)
    np.testing.assert_allclose(centred_window(3), [0.25, 0.5, 0.25])
    assert centred_window(1) == (1.0,)
    with pytest.raises(Exception, match="odd"):
        centred_window(4)


def test_neighbour_model_is_the_weighted_logit_sum() -> None:
    class Sums(torch.nn.Module):  # logits (sum, -2 * sum) of each slice
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x.sum(dim=(1, 2, 3))
            return torch.stack([s, -2 * s], dim=1)

    model = _neighbour_module(Sums(), (0.2, 0.5, 0.3), learn=True)
    x = torch.zeros(2, 3, 1, 2, 2)
    x[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 4.0])
    x[1, :, 0, 1, 1] = torch.tensor([10.0, 0.0, -10.0])
    out = model(x)
    # stack 0: 0.2*1 + 0.5*2 + 0.3*4 = 2.4; stack 1: 0.2*10 - 0.3*10 = -1.0
    torch.testing.assert_close(out, torch.tensor([[2.4, -4.8], [-1.0, 2.0]]))
    out.sum().backward()
    assert model.weights.grad is not None  # the weights learn


def _fake_stage(images: np.ndarray, window: np.ndarray, augment: dict) -> SimpleNamespace:
    from medkit.engine.components import InputTransforms

    source = SimpleNamespace(get_batch=lambda rows: images[np.asarray(rows)])
    n = window.shape[1]
    c = images.shape[-1]
    mean, std = [0.5] * c, [0.25] * c
    return SimpleNamespace(
        window=window,
        data=SimpleNamespace(train=SimpleNamespace(source=source)),
        rt=SimpleNamespace(device=torch.device("cpu")),
        transforms=InputTransforms(mean * n, std * n, images.shape[1], augment, seed=3),
    )


def test_stacks_pixel_by_pixel_against_numpy() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 2), dtype=np.uint8)
    window = np.array([[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]])
    st = _fake_stage(images, window, {})
    x = _stack(st, np.array([2, 0, 4]), train=False).numpy()
    assert x.shape == (3, 3, 2, 8, 8)
    for b, centre in enumerate([2, 0, 4]):
        for j, row in enumerate(window[centre]):
            want = (images[row].transpose(2, 0, 1) / 255.0 - 0.5) / 0.25
            np.testing.assert_allclose(x[b, j], want, atol=1e-5)


def test_augmentation_is_identical_across_a_stack() -> None:
    """Identical slices in a stack stay identical after augmentation; different stacks get different draws."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 16, 16, 1), dtype=np.uint8)
    window = np.array([[0, 0, 0], [1, 1, 1]])
    st = _fake_stage(images, window, {"hflip": 0.5, "affine_p": 1.0, "rotate": 15.0, "brightness": 0.2})
    x = _stack(st, np.array([0, 1, 0, 0]), train=True)
    for b in range(4):
        torch.testing.assert_close(x[b, 0], x[b, 1])
        torch.testing.assert_close(x[b, 0], x[b, 2])
    assert not torch.allclose(x[0], x[2])  # two stacks of the same slice drew their own augmentation


def test_pseudo_targets(tmp_path: Path) -> None:
    path = tmp_path / "pred.csv"
    pd.DataFrame({"image": ["b", "zz", "a"], "x_prob": [0.9, 0.1, 1.2], "y": [0.2, 0.3, 0.4]}).to_csv(path, index=False)
    rows, values = pseudo_targets(path, ["a", "b", "c"], ["x", "y"])
    assert rows.tolist() == [1, 0]
    np.testing.assert_allclose(values, [[0.9, 0.2], [1.0, 0.4]])  # clipped to 0..1
    with pytest.raises(Exception, match="no column 'z_prob'"):
        pseudo_targets(path, ["a"], ["z"])


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`medkit train ct --refine-seq 3` on 6 series of 6 slices at 16 px."""
    root = tmp_path_factory.mktemp("ct")
    table = make_ct_dataset(root / "data", n_series=6, n_slices=6, size=16, seed=1)
    args = ["train", "ct", "--data", root / "data", "--labels", table, "--epochs", "1", "--out", root / "run"]
    args += [*FAST, "--loss", "asl", "--refine-seq", "3", "--refine-lr", "1e-3", "--refine-epochs", "1"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root, table


def test_train_refine_seq_writes_a_run_per_stage(ct_run: tuple[Path, Path]) -> None:
    root, _ = ct_run
    first, second = root / "run" / "1-slice", root / "run" / "2-refine3"
    for stage in (first, second):
        for name in ("run.json", "metrics.csv", "oof.csv", "checkpoints/best.pt", "checkpoints/last.pt"):
            assert (stage / name).is_file(), stage / name
    record = json.loads((second / "run.json").read_text())
    assert Path(record["parent"]) == first.resolve()
    weights = record["spec"]["neighbours"]
    assert len(weights) == 3 and weights != [0.25, 0.5, 0.25]  # learned from the centred start
    stages = json.loads((root / "run" / "stages.json").read_text())
    assert stages["stages"] == [str(first), str(second)]
    # the refined OOF is the per-slice logits of its model aggregated over each series with its weights
    oof = pd.read_csv(second / "oof.csv")
    assert {"series", "order", "any", "any_prob"} <= set(oof.columns)
    assert len(oof) == len(pd.read_csv(first / "oof.csv"))


def test_predict_refined_run_matches_its_oof(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct_run
    second = root / "run" / "2-refine3"
    out = tmp_path / "pred.csv"
    args = ["predict", second, "--data", root / "data", "--labels", table, "--out", out, "--device", "cpu"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(out).merge(pd.read_csv(second / "oof.csv"), on="image", suffixes=("", "_oof"))
    assert len(pred) > 0
    np.testing.assert_allclose(pred["any_prob"], pred["any_prob_oof"], atol=1e-5)


def test_refine_command_resume_and_refusal(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, table = ct_run
    first = root / "run" / "1-slice"
    out = tmp_path / "r"
    base = ["refine", str(first), "--seq", "3", "--lr", "1e-3", "--out", str(out), "--device", "cpu"]
    res = runner.invoke(app, [*base, "--epochs", "1", "--freeze", "backbone.body.0.*"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = runner.invoke(app, [*base, "--epochs", "2"])
    assert again.exit_code == 2 and "--resume" in again.output
    res = runner.invoke(
        app, [*base, "--epochs", "2", "--resume", "--freeze", "backbone.body.0.*"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    # distillation from the slice run and pseudo-labels (soft targets for every image), one step
    pseudo = pd.read_csv(table)[["image"]].assign(**{f"{n}_prob": 0.5 for n in ("epidural", "intraparenchymal",
        "intraventricular", "subarachnoid", "subdural", "any")})  # fmt: skip
    pseudo.to_csv(tmp_path / "pseudo.csv", index=False)
    extra = ["--distill", str(first), "--pseudo-labels", str(tmp_path / "pseudo.csv"), "--dry-run"]
    res = runner.invoke(app, [*base[:-4], "--out", str(tmp_path / "d"), "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    assert "pseudo-labels:" in res.output and (tmp_path / "d" / "checkpoints" / "best.pt").is_file()


def test_train_refine_seq_resume_keeps_finished_stages(ct_run: tuple[Path, Path]) -> None:
    root, table = ct_run
    best = root / "run" / "2-refine3" / "checkpoints" / "best.pt"
    before = best.stat().st_mtime_ns
    args = ["train", "ct", "--data", root / "data", "--labels", table, "--epochs", "1", "--out", root / "run"]
    args += [*FAST, "--loss", "asl", "--refine-seq", "3", "--refine-lr", "1e-3", "--refine-epochs", "1", "--resume"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "stage 1 finished before" in res.output and "refine stage finished before" in res.output
    assert best.stat().st_mtime_ns == before


def test_rsna_long_labels_and_dicom_series_feed_refine(tmp_path: Path) -> None:
    """stage_2_train.csv as it is, DICOM slices under random names: the series come from the headers' geometry."""
    table = make_ct_dataset(tmp_path / "d", n_series=5, n_slices=5, size=16, seed=2, dicom=True)
    wide = pd.read_csv(table)
    subtypes = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    long = pd.DataFrame(
        [(f"{Path(row['image']).stem}_{s}", int(row[s])) for _, row in wide.iterrows() for s in subtypes],
        columns=["ID", "Label"],
    )
    long.to_csv(tmp_path / "stage_2_train.csv", index=False)
    args = ["train", "ct", "--data", tmp_path / "d", "--labels", tmp_path / "stage_2_train.csv", "--epochs", "1"]
    args += [*FAST, "--out", tmp_path / "run", "--refine-seq", "3", "--refine-epochs", "1"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "RSNA long labels (150 rows) read as 25 images" in res.output
    assert "slice order from position" in res.output
    oof = pd.read_csv(tmp_path / "run" / "2-refine3" / "oof.csv")
    assert oof["series"].str.startswith("1.2.826.0.1.").all()

    # A test folder of DICOM slices and no table (as RSNA's stage_2_test): the headers give the series and order
    # the refined run's neighbour weights need (the same as training found), and the weights are applied.
    def predict(*extra: str) -> pd.DataFrame:
        out = tmp_path / "pred.csv"
        args = ["predict", str(tmp_path / "run" / "2-refine3"), "--data", str(tmp_path / "d"), "--out", str(out)]
        res = runner.invoke(app, [*args, "--device", "cpu", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return pd.read_csv(out).assign(image=lambda f: f["image"].map(lambda v: Path(v).stem))

    pred = predict()
    assert len(pred) == 25 and pred["series"].str.startswith("1.2.826.0.1.").all()
    both = pred.merge(oof, on="image", suffixes=("", "_o"))
    assert len(both) == len(oof) and (both["series"] == both["series_o"]).all()
    np.testing.assert_allclose(both["order"], both["order_o"])
    labelled = predict("--labels", str(tmp_path / "stage_2_train.csv"))  # the long table, read as train reads it
    np.testing.assert_allclose(labelled["any_prob"], pred.set_index("image").loc[labelled["image"], "any_prob"])
    alone = predict("--neighbours", "none")  # slices on their own differ from the weighted neighbour sum
    assert "series" not in alone.columns
    assert np.abs(alone["any_prob"].to_numpy() - pred["any_prob"].to_numpy()).max() > 1e-4


def test_refine_into_a_folder_another_live_command_writes_is_refused(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    from medkit._lock import RunLock

    root, _ = ct_run
    out = tmp_path / "busy"
    args = ["refine", str(root / "run" / "1-slice"), "--seq", "3", "--out", str(out), "--device", "cpu", "--dry-run"]
    with RunLock(out, "medkit refine"):  # this process holds the folder, as a running refine would
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert f"PID {os.getpid()}" in res.output and "Traceback" not in res.output
        assert not (out / "checkpoints").exists()
    res = runner.invoke(app, args)  # once the lock is released the same command runs
    assert res.exit_code == 0, res.output
    assert not (out / ".medkit.lock").exists()


def test_neighbour_weights_get_their_own_learning_rate() -> None:
    import torch

    from medkit.engine.refine import _neighbour_module, _own_group

    torch.manual_seed(0)
    model = _neighbour_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), (0.25, 0.5, 0.25), True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    _own_group(opt, model.weights, 1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-6, 1e-2]
    assert all(p is not model.weights for p in opt.param_groups[0]["params"])
    start = model.weights.detach().clone()
    cnn_start = [p.detach().clone() for p in model.cnn.parameters()]
    x, y = torch.randn(8, 3, 1, 2, 2), torch.rand(8, 2)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    opt.step()
    # Adam's first step moves each parameter by about its lr: the weights by 1e-2, the CNN by 1e-6
    np.testing.assert_allclose((model.weights.detach() - start).abs().numpy(), 1e-2, rtol=1e-3)
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(model.cnn.parameters(), cnn_start, strict=True))
    assert moved <= 1.05e-6  # float32 rounding of the step


def test_refine_keeps_the_parents_batch_norm_statistics(ct_run: tuple[Path, Path], tmp_path: Path) -> None:
    """A stage that cannot move the weights (lr 1e-12, one slice, fixed weights) predicts what its parent did: a
    batch of near-identical neighbours must not rewrite the running statistics. ``--update-bn`` lets them move."""
    root, _ = ct_run
    first = root / "run" / "1-slice"
    parent = pd.read_csv(first / "oof.csv").set_index("image")
    base = ["refine", str(first), "--seq", "1", "--lr", "1e-12", "--fixed-weights", "--epochs", "1"]
    kept = tmp_path / "kept"
    res = runner.invoke(app, [*base, "--out", str(kept), "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = pd.read_csv(kept / "oof.csv").set_index("image").loc[parent.index]
    np.testing.assert_allclose(again["any_prob"], parent["any_prob"], atol=1e-5)
    moved = tmp_path / "moved"
    res = runner.invoke(app, [*base, "--update-bn", "--out", str(moved), "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    other = pd.read_csv(moved / "oof.csv").set_index("image").loc[parent.index]
    assert np.abs(other["any_prob"].to_numpy() - parent["any_prob"].to_numpy()).max() > 1e-3
    assert json.loads((moved / "run.json").read_text())["refine"]["update_bn"] is True

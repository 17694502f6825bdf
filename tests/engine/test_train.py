"""`medkit train` end to end on tiny synthetic data: every task, the run directory, resume, folds, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _factories import png_table, synthetic_medmnist, write_dicom
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()
FAST = ["--model", "cnn_small", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


# ---------------------------------------------------------------------------------------------------- tiny data
def make_npz(path: Path, n: tuple[int, int, int] = (40, 16, 16), size: int = 28, seed: int = 0) -> Path:
    """A MedMNIST-layout binary npz whose label is learnable (label 1 = brighter image)."""
    return synthetic_medmnist(path, n, size, seed)


def make_dicom(path: Path, hu: np.ndarray, patient: str) -> None:
    from pydicom.uid import generate_uid

    write_dicom(path, hu + 1024, bits_stored=16, signed=True, patient=patient, series=generate_uid(), z=None)


def train_cli(*args: str | Path) -> object:
    return runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)


def run_files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------- tasks
def test_binary_npz_trains_and_writes_the_run_directory(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    out = tmp_path / "run"
    res = train_cli(
        "binary", "--data", npz, *FAST, "--img-size", "28", "--epochs", "2", "--lr", "3e-3", "--out", out, "--json"
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["metric"] == "auc" and summary["epochs"] == 2 and summary["steps"] == 10  # 40 / 8 per epoch
    assert {
        "run.json",
        "metrics.csv",
        "curve.png",
        "oof.csv",
        "test.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    } <= run_files(out)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["task"]["name"] == "binary" and len(record["data_hash"]) == 64
    assert record["versions"]["medkit"] and record["versions"]["torch"].split("+")[0] in torch.__version__
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and {"train_loss", "val_loss", "auc", "lr"} <= set(metrics.columns)
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 16 and oof["image"].str.startswith("val/").all()
    # The brightness signal is easy: the validation AUC in oof.csv must be what run.json/summary report.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(oof["label0"], oof["label0_prob"]) == pytest.approx(summary["best"], abs=1e-6)
    assert summary["test"]["n"] == 16
    last = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert last["epoch"] == 2 and last["finished"] and last["medkit_version"]
    assert {"model", "optimizer", "scheduler", "rng", "config", "stage", "step"} <= set(last)


def test_dry_run_stops_after_one_batch(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    res = train_cli("binary", "--data", npz, *FAST, "--dry-run", "--out", tmp_path / "r", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["steps"] == 1
    assert len(pd.read_csv(tmp_path / "r" / "oof.csv")) == 8  # one validation batch


def test_precision_flags_and_their_record(tmp_path: Path) -> None:
    from medkit.cli._options import precision as _precision

    # unset: by device; --amp: on everywhere (bf16 on a CPU); --no-amp: off; a named dtype is that dtype
    assert [_precision(None, "auto"), _precision(True, "auto"), _precision(False, "auto")] == ["auto", "on", "off"]
    assert [_precision(None, "bf16"), _precision(True, "fp16"), _precision(False, "bf16")] == ["bf16", "fp16", "off"]
    npz = make_npz(tmp_path / "mini.npz")
    for flags, want in (((), "None"), (("--amp",), "bfloat16"), (("--no-amp",), "None")):
        out = tmp_path / f"r{len(flags)}{want}"
        res = train_cli("binary", "--data", npz, *FAST, "--img-size", "28", "--dry-run", *flags, "--out", out)
        assert res.exit_code == 0, res.stderr
        runtime = json.loads((out / "run.json").read_text())["runtime"]
        assert runtime["amp_dtype"] == want and runtime["feed"] == "device" and not runtime["cudnn_benchmark"]
        assert "feed: device, " in res.stderr and runtime["feed_reason"] in res.stderr


def test_multilabel_png_with_folds_and_weighted_loss(tmp_path: Path) -> None:
    n = 24
    table = png_table(tmp_path, {"a": [i % 2 for i in range(n)], "b": [(i // 3) % 2 for i in range(n)]}, n)
    res = train_cli(
        "multilabel",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "1",
        *FAST,
        "--epochs",
        "1",
        "--loss",
        "wbce",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    folds = pd.read_csv(table)
    assert sorted(oof["image"]) == sorted(folds.loc[folds["fold"] == 1, "image"])
    assert {"a", "b", "a_prob", "b_prob", "patient_id"} <= set(oof.columns)


def test_multiclass_png_uses_softmax(tmp_path: Path) -> None:
    n = 24
    table = png_table(tmp_path, {"cls": [i % 3 for i in range(n)]}, n)
    res = train_cli(
        "multiclass",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "0",
        *FAST,
        "--epochs",
        "1",
        "--mixup",
        "0.4",
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 0, res.stderr
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    probs = oof[["class0_prob", "class1_prob", "class2_prob"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_scan_task_several_binary_tasks_f1(tmp_path: Path) -> None:
    n = 24
    table = png_table(
        tmp_path,
        {"t1": [i % 2 for i in range(n)], "t2": [1 - i % 2 for i in range(n)], "t3": [(i // 2) % 2 for i in range(n)]},
        n,
    )
    res = train_cli(
        "scan",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "0",
        *FAST,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metric"] == "f1"
    assert "f1" in pd.read_csv(tmp_path / "run" / "metrics.csv").columns


def test_ct_dicom_windows_and_rsna_metric(tmp_path: Path) -> None:
    from medkit.competitions.rsna import RSNA_SUBTYPES

    rng = np.random.default_rng(0)
    (tmp_path / "dcm").mkdir()
    rows = []
    for i in range(16):
        hu = rng.normal(40, 30, (32, 32)).astype(np.int16)
        name = f"ID_{i:04d}"
        make_dicom(tmp_path / "dcm" / f"{name}.dcm", hu, f"P{i // 4}")
        labels = {s: int((i + j) % 3 == 0) for j, s in enumerate(RSNA_SUBTYPES)}
        rows.append({"image": name, "patient_id": f"P{i // 4}", "fold": (i // 4) % 2, **labels})
    pd.DataFrame(rows).to_csv(tmp_path / "ct.csv", index=False)
    res = train_cli(
        "ct",
        "--data",
        tmp_path / "dcm",
        "--labels",
        tmp_path / "ct.csv",
        "--fold",
        "0",
        *FAST,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["metric"] == "rsna_logloss" and np.isfinite(summary["best"]) and summary["best"] > 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["task"]["windows"] == ["brain", "subdural", "soft_tissue"]
    assert record["label_names"] == list(RSNA_SUBTYPES)


def test_cxr_group_heads(tmp_path: Path) -> None:
    from medkit.data.table import RANZCR_LABELS

    n = 16
    labels = {c: [int((i + j) % 4 == 0) for i in range(n)] for j, c in enumerate(RANZCR_LABELS)}
    table = png_table(tmp_path, labels, n, rgb=True)
    res = train_cli(
        "cxr",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "0",
        *FAST,
        "--heads",
        "groups",
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 0, res.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    head_keys = {k.split(".")[2] for k in state["model"] if k.startswith("head.heads.")}
    assert head_keys == {"ETT", "NGT", "CVC", "SwanGanz"}
    assert state["model"]["head.heads.NGT.weight"].shape[0] == 4


def test_named_label_groups_give_one_head_each_and_predict_reads_them(tmp_path: Path) -> None:
    n = 16
    cols = ["line a", "line b", "tube a", "tube b", "tube c", "other"]
    labels = {c: [int((i + j) % 3 == 0) for i in range(n)] for j, c in enumerate(cols)}
    table = png_table(tmp_path, labels, n, rgb=True)
    groups = "LINE=line a,line b;TUBE=tube a,tube b,tube c"
    base = ["multilabel", "--data", tmp_path, "--labels", table, "--fold", "0", *FAST, "--epochs", "1"]
    res = train_cli(*base, "--heads", groups, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["model"]["head.heads.LINE.weight"].shape[0] == 2
    assert state["model"]["head.heads.TUBE.weight"].shape[0] == 3
    # the groups' columns are the labels: 'other' is not trained on
    assert list(pd.read_csv(tmp_path / "run" / "oof.csv").filter(like="_prob").columns) == [
        f"{c}_prob" for c in cols[:5]
    ]
    pred = tmp_path / "pred.csv"
    args = ["predict", tmp_path / "run", "--data", tmp_path, "--labels", table, "--out", pred, "--device", "cpu"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    both = pd.read_csv(pred).merge(oof, on="image", suffixes=("", "_oof"))
    np.testing.assert_allclose(both["tube c_prob"], both["tube c_prob_oof"], atol=1e-5)
    # a label column outside every group, groups against the label order, a malformed item: clear usage errors
    res = train_cli(*base, "--heads", groups, "--label-cols", ",".join(cols), "--out", tmp_path / "r2")
    assert res.exit_code == 2 and "other belong to no group" in res.stderr
    res = train_cli(*base, "--heads", "TUBE=tube a,tube b,tube c;LINE=line a,line b", "--label-cols",
                    ",".join(cols[:5]), "--out", tmp_path / "r3")  # fmt: skip
    assert res.exit_code == 2 and "not in the order of the label columns" in res.stderr
    res = train_cli(*base, "--heads", "LINE=line a;TUBE", "--out", tmp_path / "r4")
    assert res.exit_code == 2 and "'TUBE' is not NAME=COL,COL" in res.stderr
    res = train_cli(*base, "--heads", "LINE=line a,nope", "--out", tmp_path / "r5")
    assert res.exit_code == 2 and "nope" in res.stderr


def test_wsi_mosaics_ordinal_qwk(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "mosaics").mkdir()
    rows = []
    for i in range(18):
        tiles = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(9)]
        mosaic = np.vstack([np.hstack(tiles[r * 3 : r * 3 + 3]) for r in range(3)])
        cv2.imwrite(str(tmp_path / "mosaics" / f"s{i}.png"), mosaic)
        rows.append({"image": f"mosaics/s{i}.png", "isup_grade": i % 6, "data_provider": "karolinska", "fold": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "tiles.csv", index=False)
    res = train_cli(
        "wsi",
        "--data",
        tmp_path,
        "--labels",
        tmp_path / "tiles.csv",
        "--fold",
        "0",
        *FAST,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metric"] == "qwk"
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert [c for c in oof.columns if c.endswith("_prob")] == [f">{k}_prob" for k in range(5)]
    assert set(oof["target"]) <= set(range(6))


def test_fold_all_writes_joined_oof_and_cv(tmp_path: Path) -> None:
    n = 16
    table = png_table(tmp_path, {"label": [i % 2 for i in range(n)]}, n)
    res = train_cli(
        "binary",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "all",
        *FAST,
        "--epochs",
        "1",
        "--out",
        tmp_path / "cv",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert set(cv["folds"]) == {"0", "1"} and cv["oof_rows"] == n
    oof = pd.read_csv(tmp_path / "cv" / "oof.csv")
    assert sorted(oof["image"]) == sorted(pd.read_csv(table)["image"])  # every image predicted exactly once
    from sklearn.metrics import roc_auc_score

    assert cv["cv"] == pytest.approx(roc_auc_score(oof["label"], oof["label_prob"]))
    assert (tmp_path / "cv" / "fold0" / "checkpoints" / "best.pt").is_file()


def test_stage2_switches_optimizer_and_records_stage(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    res = train_cli(
        "binary",
        "--data",
        npz,
        *FAST,
        "--img-size",
        "28",
        "--epochs",
        "2",
        "--optimizer",
        "adam",
        "--stage2-optimizer",
        "adabelief",
        "--stage2-epochs",
        "1",
        "--out",
        tmp_path / "r",
    )
    assert res.exit_code == 0, res.stderr
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["stage"].tolist() == [1, 2]
    last = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)
    assert last["stage"] == 2
    assert "buffer" not in str(type(last["optimizer"]))  # a plain optimizer state dict
    assert len(last["optimizer"]["param_groups"]) >= 1


def test_ema_amp_and_profile_flags(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    res = train_cli(
        "binary",
        "--data",
        npz,
        *FAST,
        "--img-size",
        "28",
        "--epochs",
        "1",
        "--ema",
        "--amp",
        "--amp-dtype",
        "bf16",
        "--out",
        tmp_path / "r",
    )
    assert res.exit_code == 0, res.stderr
    last = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)
    assert last["ema"] is not None
    res = train_cli("binary", "--data", npz, *FAST, "--img-size", "28", "--profile", "4", "--json")
    assert res.exit_code == 0, res.stderr
    prof = json.loads(res.stdout)
    assert prof["steps"] == 2 and prof["step_ms"] > 0  # 4 steps minus the 2 warm-up steps the profiler skips
    assert prof["feed"] == "device"  # a MedMNIST array on a CPU: held as a tensor on the device
    res = train_cli("binary", "--data", npz, *FAST, "--img-size", "28", "--profile", "3", "--feed", "stream")
    assert res.exit_code == 0, res.stderr
    assert "profile: 1 steps, feed stream," in res.stdout


# ---------------------------------------------------------------------------------------------------- resume
def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    """4 steps per epoch, 2 epochs: stop mid-epoch 1 (step 3) or mid-epoch 2 (step 6), resume, compare bit for bit."""
    n = 40
    table = png_table(tmp_path, {"a": [i % 2 for i in range(n)], "b": [(i // 3) % 2 for i in range(n)]}, n, folds=4)
    # scan: hflip augmentation on; mixup and EMA on: every random stream must be restored exactly.
    common = [
        "scan",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "0",
        *FAST,
        "--epochs",
        "2",
        "--mixup",
        "0.4",
        "--ema",
        "--deterministic",
        "--seed",
        "7",
    ]
    res = train_cli(*common, "--out", tmp_path / "full")
    assert res.exit_code == 0, res.stderr
    full = _final_weights(tmp_path / "full")
    for stop_at in (3, 6):
        cut = tmp_path / f"cut{stop_at}"
        res = train_cli(*common, "--out", cut, "--max-steps", str(stop_at), "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["stopped"] == "max_steps"
        mid = torch.load(cut / "checkpoints" / "last.pt", weights_only=False)
        assert mid["global_step"] == stop_at and mid["step"] == stop_at % 4 and not mid["finished"]
        assert not torch.equal(mid["model"]["head.weight"], full["head.weight"])
        res = train_cli(*common, "--out", cut, "--resume")
        assert res.exit_code == 0, res.stderr
        resumed = _final_weights(cut)
        assert full.keys() == resumed.keys()
        for k in full:
            assert torch.equal(full[k], resumed[k]), (stop_at, k)
        a = pd.read_csv(tmp_path / "full" / "metrics.csv")
        b = pd.read_csv(cut / "metrics.csv")
        assert np.allclose(a["train_loss"], b["train_loss"]) and np.allclose(a["val_loss"], b["val_loss"])


def test_every_feeder_resumes_to_the_weights_of_the_dataloader_run(tmp_path: Path) -> None:
    """From a cache, each feeder that needs no DataLoader trains to exactly the weights of the DataLoader path, also
    when the run is stopped mid-epoch and resumed (the batches, their order and the skipped ones are the same)."""
    n = 40
    table = png_table(tmp_path, {"a": [i % 2 for i in range(n)], "b": [(i // 3) % 2 for i in range(n)]}, n, folds=4)
    common = [
        "scan",
        "--data",
        tmp_path,
        "--labels",
        table,
        "--fold",
        "0",
        "--cache",
        tmp_path / "cache",
        *FAST,
        "--epochs",
        "2",
        "--mixup",
        "0.4",
        "--deterministic",
        "--seed",
        "7",
    ]
    res = train_cli(*common, "--feed", "workers", "--out", tmp_path / "full")
    assert res.exit_code == 0, res.stderr
    full = _final_weights(tmp_path / "full")
    for feed, stop_at in (("device", 3), ("pinned", 6), ("stream", 3)):
        cut = tmp_path / f"cut-{feed}"
        res = train_cli(*common, "--feed", feed, "--out", cut, "--max-steps", str(stop_at))
        assert res.exit_code == 0, res.stderr
        assert f"feed: {feed}, as requested" in res.stderr
        res = train_cli(*common, "--feed", feed, "--out", cut, "--resume")
        assert res.exit_code == 0, res.stderr
        resumed = _final_weights(cut)
        assert all(torch.equal(full[k], resumed[k]) for k in full), feed
        assert json.loads((cut / "run.json").read_text())["runtime"]["feed"] == feed


def test_ckpt_every_writes_mid_epoch_checkpoints(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    res = train_cli(
        "binary",
        "--data",
        npz,
        *FAST,
        "--img-size",
        "28",
        "--epochs",
        "1",
        "--ckpt-every",
        "2",
        "--max-steps",
        "3",
        "--out",
        tmp_path / "r",
    )
    assert res.exit_code == 0, res.stderr
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)["step"] == 3


def test_resume_refuses_flags_that_change_the_run_and_allows_the_others(tmp_path: Path) -> None:
    """Another --label-cols, --batch-size, --img-size or --model on --resume exits 2 naming old -> new; --epochs may
    change."""
    table = png_table(tmp_path, {"a": [i % 2 for i in range(16)], "b": [(i // 3) % 2 for i in range(16)]}, 16)
    base = [
        "multilabel",
        "--data",
        tmp_path,
        "--labels",
        table,
        *FAST,
        "--epochs",
        "1",
        "--out",
        tmp_path / "r",
    ]
    assert train_cli(*base, "--label-cols", "a,b", "--max-steps", "1").exit_code == 0
    cases = [
        (["--label-cols", "a"], "label_cols: ['a', 'b'] -> ['a']"),
        (["--label-cols", "a,b", "--batch-size", "4"], "task.batch_size: 8 -> 4"),
        (["--label-cols", "a,b", "--img-size", "40"], "task.img_size: 32 -> 40"),
        (["--label-cols", "a,b", "--model", "resnet18"], "task.model: 'cnn_small' -> 'resnet18'"),
    ]
    for extra, named in cases:
        res = train_cli(*base, *extra, "--resume")
        assert res.exit_code == 2 and named in res.stderr, (extra, res.stderr)
    res = train_cli(*base, "--label-cols", "a,b", "--resume", "--epochs", "2", "--workers", "0")
    assert res.exit_code == 0, res.stderr
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2


def test_full_disk_during_a_checkpoint_keeps_the_previous_last_pt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC, or torch's zip-writer RuntimeError, while saving: exit 2 naming the file, old last.pt intact, no .tmp."""
    import errno

    npz = make_npz(tmp_path / "mini.npz")
    args = ["binary", "--data", npz, *FAST, "--img-size", "28", "--epochs", "1", "--out", tmp_path / "r"]
    assert train_cli(*args, "--max-steps", "1").exit_code == 0
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    failures = [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file"),
    ]
    for failure in failures:

        def full_disk(obj: object, fh: object, *a: object, failure: Exception = failure, **kw: object) -> None:
            fh.write(b"partial")  # type: ignore[attr-defined]
            raise failure

        monkeypatch.setattr(torch, "save", full_disk)
        res = train_cli(*args, "--resume")
        assert res.exit_code == 2 and "cannot write checkpoint" in res.stderr and "internal error" not in res.stderr
        assert last.read_bytes() == before
        assert not list(last.parent.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------------- errors
def test_existing_run_needs_resume_and_finished_run_refuses_resume(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    args = ["binary", "--data", npz, *FAST, "--img-size", "28", "--epochs", "1", "--out", tmp_path / "r"]
    assert train_cli(*args).exit_code == 0
    res = train_cli(*args)
    assert res.exit_code == 2 and "--resume" in res.stderr
    res = train_cli(*args, "--resume")
    assert res.exit_code == 2 and "already finished" in res.stderr


def test_user_errors_exit_2_with_a_hint(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    res = train_cli("binary", "--data", npz, *FAST, "--loss", "focla")
    assert res.exit_code == 2 and "did you mean 'focal'" in res.stderr
    res = train_cli("binary", "--data", tmp_path, *FAST)
    assert res.exit_code == 2 and "--labels" in res.stderr
    res = train_cli("binary", "--data", npz, "--labels", npz, *FAST)
    assert res.exit_code == 2 and "not used with a MedMNIST" in res.stderr
    table = png_table(tmp_path / "png", {"label": [0, 1] * 4}, 8)
    res = train_cli("binary", "--data", tmp_path / "png", "--labels", table, "--fold", "7", *FAST)
    assert res.exit_code == 2 and "fold 7 has no rows" in res.stderr
    res = train_cli("bogus", "--data", npz)
    assert res.exit_code == 2 and "unknown task" in res.stderr
    res = train_cli("binary", "--data", npz, *FAST, "--resume", "--out", tmp_path / "none")
    assert res.exit_code == 2 and "checkpoint not found" in res.stderr
    res = train_cli("binary", "--data", npz, *FAST, "--feed", "devise", "--out", tmp_path / "feed")
    assert res.exit_code == 2 and "did you mean 'device'" in res.stderr and not (tmp_path / "feed").exists()
    res = train_cli("binary", "--data", tmp_path / "png", "--labels", table, *FAST, "--feed", "pinned")
    assert res.exit_code == 2 and "add --cache DIR" in res.stderr  # files without a cache: only the DataLoader


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.engine.loop as loop

    npz = make_npz(tmp_path / "mini.npz")
    common = ["binary", "--data", npz, *FAST, "--img-size", "28", "--epochs", "1", "--seed", "3"]
    assert train_cli(*common, "--out", tmp_path / "full").exit_code == 0
    real_step, calls = loop.train_step, {"n": 0}

    def interrupt_third(*args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(loop, "train_step", interrupt_third)
    res = train_cli(*common, "--out", tmp_path / "cut")
    assert res.exit_code == 130 and "--resume" in res.stderr
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert state["global_step"] == 2 and state["step"] == 2
    monkeypatch.setattr(loop, "train_step", real_step)
    assert train_cli(*common, "--out", tmp_path / "cut", "--resume").exit_code == 0
    full, resumed = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_patience_stops_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.engine.fit as fit_mod

    npz = make_npz(tmp_path / "mini.npz")
    # A metric stuck at 0.5: epoch 1 is the best, epoch 2 does not improve, so patience 1 stops after epoch 2.
    monkeypatch.setattr(fit_mod, "score", lambda *a, **k: 0.5)
    res = train_cli(
        "binary",
        "--data",
        npz,
        *FAST,
        "--img-size",
        "28",
        "--epochs",
        "5",
        "--patience",
        "1",
        "--out",
        tmp_path / "r",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["epochs"] == 2 and summary["stopped"] == "early" and summary["best_epoch"] == 1


@pytest.mark.gpu
def test_cuda_defaults_to_mixed_precision_and_the_device_feeder(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    args = ["binary", "--data", npz, "--model", "resnet18", "--img-size", "28", "--batch-size", "8", "--device", "cuda"]
    res = train_cli(*args, "--epochs", "1", "--out", tmp_path / "auto")
    assert res.exit_code == 0, res.stderr
    runtime = json.loads((tmp_path / "auto" / "run.json").read_text())["runtime"]
    assert runtime["amp"] == "auto" and runtime["amp_dtype"] == (
        "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    )
    assert runtime["feed"] == "device" and "free on the GPU" in runtime["feed_reason"] and runtime["cudnn_benchmark"]
    res = train_cli(*args, "--epochs", "1", "--no-amp", "--feed", "pinned", "--out", tmp_path / "fp32")
    assert res.exit_code == 0, res.stderr
    runtime = json.loads((tmp_path / "fp32" / "run.json").read_text())["runtime"]
    assert runtime["amp_dtype"] == "None" and runtime["feed"] == "pinned"


@pytest.mark.gpu
def test_cuda_amp_channels_last_compile(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "mini.npz")
    for dtype in ("bf16", "fp16"):
        res = train_cli(
            "binary",
            "--data",
            npz,
            "--model",
            "resnet18",
            "--img-size",
            "28",
            "--batch-size",
            "8",
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--amp",
            "--amp-dtype",
            dtype,
            "--compile",
            "--out",
            tmp_path / dtype,
            "--json",
        )
        assert res.exit_code == 0, res.stderr
        state = torch.load(tmp_path / dtype / "checkpoints" / "last.pt", weights_only=False)
        assert (state["scaler"] is not None) == (dtype == "fp16")
        assert not any(k.startswith("_orig_mod") for k in state["model"])  # compiled wrapper stripped

"""`medkit submit` through the CLI: exit codes 0 / 1 / 2, nothing sent when invalid, the key never printed, and
`medkit train --competition`."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _factories import COMPETITION_IMAGES, png_table, write_prediction_table
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.competitions.rsna import RSNA_SUBTYPES

runner = CliRunner()
RSNA = "rsna-intracranial-hemorrhage-detection"


def _fake_module() -> Any:
    """tests/submit/_fake_kaggle.py (one module, also when tests/submit imported it first)."""
    if "_fake_kaggle" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "submit" / "_fake_kaggle.py"
        spec = importlib.util.spec_from_file_location("_fake_kaggle", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["_fake_kaggle"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["_fake_kaggle"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    with _fake_module().serve(monkeypatch, tmp_path, competitions={RSNA, "siim-isic-melanoma-classification"}) as f:
        yield f


def submit(*args: object) -> Any:
    return runner.invoke(app, ["submit", *map(str, args)], catch_exceptions=False)


def rsna_preds(tmp_path: Path) -> Path:
    images = [i for i, _ in COMPETITION_IMAGES["rsna"]]
    return write_prediction_table(tmp_path / "preds.csv", images, RSNA_SUBTYPES)


def rsna_sample(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "sample.csv"
    pd.DataFrame({"ID": [f"{i}_{s}" for i in ids for s in RSNA_SUBTYPES], "Label": 0.5}).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------- exit 0
def test_dry_run_writes_and_validates_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    res = submit(rsna_preds(tmp_path), "-c", "rsna", "--dry-run", "--out", tmp_path / "sub.csv")
    assert res.exit_code == 0, res.stderr
    assert f"wrote {tmp_path / 'sub.csv'}: 18 rows, valid ({RSNA})" in res.stdout
    assert "dry run: nothing was sent" in res.stdout
    assert "probabilities clipped" not in res.stdout and "error" not in res.stderr
    assert pd.read_csv(tmp_path / "sub.csv").shape == (18, 2)


def test_submit_sends_and_prints_ref_status_and_score(fake: Any, tmp_path: Path) -> None:
    res = submit(rsna_preds(tmp_path), "-c", "rsna", "-m", "cli test", "--out", tmp_path / "s.csv", "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["valid"] is True and record["rows"] == 18 and record["path"] == str(tmp_path / "s.csv")
    assert record["submitted"]["ref"] == 4242 and record["submitted"]["status"] == "COMPLETE"
    assert record["submitted"]["public_score"] == "0.0612"
    assert fake.uploads["blob-1"] == (tmp_path / "s.csv").read_bytes()
    assert fake.calls[2].body["submissionDescription"] == "cli test"
    plain = submit(rsna_preds(tmp_path), "-c", "rsna", "--out", tmp_path / "s.csv", "--wait", "0")
    assert plain.exit_code == 0 and "submitted: ref 4242" in plain.stdout and "status" not in plain.stdout


def test_status_and_download(fake: Any, tmp_path: Path) -> None:
    fake.files = {"sample_submission.csv": b"image_name,target\nISIC_0052060,0\n"}
    res = submit("-c", "siim-isic", "--download", "--file", "sample_submission.csv", "--out", tmp_path / "d", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["files"] == [str(tmp_path / "d" / "sample_submission.csv")]
    assert submit("-c", "siim-isic", "--status", "--json").stdout.count('"ref"') == 0
    submit(rsna_preds(tmp_path), "-c", "rsna", "--out", tmp_path / "s.csv", "--wait", "0")
    table = submit("-c", "rsna", "--status")
    assert table.exit_code == 0 and "4242" in table.stdout and "COMPLETE" in table.stdout


# ---------------------------------------------------------------------------------------------- exit 1
def test_invalid_submission_exits_1_and_sends_nothing(fake: Any, tmp_path: Path) -> None:
    ids = [i for _, i in COMPETITION_IMAGES["rsna"]] + ["ID_0000000ff"]
    res = submit(
        rsna_preds(tmp_path), "-c", "rsna", "--sample", rsna_sample(tmp_path, ids), "--out", tmp_path / "s.csv"
    )
    assert res.exit_code == 1
    assert "NOT valid" in res.stdout and "nothing was sent" in res.stdout
    assert "missing_predictions" in res.stderr and "ID_0000000ff_epidural" in res.stderr
    assert fake.calls == []  # not even the credentials were used


def test_a_submission_kaggle_fails_to_score_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with _fake_module().serve(monkeypatch, tmp_path, score_status="ERROR"):
        res = submit(rsna_preds(tmp_path), "-c", "rsna", "--out", tmp_path / "s.csv", "--wait", "5")
    assert res.exit_code == 1 and "submitted: ref 4242, status ERROR" in res.stdout


# ---------------------------------------------------------------------------------------------- exit 2
def test_wrong_key_exits_2_and_the_key_is_never_printed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wrong = "s3cret-wrong-key-42"
    with _fake_module().serve(monkeypatch, tmp_path, key=wrong):
        res = runner.invoke(
            app, ["-v", "submit", str(rsna_preds(tmp_path)), "-c", "rsna", "--out", str(tmp_path / "s")]
        )
    assert res.exit_code == 2
    assert "401" in res.stderr and "hint:" in res.stderr
    assert wrong not in res.stdout + res.stderr
    import base64

    assert base64.b64encode(f"medkit-tester:{wrong}".encode()).decode() not in res.stdout + res.stderr


def test_the_key_is_not_printed_on_success_either(fake: Any, tmp_path: Path) -> None:
    key = _fake_module().KEY
    res = runner.invoke(app, ["-v", "submit", str(rsna_preds(tmp_path)), "-c", "rsna", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0 and key not in res.stdout + res.stderr


def test_missing_credentials_exit_2_with_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    res = submit(rsna_preds(tmp_path), "-c", "rsna", "--out", tmp_path / "s.csv")
    assert res.exit_code == 2
    assert "no Kaggle credentials found" in res.stderr and str(tmp_path / "cfg") in res.stderr
    assert res.stdout.startswith(f"wrote {tmp_path / 's.csv'}: 18 rows, valid")  # checked and written first


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    preds = write_prediction_table(tmp_path / "p.csv", [i for i, _ in COMPETITION_IMAGES["ranzcr"]], ["ETT - Normal"])
    code = submit(preds, "-c", "ranzcr")
    assert code.exit_code == 2 and "ranzcr is a code competition" in code.stderr and "--kernel" in code.stderr
    assert submit("-c", "rsna").exit_code == 2
    assert "did you mean 'rsna'" in submit(preds, "-c", "rnsa", "--dry-run").stderr
    both = submit(preds, "-c", "rsna", "--status")
    assert both.exit_code == 2 and "take no predictions" in both.stderr
    unknown = submit(preds, "-c", "some-new-challenge", "--dry-run")
    assert unknown.exit_code == 2 and "--sample" in unknown.stderr
    assert submit(tmp_path / "missing.csv", "-c", "rsna", "--dry-run").exit_code == 2


# ---------------------------------------------------------------------------------------------- --kernel
def test_kernel_dry_run_builds_the_bundle_from_the_sidecar_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    run = tmp_path / "runs" / "panda-b0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {"data": str(_tiles(tmp_path / "tiles"))}}))
    (run / "checkpoints" / "best.pt").write_bytes(b"w")
    preds = write_prediction_table(
        tmp_path / "preds.csv",
        [i for i, _ in COMPETITION_IMAGES["panda"]],
        [">0", ">1", ">2", ">3", ">4"],
        grades=[1, 2, 3],
    )
    meta = json.loads((tmp_path / "preds.json").read_text())
    (tmp_path / "preds.json").write_text(json.dumps({**meta, "sources": [str(run)]}))
    bundle = tmp_path / "bundle"
    res = submit(preds, "-c", "panda", "--kernel", "--dry-run", "--owner", "alice", "--out", bundle, "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["bundle"]["runs"] == ["panda-b0"] and record["pushed"] is None
    assert (bundle / "submission.csv").read_text().startswith("image_id,isup_grade\n")  # the local check
    assert (bundle / "dataset" / "runs" / "panda-b0" / "checkpoints" / "best.pt").is_file()
    script = next((bundle / "kernel").glob("*.py")).read_text()
    assert "'--level', '1', '--n', '16', '--size', '32'" in script and "'--mosaic', '4x4'" in script
    no_owner = submit(preds, "-c", "panda", "--kernel", "--dry-run", "--out", bundle)
    assert no_owner.exit_code == 2 and "--owner" in no_owner.stderr


def _tiles(folder: Path) -> Path:
    """A `medkit tile` output as its done markers record it: level 1, 16 tiles of 32 px, a 4x4 mosaic."""
    (folder / "index").mkdir(parents=True)
    done = {
        "key": {"version": 1, "level": 1, "size": 32, "tissue": "white", "white_threshold": 230},
        "outputs": {"n": 16, "min_tissue": 0.0, "format": "none", "mosaic": [4, 4], "masks_dir": None},
    }
    (folder / "index" / "a.done.json").write_text(json.dumps(done))
    return folder


def test_kernel_run_takes_the_root_of_a_fold_all_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    root = tmp_path / "runs" / "wsi"
    for k in range(2):  # `medkit train --fold all`: run.json in the folds only
        (root / f"fold{k}" / "checkpoints").mkdir(parents=True)
        (root / f"fold{k}" / "run.json").write_text(json.dumps({"config": {"data": str(_tiles(tmp_path / f"t{k}"))}}))
        (root / f"fold{k}" / "checkpoints" / "best.pt").write_bytes(b"w")
        (root / f"fold{k}" / "oof.csv").write_text("image,target\n")
    bundle = tmp_path / "bundle"
    res = submit("-c", "panda", "--kernel", "--run", root, "--dry-run", "--owner", "alice", "--out", bundle, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["bundle"]["runs"] == ["wsi"]
    copied = bundle / "dataset" / "runs" / "wsi"
    assert all((copied / f"fold{k}" / name).is_file() for k in (0, 1) for name in ("checkpoints/best.pt", "oof.csv"))
    (root / "fold1" / "run.json").write_text(json.dumps({"mask_col": "mask", "config": {"data": str(tmp_path / "t1")}}))
    masked = submit("-c", "panda", "--kernel", "--run", root, "--dry-run", "--owner", "alice", "--out", tmp_path / "m")
    assert masked.exit_code == 2 and "--mask-col none" in masked.stderr and not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------- train --competition
def test_train_competition_sets_metric_and_labels(tmp_path: Path) -> None:
    labels = {s: [i % 2 for i in range(16)] for s in RSNA_SUBTYPES}
    table = png_table(tmp_path, labels, 16)
    fast = ["--model", "cnn_small", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
    args = ["train", "multilabel", "--data", str(tmp_path), "--labels", str(table), "--fold", "0", *fast]
    res = runner.invoke(app, [*args, "--competition", "rsna", "--dry-run", "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metric"] == "rsna_logloss"  # the multilabel task's own metric is auc
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert tuple(config["task"]["labels"]) == RSNA_SUBTYPES and config["task"]["metric"] == "rsna_logloss"
    mine = runner.invoke(
        app, [*args, "--competition", "rsna", "--metric", "auc", "--dry-run", "--out", str(tmp_path / "r2")]
    )
    assert mine.exit_code == 0, mine.stderr
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["config"]["task"]["metric"] == "auc"


def test_kernel_push_creates_the_dataset_and_the_notebook(fake: Any, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "cxr-b2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "checkpoints" / "best.pt").write_bytes(b"w")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "medkit-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    args = ["-c", "ranzcr", "--kernel", "--run", run, "--wheels", tmp_path / "wheels", "--out", tmp_path / "b"]
    res = submit(*args, "--json")
    assert res.exit_code == 0, res.stderr
    pushed = json.loads(res.stdout)["pushed"]
    assert pushed["kernel"] == "medkit-tester/medkit-ranzcr-inference" and pushed["version"] == 1
    assert pushed["dataset"] == "medkit-tester/medkit-ranzcr-weights"
    methods = [c.path.rsplit("/", 1)[-1] for c in fake.calls if c.method == "POST"]
    assert methods[0] == "GetDatasetStatus" and methods[-2:] == ["CreateDataset", "SaveKernel"]
    assert fake.calls[-1].body["enableInternet"] is False


def test_kernel_checks_the_runs_before_writing_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blend names no runs: --kernel fails at once, and leaves no submission.csv (nor the bundle folder)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    preds = write_prediction_table(
        tmp_path / "blend.csv",
        [i for i, _ in COMPETITION_IMAGES["panda"]],
        [">0", ">1", ">2", ">3", ">4"],
        grades=[1, 2, 3],
    )
    bundle = tmp_path / "bundle"
    res = submit(preds, "-c", "panda", "--kernel", "--dry-run", "--owner", "alice", "--out", bundle)
    assert res.exit_code == 2 and "--kernel needs the runs" in res.stderr
    assert not bundle.exists()
    run = tmp_path / "runs" / "panda-b0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {"data": str(tmp_path / "gone")}}))
    (run / "checkpoints" / "best.pt").write_bytes(b"w")
    args = [preds, "-c", "panda", "--kernel", "--run", run, "--dry-run", "--owner", "alice", "--out", bundle]
    lost = submit(*args)
    assert lost.exit_code == 2 and "--tile-args" in lost.stderr and not bundle.exists()
    given = submit(*args, "--tile-args", "--level 1 --n 16 --size 32 --mosaic 4x4", "--json")
    assert given.exit_code == 0, given.stderr
    script = next((bundle / "kernel").glob("*.py")).read_text()
    assert "TILE = ['--level', '1', '--n', '16', '--size', '32', '--mosaic', '4x4']" in script
    assert (bundle / "submission.csv").is_file()

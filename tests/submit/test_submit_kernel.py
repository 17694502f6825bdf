"""The offline kernel bundle of a code competition: metadata, copied run files, wheels, and the generated script
(which compiles, and runs the right medkit commands)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medkit.errors import DataError, UsageError
from medkit.registries import COMPETITIONS
from medkit.submit import build_kernel_bundle, expected_dependencies, run_files


def make_run(path: Path, folds: int = 0, root_json: bool = True, **record: object) -> Path:
    """A run folder as medkit train writes it (files with dummy bytes); ``record`` goes into each run.json."""
    for base in [path, *[path / f"fold{k}" for k in range(folds)]]:
        (base / "checkpoints").mkdir(parents=True)
        (base / "run.json").write_text(json.dumps({"spec": {}, **record}))
        (base / "oof.csv").write_text("image,target,>0_prob\n")
        (base / "checkpoints" / "best.pt").write_bytes(b"best")
        (base / "checkpoints" / "last.pt").write_bytes(b"last")
        (base / "metrics.csv").write_text("epoch\n1\n")
    if folds:
        (path / "cv.json").write_text("{}")
        (path / "checkpoints" / "best.pt").unlink()
        if not root_json:  # what `medkit train --fold all` writes: the folds' run.json only
            (path / "run.json").unlink()
    return path


def make_tiles(folder: Path, slides: int = 2, **settings: object) -> Path:
    """The index/*.done.json of a `medkit tile` output (default: level 1, 16 tiles of 32 px in a 4x4 mosaic)."""
    key = {"version": 1, "level": 1, "size": 32, "tissue": "white", "white_threshold": 230}
    outputs = {"n": 16, "min_tissue": 0.0, "format": "none", "mosaic": [4, 4], "masks_dir": None}
    key.update({k: v for k, v in settings.items() if k in key})
    outputs.update({k: v for k, v in settings.items() if k in outputs})
    (folder / "index").mkdir(parents=True, exist_ok=True)
    for i in range(slides):
        (folder / "index" / f"s{i}.done.json").write_text(json.dumps({"key": key, "outputs": outputs, "rows": []}))
    (folder / "tiles.csv").write_text("image,slide_id\n")
    return folder


def wsi_run(tmp_path: Path, name: str = "wsi", tiles: str = "tiles", **record: object) -> Path:
    """A --fold all root trained (from tmp_path) on ``tiles``, as run.json records it: relative paths."""
    config = {"data": tiles, "labels": f"{tiles}/tiles.csv", "out": f"runs/{name}"}
    run = make_run(tmp_path / "runs" / name, folds=2, root_json=False, config=config, **record)
    for k in range(2):  # each fold records its own --out
        doc = json.loads((run / f"fold{k}" / "run.json").read_text())
        doc["config"]["out"] = f"runs/{name}/fold{k}"
        (run / f"fold{k}" / "run.json").write_text(json.dumps(doc))
    return run


def _bundle(tmp_path: Path, name: str = "ranzcr", **kw: object) -> object:
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "medkit-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / "pytorch_optimizer-3.1.0-py3-none-any.whl").write_bytes(b"wheel")
    runs = [make_run(tmp_path / "runs" / "cxr-effnet", folds=2), make_run(tmp_path / "other" / "cxr-effnet")]
    return build_kernel_bundle(COMPETITIONS.create(name), runs, tmp_path / "bundle", "alice", wheels_from=wheels, **kw)


def test_bundle_metadata_disables_the_internet_and_names_the_sources(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    meta = json.loads((bundle.kernel_dir / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/medkit-ranzcr-inference" and meta["enable_internet"] is False
    assert meta["competition_sources"] == ["ranzcr-clip-catheter-line-classification"]
    assert meta["dataset_sources"] == ["alice/medkit-ranzcr-weights"]
    assert meta["language"] == "python" and meta["kernel_type"] == "script" and meta["is_private"] is True
    assert (bundle.kernel_dir / meta["code_file"]).is_file()
    assert meta["title"].replace(" ", "-") == "medkit-ranzcr-inference"  # the title resolves to the id's slug
    data = json.loads((bundle.dataset_dir / "dataset-metadata.json").read_text())
    assert data["id"] == "alice/medkit-ranzcr-weights" and len(data["licenses"]) == 1
    assert 6 <= len(data["title"]) <= 50


def test_bundle_copies_the_best_checkpoints_and_the_wheels(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    assert bundle.runs == ("cxr-effnet", "cxr-effnet-2")
    copied = {p.relative_to(bundle.dataset_dir).as_posix() for p in (bundle.dataset_dir / "runs").rglob("*.*")}
    assert copied == {
        "runs/cxr-effnet/run.json",
        "runs/cxr-effnet/cv.json",
        "runs/cxr-effnet/oof.csv",
        "runs/cxr-effnet/fold0/run.json",
        "runs/cxr-effnet/fold0/oof.csv",
        "runs/cxr-effnet/fold0/checkpoints/best.pt",
        "runs/cxr-effnet/fold1/run.json",
        "runs/cxr-effnet/fold1/oof.csv",
        "runs/cxr-effnet/fold1/checkpoints/best.pt",
        "runs/cxr-effnet-2/run.json",
        "runs/cxr-effnet-2/oof.csv",
        "runs/cxr-effnet-2/checkpoints/best.pt",
    }  # no last.pt, no metrics; oof.csv: the cut points of ordinal grades are fitted on it
    assert bundle.wheels == ("medkit-0.1.0-py3-none-any.whl", "pytorch_optimizer-3.1.0-py3-none-any.whl")
    manifest = json.loads((bundle.dataset_dir / "bundle.json").read_text())
    assert manifest["runs"] == list(bundle.runs) and manifest["slug"] == "ranzcr-clip-catheter-line-classification"
    deps = expected_dependencies()
    assert "torch" in deps and "kaggle" in deps and "pytest" not in deps  # extras left out
    assert "medkit" not in bundle.missing and "pytorch-optimizer" not in bundle.missing
    assert "torch" in bundle.missing and manifest["missing_wheels"] == list(bundle.missing)


def _script_commands(
    bundle: object, monkeypatch: pytest.MonkeyPatch, sample: Path | None, **constants: object
) -> list[list[str]]:
    code = next(bundle.kernel_dir.glob("*.py")).read_text()  # type: ignore[attr-defined]
    namespace: dict[str, object] = {"__name__": "medkit_kernel"}
    exec(compile(code, "kernel.py", "exec"), namespace)  # noqa: S102  (the generated script is what we test)
    if sample is not None:
        namespace["SAMPLE"] = sample
    namespace.update(constants)
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append(list(args)))
    namespace["main"]()  # type: ignore[operator]
    return calls


def test_the_script_installs_offline_predicts_and_writes_the_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path)
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("StudyInstanceUID\n")
    install, predict, submit = _script_commands(bundle, monkeypatch, sample)
    weights = "/kaggle/input/medkit-ranzcr-weights"
    assert install == [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        f"{weights}/wheels",
        "medkit",
    ]
    assert predict == [
        sys.executable, "-m", "medkit", "predict", f"{weights}/runs/cxr-effnet", f"{weights}/runs/cxr-effnet-2",
        "--data", "/kaggle/input/ranzcr-clip-catheter-line-classification/test",
        "--out", "/kaggle/working/preds.csv",
    ]  # fmt: skip
    assert submit == [
        sys.executable, "-m", "medkit", "submit", "/kaggle/working/preds.csv", "--competition", "ranzcr",
        "--sample", str(sample), "--dry-run", "--out", "/kaggle/working/submission.csv",
    ]  # fmt: skip


def test_the_panda_script_tiles_the_slides_as_the_runs_training_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tiles(tmp_path / "tiles", level=0, size=32, n=16, mosaic=[4, 4], white_threshold=220)
    run = wsi_run(tmp_path)
    monkeypatch.chdir(tmp_path / "runs")  # the training folder is found from the run's recorded --out, not cwd
    out = tmp_path / "bundle"
    bundle = build_kernel_bundle(COMPETITIONS.create("panda"), [run], out, "alice", predict_args=["--tta", "hflip"])
    _, tile, predict, submit = _script_commands(bundle, monkeypatch, None)
    data = "/kaggle/input/prostate-cancer-grade-assessment"
    assert tile[3:] == ["tile", f"{data}/test_images", "--out", "/kaggle/working/tiles", "--level", "0", "--n", "16",
                        "--size", "32", "--tissue", "white", "--min-tissue", "0.0", "--white-threshold", "220",
                        "--format", "none", "--mosaic", "4x4"]  # fmt: skip
    manifest = json.loads((bundle.dataset_dir / "bundle.json").read_text())
    assert manifest["tile_args"] == tile[7:]
    assert predict[-6:] == ["--labels", "/kaggle/working/tiles/tiles.csv", "--out", "/kaggle/working/preds.csv",
                            "--tta", "hflip"]  # fmt: skip
    assert "--sample" not in submit and submit[5:7] == ["--competition", "panda"]


def test_the_script_passes_the_competitions_test_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path, "siim-isic")
    source = next(bundle.kernel_dir.glob("*.py")).read_text()
    assert "TEST_TABLE = DATA / 'test.csv'" in source and "TEST_DIR = DATA / 'jpeg/test'" in source
    table = tmp_path / "test.csv"
    table.write_text("image_name\n")
    _, predict, _ = _script_commands(bundle, monkeypatch, None, TEST_TABLE=table)
    data = "/kaggle/input/siim-isic-melanoma-classification/jpeg/test"
    assert predict[predict.index("--data") :][:4] == ["--data", data, "--labels", str(table)]


def test_build_wheel_runs_pip_wheel_offline_into_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    built_from: list[Path] = []

    def fake_pip(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        seen.append(cmd)
        if (Path(cmd[4]) / "pyproject.toml").is_file() and (Path(cmd[4]) / "medkit" / "submit").is_dir():
            built_from.append(Path(cmd[4]))
        Path(cmd[cmd.index("-w") + 1], "medkit-9.9-py3-none-any.whl").write_bytes(b"built")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    runs = [make_run(tmp_path / "r")]
    bundle = build_kernel_bundle(COMPETITIONS.create("rsna"), runs, tmp_path / "b", "alice", build_wheel=True)
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "wheel"] and "--no-deps" in cmd and "--no-build-isolation" in cmd
    assert Path(cmd[-1]).parts[-2:] == ("dataset", "wheels")  # staged, then moved into place
    assert (bundle.dataset_dir / "wheels" / "medkit-9.9-py3-none-any.whl").is_file()
    assert built_from  # pip saw a source tree: pyproject.toml and the medkit package
    assert not built_from[0].is_relative_to(Path(__file__).resolve().parents[2])  # a copy, not the checkout
    assert bundle.wheels == ("medkit-9.9-py3-none-any.whl",) and "medkit" not in bundle.missing


def test_bundle_errors(tmp_path: Path) -> None:
    comp = COMPETITIONS.create("ranzcr")
    with pytest.raises(UsageError, match="needs the runs"):
        build_kernel_bundle(comp, [], tmp_path / "b", "alice")
    with pytest.raises(UsageError, match="not a Kaggle user name"):
        build_kernel_bundle(comp, [make_run(tmp_path / "r")], tmp_path / "b", "alice smith")
    (tmp_path / "notrun").mkdir()
    with pytest.raises(DataError, match="not a run folder"):
        run_files(tmp_path / "notrun")
    (tmp_path / "nobest").mkdir()
    (tmp_path / "nobest" / "run.json").write_text("{}")
    with pytest.raises(DataError, match="no checkpoints/best.pt"):
        run_files(tmp_path / "nobest")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .whl files"):
        build_kernel_bundle(comp, [make_run(tmp_path / "r2")], tmp_path / "b", "alice", wheels_from=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- what the runs need
def test_the_root_of_a_fold_all_run_is_bundled_with_every_fold(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "cxr", folds=2, root_json=False)
    assert sorted(p.as_posix() for p in run_files(run)) == [
        "cv.json", "fold0/checkpoints/best.pt", "fold0/oof.csv", "fold0/run.json",
        "fold1/checkpoints/best.pt", "fold1/oof.csv", "fold1/run.json", "oof.csv",
    ]  # fmt: skip
    bundle = build_kernel_bundle(COMPETITIONS.create("ranzcr"), [run], tmp_path / "b", "alice")
    assert bundle.runs == ("cxr",)
    assert (bundle.dataset_dir / "runs" / "cxr" / "fold1" / "checkpoints" / "best.pt").is_file()


def test_a_run_that_stacks_masks_is_refused(tmp_path: Path) -> None:
    make_tiles(tmp_path / "tiles")
    run = wsi_run(tmp_path, mask_col="mask")
    with pytest.raises(DataError, match="column 'mask' as an input channel") as err:
        build_kernel_bundle(COMPETITIONS.create("panda"), [run], tmp_path / "b", "alice")
    assert "--mask-col none" in err.value.hint
    assert not (tmp_path / "b").exists()


def test_the_tiling_must_be_found_or_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    panda = COMPETITIONS.create("panda")
    run = wsi_run(tmp_path)  # no tiles/ folder: moved, or trained elsewhere
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="cannot find the `medkit tile` output") as err:
        build_kernel_bundle(panda, [run], tmp_path / "b", "alice")
    assert "--tile-args" in err.value.hint and not (tmp_path / "b").exists()
    given = ["--level", "1", "--n", "4", "--size", "64", "--mosaic", "2x2"]
    bundle = build_kernel_bundle(panda, [run], tmp_path / "b", "alice", tile_args=given)
    assert f"TILE = {given!r}" in next(bundle.kernel_dir.glob("*.py")).read_text()
    make_tiles(tmp_path / "tiles")
    (tmp_path / "tiles" / "index" / "s1.done.json").write_text(
        (tmp_path / "tiles" / "index" / "s1.done.json").read_text().replace('"level": 1', '"level": 2')
    )  # --mpp: one level per slide
    with pytest.raises(DataError, match="tiled with different settings"):
        build_kernel_bundle(panda, [run], tmp_path / "b2", "alice")
    make_tiles(tmp_path / "tiles")
    make_tiles(tmp_path / "tiles2", size=64)
    other = wsi_run(tmp_path, "wsi2", tiles="tiles2")
    with pytest.raises(DataError, match="differently tiled data"):
        build_kernel_bundle(panda, [run, other], tmp_path / "b2", "alice")


def test_a_failed_bundle_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    comp = COMPETITIONS.create("ranzcr")
    good = build_kernel_bundle(comp, [make_run(tmp_path / "r")], tmp_path / "b", "alice")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in good.root.rglob("*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .whl files"):  # fails while writing, after the checks
        build_kernel_bundle(comp, [make_run(tmp_path / "r2")], tmp_path / "b", "alice", wheels_from=tmp_path / "empty")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in good.root.rglob("*")) == before
    with pytest.raises(DataError, match="no .whl files"):
        build_kernel_bundle(comp, [make_run(tmp_path / "r3")], tmp_path / "new", "bob", wheels_from=tmp_path / "empty")
    assert not (tmp_path / "new").exists()


def test_the_bundled_runs_predict_the_same_grades_as_the_originals(tmp_path: Path) -> None:
    """oof.csv travels with the runs, so `medkit predict` fits the same cut points inside the notebook."""
    import cv2
    import numpy as np
    import pandas as pd
    from typer.testing import CliRunner

    from medkit.cli.main import app

    rng = np.random.default_rng(0)
    (tmp_path / "d" / "mosaics").mkdir(parents=True)
    rows = []
    for i in range(12):
        cv2.imwrite(str(tmp_path / "d" / "mosaics" / f"s{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        rows.append({"image": f"mosaics/s{i}.png", "isup_grade": i % 6, "fold": i % 2})
    table = tmp_path / "d" / "tiles.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    runner = CliRunner()
    run = tmp_path / "runs" / "wsi"
    train = ["train", "wsi", "--data", tmp_path / "d", "--labels", table, "--fold", "all", "--model", "cnn_small",
             "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--workers", "0",
             "--out", run]  # fmt: skip
    res = runner.invoke(app, list(map(str, train)), catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    given = ["--n", "4", "--size", "16", "--mosaic", "2x2"]
    bundle = build_kernel_bundle(COMPETITIONS.create("panda"), [run], tmp_path / "b", "alice", tile_args=given)
    grades = {}
    for name, runs in (("orig", run), ("bundled", bundle.dataset_dir / "runs" / "wsi")):
        args = ["predict", runs, "--data", tmp_path / "d", "--labels", table, "--device", "cpu", "--workers", "0"]
        res = runner.invoke(app, [*map(str, args), "--out", str(tmp_path / f"{name}.csv"), "--json"])
        assert res.exit_code == 0, res.stderr
        grades[name] = (json.loads(res.stdout)["cut_points"], pd.read_csv(tmp_path / f"{name}.csv")["grade"].tolist())
    meta = json.loads((tmp_path / "orig.json").read_text())
    assert "QWK-optimised" in meta["details"]["cut_points_from"]  # not the 0.5, 1.5, ... of a run without oof.csv
    assert grades["bundled"] == grades["orig"]

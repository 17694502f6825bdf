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


def make_run(path: Path, folds: int = 0) -> Path:
    """A run folder as medkit train writes it (files with dummy bytes)."""
    for base in [path, *[path / f"fold{k}" for k in range(folds)]]:
        (base / "checkpoints").mkdir(parents=True)
        (base / "run.json").write_text(json.dumps({"spec": {}}))
        (base / "checkpoints" / "best.pt").write_bytes(b"best")
        (base / "checkpoints" / "last.pt").write_bytes(b"last")
        (base / "metrics.csv").write_text("epoch\n1\n")
    if folds:
        (path / "cv.json").write_text("{}")
        (path / "checkpoints" / "best.pt").unlink()
    return path


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
        "runs/cxr-effnet/fold0/run.json",
        "runs/cxr-effnet/fold0/checkpoints/best.pt",
        "runs/cxr-effnet/fold1/run.json",
        "runs/cxr-effnet/fold1/checkpoints/best.pt",
        "runs/cxr-effnet-2/run.json",
        "runs/cxr-effnet-2/checkpoints/best.pt",
    }  # no last.pt, no metrics
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


def test_the_panda_script_tiles_the_slides_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _bundle(tmp_path, "panda", predict_args=["--tta", "hflip"])
    _, tile, predict, submit = _script_commands(bundle, monkeypatch, None)
    data = "/kaggle/input/prostate-cancer-grade-assessment"
    assert tile[3:] == ["tile", f"{data}/test_images", "--out", "/kaggle/working/tiles", "--n", "36", "--size", "256",
                        "--mosaic", "6x6"]  # fmt: skip
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
    assert cmd[-1] == str(bundle.dataset_dir / "wheels")
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

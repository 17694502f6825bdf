"""`--logger`: names, the missing-package error, and what TensorBoard and MLflow receive (fake modules that record
every call, injected into sys.modules: neither package is needed to test the interface)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.engine.loggers import Logger, RunLoggers, check_loggers, open_loggers, parse_loggers
from medkit.errors import UnknownNameError, UsageError

runner = CliRunner()
FAST = ["--model", "cnn_small", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


class Calls(list):
    """(name, args, kwargs) of every call made to a fake module."""

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self if n == name]


def fake_mlflow(calls: Calls) -> types.ModuleType:
    mod = types.ModuleType("mlflow")
    for name in ("start_run", "set_tag", "log_params", "log_metrics", "log_artifact", "end_run"):
        setattr(mod, name, lambda *a, _n=name, **k: calls.append((_n, a, k)))
    return mod


def fake_tensorboard(calls: Calls) -> types.ModuleType:
    mod = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", (log_dir,), {}))

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: calls.append((name, a, k))

    mod.SummaryWriter = SummaryWriter
    return mod


def test_logger_names_parse_with_csv_always_first() -> None:
    assert parse_loggers(None) == ("csv",)
    assert parse_loggers(["mlflow,tensorboard", "csv", "MLflow"]) == ("csv", "mlflow", "tensorboard")
    with pytest.raises(UnknownNameError, match="did you mean 'tensorboard'"):
        parse_loggers(["tensorbord"])


@pytest.mark.parametrize(("name", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, name: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a module that cannot be imported
    with pytest.raises(UsageError) as info:
        check_loggers(["csv", name])
    assert f"--logger {name} needs the '{name}' package" in info.value.message
    assert f"pip install 'medkit[{name}]'" in (info.value.hint or "")


def test_cli_refuses_a_missing_logger_before_reading_any_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    res = runner.invoke(app, ["train", "binary", "--data", str(tmp_path / "absent.npz"), "--logger", "mlflow"])
    assert res.exit_code == 2 and "needs the 'mlflow' package" in res.stderr and "medkit[mlflow]" in res.stderr
    assert not (tmp_path / "absent.npz").exists() and "Traceback" not in res.stderr


def test_tensorboard_receives_config_scalars_pictures_and_close(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import matplotlib.pyplot as plt

    calls = Calls()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tensorboard(calls))
    fig = plt.figure(figsize=(1, 0.5))
    fig.savefig(tmp_path / "p.png", dpi=40)
    plt.close(fig)
    loggers = open_loggers(["csv", "tensorboard"], tmp_path, {"task": {"name": "binary"}, "seed": 3})
    history = [{"epoch": 1, "stage": 1, "train_loss": 0.5, "auc": 0.7, "note": "x", "val_loss": float("nan")}]
    loggers.log_epoch(history)
    loggers.log_pictures([tmp_path / "p.png"], 1)
    loggers.log_results({"best": 0.7, "test": {"auc": 0.6}}, 1)
    loggers.close("finished")
    assert calls.named("init")[0][0] == (str(tmp_path / "tensorboard"),)
    assert '"seed": 3' in calls.named("add_text")[0][0][1]
    scalars = {a[0]: (a[1], a[2]) for a, _ in calls.named("add_scalar")}
    assert scalars["train_loss"] == (0.5, 1) and scalars["auc"] == (0.7, 1) and scalars["stage"] == (1.0, 1)
    assert "val_loss" not in scalars and "note" not in scalars  # NaN and text are not scalars
    assert scalars["results/test/auc"] == (0.6, 1)
    (tag, image, step), kw = calls.named("add_image")[0]
    assert tag == "pictures/p" and image.shape == (20, 40, 3) and image.dtype.name == "uint8" and step == 1
    assert kw == {"dataformats": "HWC"} and calls.named("close")
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,stage,train_loss,auc")


def test_mlflow_run_gets_params_metrics_per_epoch_pictures_and_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, medmnist_writer
) -> None:  # noqa: ANN001
    calls = Calls()
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(calls))
    npz = medmnist_writer(tmp_path / "mini.npz", (24, 16, 16))
    out = tmp_path / "run"
    args = ["train", "binary", "--data", str(npz), *FAST, "--epochs", "2", "--out", str(out), "--logger", "mlflow"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert calls.named("start_run")[0][1] == {"run_name": "run"}
    params = {k: v for a, _ in calls.named("log_params") for k, v in a[0].items()}
    assert params["task.name"] == "binary" and params["seed"] == "0" and params["loggers"] == '["csv", "mlflow"]'
    epochs = [(k["step"], a[0]) for a, k in calls.named("log_metrics") if "train_loss" in a[0]]
    assert [s for s, _ in epochs] == [1, 2] and all({"val_loss", "auc", "lr"} <= set(m) for _, m in epochs)
    results = [a[0] for a, k in calls.named("log_metrics") if "results/best" in a[0]]
    assert results and results[0]["results/best"] == json.loads((out / "run.json").read_text())["results"]["best"]
    artifacts = [Path(a[0]).name for a, _ in calls.named("log_artifact")]
    assert {"curve.png", "val_roc.png", "test_confusion.png", "run.json"} <= set(artifacts)
    assert calls.named("end_run") == [((), {"status": "FINISHED"})]
    assert (out / "metrics.csv").is_file()  # csv stays on


class Broken(Logger):
    def log_epoch(self, history: Any) -> None:
        raise ConnectionError("tracking server gone")


def test_a_failing_logger_is_dropped_with_a_warning_but_csv_errors_stop_the_run(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    loggers = RunLoggers([("remote", Broken())])
    loggers.log_epoch([{"epoch": 1}])
    assert loggers.names == [] and "logger 'remote' failed" in capsys.readouterr().err
    with pytest.raises(ConnectionError):
        RunLoggers([("csv", Broken())]).log_epoch([{"epoch": 1}])

"""Experiment loggers (``medkit train --logger csv,tensorboard,mlflow``): the config, the metrics of every epoch,
the pictures and the results of a run, sent where users already look.

``csv`` is the run directory's own metrics.csv and is always on; ``tensorboard`` and ``mlflow`` are optional
extras (``pip install 'medkit[tensorboard]'`` / ``'medkit[mlflow]'``), imported only when chosen. Loggers are
registered in ``medkit.registries.LOGGERS``; a plugin adds one through the entry-point group ``medkit.loggers``
with the factory signature ``f(run_dir: pathlib.Path, *, config: dict) -> Logger``.

A logger that fails while the run trains (a tracking server gone away) is switched off with a warning: a lost
dashboard must not cost the training run.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medkit.errors import UsageError
from medkit.registries import LOGGERS

__all__ = ["Logger", "RunLoggers", "parse_loggers", "check_loggers", "resolve_loggers", "open_loggers", "CSV"]

#: The logger that is always on: metrics.csv in the run directory.
CSV = "csv"


class Logger:
    """What a logger receives; every method is optional (the base class ignores everything)."""

    name = ""

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved configuration of the run (once, at the start)."""

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """The rows of metrics.csv so far; the last one is the epoch that just ended."""

    def log_pictures(self, paths: Sequence[Path], step: int) -> None:
        """The PNG pictures of the run (at its end; ``step`` is the last epoch)."""

    def log_results(self, results: dict[str, Any], step: int) -> None:
        """The results recorded in run.json (best metric, validation and test scores) at the end of the run."""

    def close(self, status: str = "finished") -> None:
        """End of the run: ``finished``, ``stopped`` (resumable) or ``failed``."""


def _numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) record, flattened to ``a/b`` names."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}{k}"] = float(v)
    return out


def _require(module: str, package: str, name: str) -> Any:
    """Import an optional dependency of a logger, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"--logger {name} needs the '{package}' package, which is not installed ({exc})",
            hint=f"pip install 'medkit[{package}]' (or pip install {package}), or drop --logger {name}",
        ) from exc


# ---------------------------------------------------------------------------------------------------- built-ins
class CsvLogger(Logger):
    """metrics.csv in the run directory: one row per epoch (always on)."""

    name = CSV

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.csv"

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        from medkit.engine.run import write_metrics

        write_metrics(self.path, history)


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``RUN/tensorboard``: the config as text, scalars per epoch, the pictures."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        tb = _require("torch.utils.tensorboard", "tensorboard", self.name)
        self.writer = tb.SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.log_config(config)

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        row = history[-1]
        step = int(row.get("epoch", len(history)))
        for key, value in _numbers({k: v for k, v in row.items() if k != "epoch"}).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_pictures(self, paths: Sequence[Path], step: int) -> None:
        for path in paths:
            self.writer.add_image(f"pictures/{Path(path).stem}", _read_rgb(path), step, dataformats="HWC")
        self.writer.flush()

    def log_results(self, results: dict[str, Any], step: int) -> None:
        for key, value in _numbers(results, "results/").items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str = "finished") -> None:
        self.writer.close()


class MlflowLogger(Logger):
    """An MLflow run (tracking URI and experiment from MLflow's own ``MLFLOW_*`` variables): the config as params,
    metrics per epoch, the pictures and run.json as artifacts."""

    name = "mlflow"
    _STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow", self.name)
        self.run_dir = Path(run_dir)
        self.mlflow.start_run(run_name=self.run_dir.name)
        self.mlflow.set_tag("medkit.run_dir", str(self.run_dir.resolve()))
        self.log_config(config)

    def log_config(self, config: dict[str, Any]) -> None:
        params = _flat_params(config)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.mlflow.log_params(dict(items[i : i + 100]))

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        row = history[-1]
        step = int(row.get("epoch", len(history)))
        self.mlflow.log_metrics(_numbers({k: v for k, v in row.items() if k != "epoch"}), step=step)

    def log_pictures(self, paths: Sequence[Path], step: int) -> None:
        for path in paths:
            self.mlflow.log_artifact(str(path), artifact_path="pictures")

    def log_results(self, results: dict[str, Any], step: int) -> None:
        self.mlflow.log_metrics(_numbers(results, "results/"), step=step)
        run_json = self.run_dir / "run.json"
        if run_json.is_file():
            self.mlflow.log_artifact(str(run_json))

    def close(self, status: str = "finished") -> None:
        self.mlflow.end_run(status=self._STATUS.get(status, "FINISHED"))


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b`` -> text (MLflow params are strings of at most 500 characters)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[f"{prefix}{k}"] = text[:500]
    return out


def _read_rgb(path: str | Path) -> Any:
    """A PNG as uint8 (H, W, 3)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(path))
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


@LOGGERS.register("csv", requires="")
def csv(run_dir: Path, *, config: dict[str, Any]) -> Logger:
    """metrics.csv in the run directory, one row per epoch (always on)."""
    return CsvLogger(run_dir)


@LOGGERS.register("tensorboard", requires="torch.utils.tensorboard", extra="tensorboard")
def tensorboard(run_dir: Path, *, config: dict[str, Any]) -> Logger:
    """TensorBoard event files in RUN/tensorboard (pip install 'medkit[tensorboard]')."""
    return TensorBoardLogger(run_dir, config)


@LOGGERS.register("mlflow", requires="mlflow", extra="mlflow")
def mlflow(run_dir: Path, *, config: dict[str, Any]) -> Logger:
    """An MLflow run: params, metrics per epoch, pictures and run.json (pip install 'medkit[mlflow]')."""
    return MlflowLogger(run_dir, config)


# ---------------------------------------------------------------------------------------------------- selection
def parse_loggers(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--logger`` values (repeated and/or comma lists) as registry names, ``csv`` first and always there.

    Raises:
        UnknownNameError: A name no logger has (with a suggestion).
    """
    names = [CSV]
    for value in values or ():
        for name in str(value).split(","):
            name = name.strip().lower()
            if name and name not in names:
                _known(name)
                names.append(name)
    return tuple(names)


def _known(name: str) -> None:
    from medkit.errors import UnknownNameError, did_you_mean

    if name not in LOGGERS:
        names = LOGGERS.names()
        raise UnknownNameError(
            f"unknown logger '{name}'{did_you_mean(name, names)}", hint=f"loggers: {', '.join(names)}"
        )


def check_loggers(names: Iterable[str]) -> None:
    """Fail before any work when a chosen logger's optional package is missing.

    Raises:
        UsageError: Naming the package and the install command.
    """
    for name in names:
        entry = LOGGERS.get(name)
        module = entry.flags.get("requires") or ""
        if module:
            _require(module, entry.flags.get("extra") or module, name)


def resolve_loggers(values: Iterable[str] | None) -> tuple[str, ...]:
    """`parse_loggers`, then `check_loggers`: what ``--logger`` resolves to, checked before any work is done."""
    names = parse_loggers(values)
    check_loggers(names)
    return names


class RunLoggers:
    """The loggers of one run behind one call each; a logger other than csv that raises is dropped with a warning."""

    def __init__(self, loggers: Sequence[tuple[str, Logger]]) -> None:
        self.loggers = list(loggers)

    @property
    def names(self) -> list[str]:
        """Names of the loggers still on."""
        return [n for n, _ in self.loggers]

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                if name == CSV:
                    raise
                from medkit.console import warn

                warn(f"logger '{name}' failed ({type(exc).__name__}: {exc}); it is off for the rest of this run")
                self.loggers.remove((name, logger))

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """See `Logger.log_epoch`."""
        self._each("log_epoch", history)

    def log_pictures(self, paths: Sequence[Path], step: int) -> None:
        """See `Logger.log_pictures`."""
        if paths:
            self._each("log_pictures", list(paths), step)

    def log_results(self, results: dict[str, Any], step: int) -> None:
        """See `Logger.log_results`."""
        self._each("log_results", results, step)

    def close(self, status: str = "finished") -> None:
        """Close every logger (once)."""
        self._each("close", status)
        self.loggers = []


def open_loggers(names: Iterable[str], run_dir: str | Path, config: dict[str, Any]) -> RunLoggers:
    """Create the loggers ``names`` for the run in ``run_dir`` (each factory receives the resolved config)."""
    run_dir = Path(run_dir)
    return RunLoggers([(name, LOGGERS.create(name, run_dir, config=config)) for name in names])

"""The medkit command tree, on one screen.

    medkit [--device D] [--config F.toml] [-q] [-v] [--version]
      list KIND [PATTERN]     registered models, losses, optimizers, schedulers, metrics, tasks, competitions, readers
      plugins                 third-party entry points and their status
      inspect FILE...         read images with the medkit readers: layout, dtype, range, DICOM header
      audit DATA              find what is wrong with a dataset before training on it
      split TABLE             patient-grouped, multilabel-stratified, duplicate-aware folds + leakage certificate
      tile SLIDES             cut whole-slide images into the N most tissue-rich tiles
      train TASK              train a model (tasks ct, cxr, wsi, scan, binary, multiclass, multilabel)
      predict RUN...          predict images with trained runs: fold averaging, TTA, neighbours, grades, Grad-CAM
      ensemble PREDS...       blend prediction files: weights searched on OOF, cross-validated estimate
      submit PREDS -c NAME    write, validate and send a competition submission (Kaggle client)

Exit codes: 0 success, 1 problems found, 2 usage/configuration/runtime error, 130 interrupted.
This module must not import torch, timm or cv2: `medkit --help` and tab completion stay fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from medkit import __version__
from medkit.cli import audit, ensemble, inspect_cmd, list_cmd, predict, refine, split, submit, tile, train
from medkit.cli._help import apply_help_layout
from medkit.cli._options import CliState
from medkit.console import error, set_verbosity
from medkit.device import DEVICE_HELP
from medkit.errors import MedkitError

__all__ = ["app", "run"]


_NO_ENV = {"help", "version", "install_completion", "show_completion"}


def _name_env_vars(params: list[Any], prefix: str) -> None:
    """Give every option an environment variable named after its flag: ``MEDKIT_TRAIN_COMPILE`` for ``--compile``.

    Click would name it after the Python parameter (``compile_`` -> ``MEDKIT_TRAIN_COMPILE_``). Options that are
    not settings (``--help``, ``--version``, completion) get none, so a ``MEDKIT_VERSION`` set for another reason
    cannot turn every command into "print the version".
    """
    for param in params:
        if param.param_type_name != "option":
            continue
        if param.name in _NO_ENV:
            param.allow_from_autoenv = False
            param.envvar = None
            continue
        if param.envvar:
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            param.envvar = f"{prefix}_{longs[0][2:].replace('-', '_').upper()}"


class MedkitCommand(TyperCommand):
    """A medkit subcommand: environment variables named after the flags (see `_name_env_vars`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_env_vars(self.params, f"MEDKIT_{(self.name or '').upper().replace('-', '_')}")
        apply_help_layout(self, self.name or "")


class MedkitGroup(TyperGroup):
    """Turns typed errors into a message + exit code, and Ctrl-C into exit 130."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_env_vars(self.params, "MEDKIT")

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist_global_flags(self, args))

    def get_params(self, ctx: Any) -> list[Any]:
        # Typer appends --install-completion / --show-completion after __init__: name (or drop) their variables here.
        params = super().get_params(ctx)
        _name_env_vars(params, "MEDKIT")
        return params

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MedkitError as exc:
            if os.environ.get("MEDKIT_DEBUG"):
                traceback.print_exc()
            error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # `medkit ... | head`: the reader left; exit quietly
            _silence_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:  # a bug: short message, traceback on request
            if os.environ.get("MEDKIT_DEBUG"):
                traceback.print_exc()
                raise
            if type(exc).__module__.startswith(("click", "typer")):
                raise
            error(f"internal error: {type(exc).__name__}: {exc}", "rerun with MEDKIT_DEBUG=1 for the traceback")
            raise typer.Exit(2) from None


_GLOBAL_FLAGS = {"-q", "--quiet", "-v", "--verbose", "-vv", "-vvv"}
_GLOBAL_WITH_VALUE = {"--device", "--config"}


def _hoist_global_flags(group: TyperGroup, args: list[str]) -> list[str]:
    """Move -q / -v given after the subcommand (`medkit train ... -q`) in front of it, where they belong.

    A flag the subcommand defines itself stays where it is; nothing after `--` moves.
    """
    i = 0
    while i < len(args) and args[i] not in group.commands:
        i += 2 if args[i] in _GLOBAL_WITH_VALUE else 1
    if i >= len(args):
        return args
    command = group.commands[args[i]]
    own = {opt for param in command.params for opt in getattr(param, "opts", [])}
    head, tail = args[: i + 1], args[i + 1 :]
    end = tail.index("--") if "--" in tail else len(tail)
    moved = [a for a in tail[:end] if a in _GLOBAL_FLAGS and a not in own]
    if not moved:
        return args
    kept = [a for a in tail[:end] if not (a in _GLOBAL_FLAGS and a not in own)] + tail[end:]
    return head[:i] + moved + head[i:] + kept


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not raise again after a broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


app = typer.Typer(
    name="medkit",
    cls=MedkitGroup,
    help="medkit: medical image classification from raw files to a scored submission.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "MEDKIT"},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"medkit {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    device: Annotated[
        str | None, typer.Option("--device", help=f"Compute device: {DEVICE_HELP}.", envvar="MEDKIT_DEVICE")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file with defaults (flag > MEDKIT_* env > config > default).",
            envvar="MEDKIT_CONFIG",
            dir_okay=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.", envvar="MEDKIT_QUIET")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail (repeat for more).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """medkit: medical image classification from raw files to a scored submission."""
    data: dict[str, Any] = {}
    if config is not None:
        from medkit.config import load_toml, to_default_map

        try:
            data = to_default_map(load_toml(config))
        except MedkitError as exc:
            error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        # Per-command tables become Click's default_map: flag > env var > config file > built-in default.
        ctx.default_map = _command_defaults(ctx, config, data)

        def unset(name: str) -> bool:
            source = ctx.get_parameter_source(name)
            return source is None or source.name == "DEFAULT"

        if unset("device") and "device" in data:
            device = str(data["device"])
        if unset("quiet") and "quiet" in data:
            quiet = bool(data["quiet"])
        if unset("verbose") and "verbose" in data:
            verbose = int(data["verbose"])
    state = ctx.ensure_object(CliState)
    state.device, state.config, state.config_data = device, config, data
    set_verbosity(quiet=quiet, verbose=verbose)


def _command_defaults(ctx: typer.Context, path: Path, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Map each ``[command]`` table's keys (flag names or parameter names) to Click parameter names."""
    from medkit.errors import ConfigError, did_you_mean

    out: dict[str, dict[str, Any]] = {}
    group = ctx.command
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        cmd = group.get_command(ctx, section) if hasattr(group, "get_command") else None
        if cmd is None:
            raise ConfigError(f"{path}: [{section}] is not a medkit command", hint="use tables named after commands")
        names: dict[str, str] = {}
        for param in cmd.params:
            names[param.name] = param.name
            for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if opt.startswith("--"):
                    names[opt[2:].replace("-", "_")] = param.name
        mapped: dict[str, Any] = {}
        for key, value in table.items():
            if key not in names:
                raise ConfigError(
                    f"{path}: unknown option '{key}' in [{section}]{did_you_mean(key, names)}",
                    hint=f"see `medkit {section} --help`",
                )
            mapped[names[key]] = value
        out[section] = mapped
    return out


app.command("list", cls=MedkitCommand)(list_cmd.list_entries)
app.command("plugins", cls=MedkitCommand)(list_cmd.plugins)
app.command("inspect", cls=MedkitCommand)(inspect_cmd.inspect)
app.command("audit", cls=MedkitCommand)(audit.audit)
app.command("split", cls=MedkitCommand)(split.split)
app.command("tile", cls=MedkitCommand)(tile.tile)
app.command("train", cls=MedkitCommand)(train.train)
app.command("refine", cls=MedkitCommand)(refine.refine)
app.command("predict", cls=MedkitCommand)(predict.predict)
app.command("ensemble", cls=MedkitCommand)(ensemble.ensemble)
app.command("submit", cls=MedkitCommand)(submit.submit)


def run() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="medkit")
    except BrokenPipeError:  # raised while printing help or after the command returned
        _silence_stdout()
        sys.exit(0)

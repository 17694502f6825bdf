"""Help and environment: only settings get MEDKIT_* variables, named after flags; piped tables fit."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()


def _option(command: object, flag: str) -> object:
    for param in command.params:  # type: ignore[attr-defined]
        if flag in getattr(param, "opts", []):
            return param
    raise AssertionError(f"no option {flag}")


@pytest.mark.parametrize("var", ["MEDKIT_VERSION", "MEDKIT_INSTALL_COMPLETION", "MEDKIT_SHOW_COMPLETION"])
def test_non_settings_ignore_environment(var: str) -> None:
    result = runner.invoke(app, ["list", "tasks"], env={var: "1"})
    assert result.exit_code == 0, result.stderr
    assert "cxr" in result.stdout
    assert "medkit " not in result.stdout.splitlines()[0]  # not the version line
    assert "complete" not in result.stdout  # not a completion script


def test_root_help_shows_no_env_var_for_version_or_completion() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "MEDKIT_VERSION" not in result.stdout
    assert "COMPLETION" not in result.stdout
    assert "MEDKIT_DEVICE" in result.stdout  # a real setting keeps its variable


def test_env_var_named_after_flag_not_python_name() -> None:
    root = typer.main.get_command(app)
    train = root.commands["train"]  # type: ignore[attr-defined]
    assert _option(train, "--compile").envvar == "MEDKIT_TRAIN_COMPILE"  # type: ignore[attr-defined]


def test_piped_tables_fit_100_columns() -> None:
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 0
    table_lines = [line for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table_lines) > 5
    assert max(len(line) for line in table_lines) <= 100


@pytest.mark.parametrize("args", [["list", "tasks", "-q"], ["list", "-q", "tasks"], ["-q", "list", "tasks"]])
def test_quiet_accepted_before_or_after_the_subcommand(args: list[str]) -> None:
    from medkit import console

    console.set_verbosity(quiet=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "cxr" in result.stdout
    assert console._state["quiet"] is True
    console.set_verbosity(quiet=False)


def test_hoist_leaves_flags_after_double_dash_and_subcommand_own_flags() -> None:
    from medkit.cli.main import _hoist_global_flags

    group = typer.main.get_command(app)
    assert _hoist_global_flags(group, ["list", "tasks", "-q"]) == ["-q", "list", "tasks"]
    assert _hoist_global_flags(group, ["--device", "cpu", "list", "-v"]) == ["--device", "cpu", "-v", "list"]
    assert _hoist_global_flags(group, ["list", "--", "-q"]) == ["list", "--", "-q"]


def test_inspect_one_file_prints_no_progress_line(tmp_path) -> None:
    import numpy as np

    path = tmp_path / "a.npy"
    np.save(path, np.zeros((8, 8), dtype=np.uint8))
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "a.npy" in result.stdout
    assert "inspect:" not in result.stderr
    two = runner.invoke(app, ["inspect", str(path), str(path)])
    assert two.exit_code == 0, two.stderr


def test_train_help_shows_task_defaults_and_env_note_once() -> None:
    from medkit.registries import TASKS

    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    scan = TASKS.create("scan")
    assert f"scan: {scan.model}, {scan.img_size} px, {scan.epochs} epochs" in text
    assert "[env var:" not in text
    assert text.count("MEDKIT_TRAIN_<OPTION>") == 1
    assert "Augmentation" in text and "Speed and precision" in text  # rarely used options grouped

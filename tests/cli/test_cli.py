"""The CLI contract: exit codes, stdout/stderr split, option precedence, errors, and a light `--help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medkit import __version__
from medkit.cli._options import CliState
from medkit.cli.main import app

runner = CliRunner()


def test_version_goes_to_stdout() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"medkit {__version__}"
    assert result.stderr == ""


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.stdout + result.stderr
    for command in ("audit", "split", "tile", "train", "list", "plugins", "inspect"):
        assert command in result.stdout + result.stderr


def test_list_kinds_and_json() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.stderr
    kinds = {row["kind"]: row for row in json.loads(result.stdout)}
    assert set(kinds) == {
        "models",
        "losses",
        "optimizers",
        "schedulers",
        "metrics",
        "tasks",
        "competitions",
        "readers",
        "seq_readers",
        "loss_terms",
        "loggers",
        "pretrainers",
    }
    assert kinds["competitions"]["count"] >= 3


def test_list_prints_descriptions_as_plain_text() -> None:
    # The loggers' descriptions name an extra in brackets, which rich would otherwise take for a markup tag.
    result = runner.invoke(app, ["list", "loggers"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "medkit[mlflow]" in result.stdout and "medkit[tensorboard]" in result.stdout


def test_list_competitions_with_pattern() -> None:
    result = runner.invoke(app, ["list", "competitions", "r*", "--json"])
    assert result.exit_code == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)]
    assert "rsna" in names and "ranzcr" in names and "panda" not in names
    table = runner.invoke(app, ["list", "competitions"])
    assert table.exit_code == 0
    assert "RSNA Intracranial Hemorrhage" in table.stdout


def test_unknown_kind_is_a_usage_error_on_stderr() -> None:
    result = runner.invoke(app, ["list", "losess"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown kind 'losess' (did you mean 'losses'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_option_is_exit_2() -> None:
    result = runner.invoke(app, ["list", "--no-such-flag"])
    assert result.exit_code == 2


def test_plugins_reports_disabled_state() -> None:
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["disabled"] is True  # conftest sets MEDKIT_DISABLE_PLUGINS=1


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.registries

    def interrupted(kind: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(medkit.registries, "by_kind", interrupted)
    result = runner.invoke(app, ["list", "losses"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr


def test_internal_error_is_short_unless_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.registries

    def broken(kind: str):
        raise RuntimeError("boom")

    monkeypatch.setattr(medkit.registries, "by_kind", broken)
    result = runner.invoke(app, ["list", "losses"])
    assert result.exit_code == 2
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "MEDKIT_DEBUG=1" in result.stderr
    assert "Traceback" not in result.stderr
    monkeypatch.setenv("MEDKIT_DEBUG", "1")
    result = runner.invoke(app, ["list", "losses"])
    assert isinstance(result.exception, RuntimeError)


def test_device_precedence_flag_env_config_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "medkit.toml"
    cfg.write_text('device = "cuda:3"\n')

    def device_after(args: list[str]) -> str | None:
        state = CliState(device="unset")
        result = runner.invoke(app, [*args, "list", "--json"], obj=state)
        assert result.exit_code == 0, result.stderr
        return state.device

    assert device_after([]) is None  # default: commands fall back to auto
    assert device_after(["--config", str(cfg)]) == "cuda:3"
    monkeypatch.setenv("MEDKIT_DEVICE", "cuda:1")
    assert device_after(["--config", str(cfg)]) == "cuda:1"
    assert device_after(["--config", str(cfg), "--device", "cpu"]) == "cpu"


def test_command_option_precedence_via_config_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "medkit.toml"
    cfg.write_text("[list]\njson = true\n")
    # config sets --json for `list`: output is JSON
    result = runner.invoke(app, ["--config", str(cfg), "list"])
    assert result.exit_code == 0
    assert isinstance(json.loads(result.stdout), list)
    # the environment variable beats the config file
    monkeypatch.setenv("MEDKIT_LIST_JSON", "0")
    result = runner.invoke(app, ["--config", str(cfg), "list"])
    assert result.exit_code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
    # and the flag beats the environment
    result = runner.invoke(app, ["--config", str(cfg), "list", "--json"])
    assert isinstance(json.loads(result.stdout), list)


def test_missing_or_broken_config_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--config", str(tmp_path / "nope.toml"), "list"])
    assert result.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("device = \n")
    result = runner.invoke(app, ["--config", str(bad), "list"])
    assert result.exit_code == 2
    assert "invalid TOML" in result.stderr and "bad.toml" in result.stderr


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from medkit.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for sub in ('audit', 'split', 'tile', 'train', 'inspect', 'list'):\n"
        "    assert CliRunner().invoke(app, [sub, '--help']).exit_code == 0, sub\n"
        "print(','.join(m for m in ('torch', 'timm', 'cv2', 'sklearn', 'pydicom', 'pandas') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"--help imported: {proc.stdout.strip()}"


def test_python_dash_m_medkit() -> None:
    proc = subprocess.run([sys.executable, "-m", "medkit", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"medkit {__version__}"


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "medkit.toml"
    cfg.write_text("[list]\njsn = true\n")
    result = runner.invoke(app, ["--config", str(cfg), "list"])
    assert result.exit_code == 2
    assert "unknown option 'jsn' in [list] (did you mean 'json'?)" in result.stderr


def test_environment_variables_are_named_after_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from medkit.cli._generate import cli_markdown

    doc = cli_markdown()
    assert "`MEDKIT_TRAIN_COMPILE`" in doc and "MEDKIT_TRAIN_COMPILE_`" not in doc
    assert "`MEDKIT_TRAIN_JSON`" in doc and "JSON_OUT" not in doc
    assert "MEDKIT_VERSION" not in doc and "MEDKIT_INSTALL_COMPLETION" not in doc
    # a MEDKIT_VERSION set for another reason (a CI job pinning the package) must not hijack every command
    monkeypatch.setenv("MEDKIT_VERSION", "1")
    result = runner.invoke(app, ["list", "tasks", "--json"])
    assert result.exit_code == 0 and not result.stdout.startswith("medkit ")
    assert {row["name"] for row in json.loads(result.stdout)} >= {"ct", "cxr", "wsi"}
    monkeypatch.setenv("MEDKIT_LIST_JSON", "0")
    assert not runner.invoke(app, ["list", "tasks"]).stdout.lstrip().startswith("[")


def test_unknown_window_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "ct", "--data", str(tmp_path / "absent"), "--windows", "brain,brian"])
    assert result.exit_code == 2
    assert "unknown window 'brian' (did you mean 'brain'?)" in result.stderr
    assert "absent" not in result.stderr  # failed on the flag, not on the missing data

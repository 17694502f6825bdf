"""examples/demo.sh stays runnable: valid shell, and every medkit subcommand and flag it uses exists.

Running the demo itself takes minutes (too slow for CI); the commands it chains are covered one by one in tests/cli.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from medkit.cli.main import app

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.sh"


def medkit_calls(script: str) -> list[list[str]]:
    """The argument lists of the `medkit ...` command lines in a shell script (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", script)
    calls = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped.startswith("medkit "):
            continue
        # Cut at shell control operators: `medkit audit ... || [ $? -eq 1 ]`.
        command = re.split(r"\s(?:\|\||&&|;|\|)\s", stripped)[0]
        calls.append(shlex.split(command)[1:])
    return calls


def options_of(command: object) -> set[str]:
    names: set[str] = set()
    for param in command.params:  # type: ignore[attr-defined]
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def test_medkit_calls_parses_continuations() -> None:
    script = 'medkit train cxr --data "$D" \\\n  --fold all --out x\nmedkit audit d || [ $? -eq 1 ]\necho medkit\n'
    assert medkit_calls(script) == [["train", "cxr", "--data", "$D", "--fold", "all", "--out", "x"], ["audit", "d"]]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_demo_shell_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_demo_uses_existing_commands_and_flags() -> None:
    root = typer.main.get_command(app)
    assert hasattr(root, "commands")
    calls = medkit_calls(DEMO.read_text())
    used = {call[0] for call in calls}
    # The demo's promise: every step of the pipeline.
    assert {"audit", "split", "train", "predict", "ensemble", "submit"} <= used
    global_opts = options_of(root)
    for call in calls:
        command = root.commands.get(call[0])
        assert command is not None, f"demo.sh uses unknown command 'medkit {call[0]}'"
        known = options_of(command) | global_opts
        for arg in call[1:]:
            if arg.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", arg):
                flag = arg.split("=", 1)[0]
                assert flag in known, f"demo.sh: 'medkit {call[0]}' has no option {flag}"

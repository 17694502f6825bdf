"""Generate docs/cli.md and the shell completions in completions/ from the Typer app.

Run ``python -m medkit.cli._generate`` after changing a command; tests/test_generated.py fails when the
committed files drift from what the app produces.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["cli_markdown", "completion_scripts", "write_all"]

SHELLS = {"bash": "medkit.bash", "zsh": "_medkit", "fish": "medkit.fish"}


def _param_row(param: Any, prefix: str) -> str | None:
    if getattr(param, "hidden", False) or param.name in ("install_completion", "show_completion"):
        return None
    if param.param_type_name == "argument":
        name = f"`{param.name.upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    help_text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    default = param.default
    if callable(default) or default in (None, (), []) or getattr(param, "is_flag", False) and default is False:
        default_text = ""
    else:
        default_text = f"`{default}`"
    env = param.envvar if isinstance(param.envvar, str) else ""
    if not env and param.param_type_name == "option" and param.name not in ("help", "version"):
        env = f"{prefix}_{param.name.upper()}"  # Click's auto_envvar_prefix rule
    env_text = f"`{env}`" if env else ""
    required = " (required)" if param.required else ""
    return f"| {name}{required} | {help_text} | {default_text} | {env_text} |"


def _command_section(name: str, cmd: Any, level: str = "##") -> list[str]:
    prefix = "_".join(name.upper().split())
    lines = [f"{level} `{name}`", ""]
    help_text = (cmd.help or "").strip()
    if help_text:
        lines += [help_text, ""]
    usage_params = " ".join(p.name.upper() for p in cmd.params if p.param_type_name == "argument")
    lines += ["```", f"{name} [OPTIONS] {usage_params}".rstrip(), "```", ""]
    rows = [r for r in (_param_row(p, prefix) for p in cmd.params) if r]
    if rows:
        lines += ["| option | help | default | env |", "|---|---|---|---|", *rows, ""]
    return lines


def cli_markdown() -> str:
    """The CLI reference as Markdown, generated from the app."""
    import typer

    from medkit.cli.main import app

    root = typer.main.get_command(app)
    lines = [
        "# medkit command-line reference",
        "",
        "Generated from the app by `python -m medkit.cli._generate`; do not edit by hand.",
        "",
        "Exit codes: 0 success; 1 the command ran and found problems; 2 usage, configuration or runtime error;",
        "130 interrupted (Ctrl-C). Precedence of every option: flag > `MEDKIT_*` environment variable >",
        "`--config FILE.toml` (top-level keys for global options, a `[command]` table per command) > default.",
        "",
    ]
    lines += _command_section("medkit", root)
    for name in root.list_commands(None):  # type: ignore[arg-type]
        lines += _command_section(f"medkit {name}", root.get_command(None, name))  # type: ignore[arg-type]
    return "\n".join(lines).rstrip() + "\n"


def completion_scripts() -> dict[str, str]:
    """Completion scripts for bash, zsh and fish, keyed by file name in completions/."""
    from typer.completion import get_completion_script

    return {
        fname: get_completion_script(prog_name="medkit", complete_var="_MEDKIT_COMPLETE", shell=shell).rstrip() + "\n"
        for shell, fname in SHELLS.items()
    }


def write_all(root: Path) -> list[Path]:
    """Write docs/cli.md and completions/* under the project root; returns the written paths."""
    from medkit._io import write_text

    written = [write_text(root / "docs" / "cli.md", cli_markdown())]
    for fname, text in completion_scripts().items():
        written.append(write_text(root / "completions" / fname, text))
    return written


if __name__ == "__main__":
    project = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    for path in write_all(project):
        print(path)

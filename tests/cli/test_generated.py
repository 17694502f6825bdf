"""docs/cli.md and completions/ are generated from the app; this fails when they drift."""

from __future__ import annotations

from pathlib import Path

from medkit.cli._generate import cli_markdown, completion_scripts

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `python -m medkit.cli._generate` and commit the result"


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == cli_markdown(), FIX


def test_completions_are_current() -> None:
    scripts = completion_scripts()
    assert set(scripts) == {"medkit.bash", "_medkit", "medkit.fish"}
    for name, text in scripts.items():
        assert "_MEDKIT_COMPLETE" in text
        assert (ROOT / "completions" / name).read_text() == text, FIX

"""`medkit train --recipe`: a recipe's fields sit between the task preset and the flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _factories import synthetic_medmnist
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import UnknownNameError
from medkit.registries import TASKS
from medkit.tasks import RECIPES, recipe

runner = CliRunner()


def test_every_recipe_builds_a_valid_task_for_every_generic_preset() -> None:
    for rec in RECIPES.values():
        for name in ("binary", "multiclass", "multilabel"):
            task = TASKS.create(name, **rec.task)
            assert all(getattr(task, k) == (tuple(v) if isinstance(v, list) else v) for k, v in rec.task.items())


def test_unknown_recipe_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'small-image'"):
        recipe("small_image")


def test_cli_recipe_fields_then_flags(tmp_path: Path) -> None:
    npz = synthetic_medmnist(tmp_path / "mini.npz", (16, 8, 8), 28, 0)
    out = tmp_path / "run"
    args = ["train", "binary", "--data", npz, "--recipe", "small-image", "--epochs", "2", "--lr", "0.01"]
    args += ["--device", "cpu", "--dry-run", "--out", out]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr
    config = json.loads((out / "run.json").read_text())["config"]
    want = RECIPES["small-image"]
    assert config["task"]["model"] == want.task["model"] and config["task"]["augment"]["hflip"] == 0.5
    assert config["task"]["epochs"] == 2 and config["task"]["lr"] == 0.01  # the flags win over the recipe
    assert config["ema"] is want.ema

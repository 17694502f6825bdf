"""`medkit ensemble --thresholds` through the CLI: the per-label table, the files, and `medkit submit` on the blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()


def _table(path: Path, ids: list[str], probs: np.ndarray, y: np.ndarray | None = None) -> str:
    """A binary prediction table for the label ``target`` (siim-isic's column) with its sidecar; ``y`` adds targets."""
    frame = pd.DataFrame({"image": ids})
    if y is not None:
        frame["target"] = y
    frame["target_prob"] = probs
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    meta = {"kind": "medkit-predictions", "target": "binary", "label_names": ["target"], "metric": "auc"}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return str(path)


def _members(tmp_path: Path, n: int = 120) -> list[str]:
    """Two members (test predictions, OOF tables); positives are rare, so F1 at 0.5 is poor."""
    rng = np.random.default_rng(1)
    y = (rng.random(n) < 0.15).astype(float)
    args: list[str] = []
    oofs: list[str] = []
    for name in ("a", "b"):
        oof = np.clip(0.3 * y + rng.random(n) * 0.45, 0, 1)
        oofs += ["--oof", _table(tmp_path / name / "oof.csv", [f"val{i}" for i in range(n)], oof, y)]
        args.append(_table(tmp_path / name / "preds.csv", [f"ISIC_{i:07d}" for i in range(30)], rng.random(30)))
    return args + oofs


def test_thresholds_table_files_and_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ens" / "blend.csv"
    res = runner.invoke(
        app, ["ensemble", *_members(tmp_path), "-m", "weighted", "--thresholds", "f1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    for text in (
        "thresholds per label for f1 on 120 OOF rows",
        "at 0.5",
        "at threshold (OOF, optimistic)",
        "cross-validated",
        f"wrote {out.with_name('blend_labels.csv')}",
    ):
        assert text in res.stdout, text
    side = json.loads(out.with_suffix(".json").read_text())["details"]["thresholds"]
    row = side["labels"][0]
    assert row["label"] == "target" and row["at_threshold"] > row["at_default"]
    assert f"{row['threshold']:.4f}" in res.stdout and f"{row['at_default']:.4f}" in res.stdout
    labels = pd.read_csv(out.with_name("blend_labels.csv"))
    blend = pd.read_csv(out)
    assert list(blend.columns) == ["image", "target_prob"]
    assert (labels["target"] == (blend["target_prob"] >= row["threshold"]).astype(int)).all()

    # the blend is still a prediction file: medkit submit reads the probabilities, not the decisions
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    sub = tmp_path / "sub.csv"
    res = runner.invoke(app, ["submit", str(out), "-c", "siim-isic", "--dry-run", "--out", str(sub)])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(pd.read_csv(sub)["target"], blend["target_prob"], atol=1e-6)

    # and a member of a second blend, with its blended OOF
    again = runner.invoke(
        app,
        [
            "ensemble",
            str(out),
            "--oof",
            str(out.with_name("blend_oof.csv")),
            "--thresholds",
            "accuracy",
            "--out",
            str(tmp_path / "again.csv"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert "thresholds per label for accuracy" in again.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--thresholds", "f3"], "unknown threshold criterion 'f3' (did you mean"),
        (["--thresholds", "f1", "--no-oof"], "--thresholds chooses each label's threshold on OOF predictions"),
    ],
)
def test_threshold_usage_errors_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    args = _members(tmp_path)
    if "--no-oof" in extra:
        args, extra = args[:2], extra[:2]
    res = runner.invoke(app, ["ensemble", *args, *extra, "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2
    assert message in res.stderr and "hint:" in res.stderr and res.stdout == ""
    assert not (tmp_path / "x.csv").exists()

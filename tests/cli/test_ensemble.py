"""`medkit ensemble` through the CLI: tables on stdout, errors on stderr, exit codes, the files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()


def _table(path: Path, ids: list[str], probs: np.ndarray, y: np.ndarray | None = None, sidecar: bool = True) -> Path:
    """A prediction table (``y_prob``) and, unless ``sidecar`` is False, its medkit sidecar; ``y`` adds targets."""
    frame = pd.DataFrame({"image": ids})
    if y is not None:
        frame["y"] = y
    frame["y_prob"] = probs
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    if sidecar:
        meta = {"kind": "medkit-predictions", "target": "binary", "label_names": ["y"], "metric": "auc"}
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def _members(tmp_path: Path, n: int = 80) -> tuple[list[str], list[str]]:
    """Two good members and a noise member: test predictions and OOF tables (run folders)."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(float)
    preds, oofs = [], []
    for name, signal in (("a", 1.0), ("b", 1.0), ("noise", 0.0)):
        oof = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
        _table(tmp_path / name / "oof.csv", [f"val/{i}" for i in range(n)], oof, y, sidecar=False)
        (tmp_path / name / "run.json").write_text(json.dumps({"spec": {"target": "binary", "metric": "auc"}}))
        preds.append(str(_table(tmp_path / name / "preds.csv", [f"test/{i}" for i in range(20)], rng.random(20))))
        oofs.append(str(tmp_path / name))
    return preds, oofs


def test_weighted_blend_prints_the_table_and_writes_blend_files(tmp_path: Path) -> None:
    preds, oofs = _members(tmp_path)
    out = tmp_path / "ens" / "blend.csv"
    args = ["ensemble", *preds, "--method", "weighted", "--out", str(out)]
    for oof in oofs:
        args += ["--oof", oof]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in (
        "weighted blend of 3 members",
        "metric auc (higher is better) on 80 OOF rows",
        "mean (equal weights)",
        "blend, fitted on all OOF rows",
        "blend, cross-validated",
        "held-out folds",
        f"wrote {out}",
    ):
        assert text in result.stdout, text
    assert "error" not in result.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    details = side["details"]
    assert details["method"] == "weighted" and details["search"] == "hill" and details["metric"] == "auc"
    weights = [m["weight"] for m in details["members"]]
    assert abs(sum(weights) - 1) < 1e-12
    assert weights[2] < max(weights[:2])  # the noise member
    assert set(details["cv"]) == {"n_folds", "source", "blend", "mean", "members"}
    assert (tmp_path / "ens" / "blend_oof.csv").is_file() and (tmp_path / "ens" / "blend_oof.json").is_file()


def test_json_output_is_one_document(tmp_path: Path) -> None:
    preds, oofs = _members(tmp_path)
    args = ["ensemble", *preds[:2], "--oof", oofs[0], "--oof", oofs[1], "--method", "geometric", "--json"]
    result = runner.invoke(app, [*args, "--search", "nelder-mead", "--out", str(tmp_path / "g.csv")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "geometric" and doc["search"] == "nelder-mead"
    assert doc["outputs"]["predictions"] == str(tmp_path / "g.csv")
    assert len(doc["cv"]["members"]) == 2 and doc["mean_oof"] is not None


def test_mean_without_oof(tmp_path: Path) -> None:
    preds, _ = _members(tmp_path)
    result = runner.invoke(app, ["ensemble", *preds, "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "no --oof: equal weights, nothing scored" in result.stdout
    blend = pd.read_csv(tmp_path / "m.csv")["y_prob"].to_numpy()
    members = np.stack([pd.read_csv(p)["y_prob"].to_numpy() for p in preds])
    np.testing.assert_allclose(blend, members.mean(axis=0))


def test_usage_errors_exit_2_with_a_hint_on_stderr(tmp_path: Path) -> None:
    preds, oofs = _members(tmp_path)
    result = runner.invoke(app, ["ensemble", *preds, "--method", "weighted", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "--method weighted needs OOF" in result.stderr and "hint:" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "x.csv").exists()
    result = runner.invoke(app, ["ensemble", *preds, "--oof", oofs[0], "--method", "rank"])
    assert result.exit_code == 2 and "3 prediction files but 1 --oof tables" in result.stderr
    result = runner.invoke(app, ["ensemble", *preds, "--method", "median"])
    assert result.exit_code == 2 and "unknown blend method 'median'" in result.stderr


def test_data_errors_exit_2_naming_the_file(tmp_path: Path) -> None:
    preds, _ = _members(tmp_path)
    short = _table(tmp_path / "short.csv", [f"test/{i}" for i in range(19)], np.full(19, 0.5))
    result = runner.invoke(app, ["ensemble", preds[0], str(short), "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "short.csv: 1 ids of" in result.stderr and "'test/19'" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_per_label_weights_are_printed_per_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 60
    y = (rng.random((n, 2)) < 0.5).astype(float)
    paths = []
    for name in "ab":
        frame = pd.DataFrame({"image": [f"v{i}" for i in range(n)], "p": y[:, 0], "q": y[:, 1]})
        frame["p_prob"], frame["q_prob"] = rng.random(n), rng.random(n)
        frame.to_csv(tmp_path / f"{name}_oof.csv", index=False)
        frame.drop(columns=["p", "q"]).to_csv(tmp_path / f"{name}.csv", index=False)
        paths.append(name)
    args = ["ensemble", *(str(tmp_path / f"{p}.csv") for p in paths)]
    args += [x for p in paths for x in ("--oof", str(tmp_path / f"{p}_oof.csv"))]
    args += ["--method", "weighted", "--per-label", "--metric", "auc", "--out", str(tmp_path / "pl.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "weights per label" in result.stdout and "per label" in result.stdout
    weights = [m["weight"] for m in json.loads((tmp_path / "pl.json").read_text())["details"]["members"]]
    assert np.allclose(np.sum(weights, axis=0), [1.0, 1.0])  # one weight vector per label column

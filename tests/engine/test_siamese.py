"""Siamese pretraining (`medkit train --pretrain siamese`): pairs, loss, weight transfer, run folder, resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _factories import png_table
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.engine.siamese import contrastive_loss, label_sets, sample_pairs
from medkit.registries import PRETRAINERS

runner = CliRunner()
FAST = ["--model", "cnn_small", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


# ---------------------------------------------------------------------------------------------------- pairs
def test_label_sets_name_positive_columns_and_none_for_normal_rows() -> None:
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=np.float32)
    assert label_sets(y) == [frozenset({0}), frozenset({-1}), frozenset({0, 1}), frozenset({1})]


def test_pairs_hand_checked_on_two_label_groups() -> None:
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)  # rows 0,1 share label 0; rows 2,3 label 1
    shared = sample_pairs(y, seed=0, epoch=0, p_disjoint=0.0)
    assert sorted(shared.left.tolist()) == [0, 1, 2, 3]  # every row is an anchor once
    partner = dict(zip(shared.left.tolist(), shared.right.tolist(), strict=True))
    assert partner == {0: 1, 1: 0, 2: 3, 3: 2} and shared.same.tolist() == [1.0] * 4
    disjoint = sample_pairs(y, seed=0, epoch=0, p_disjoint=1.0)
    for i, j in zip(disjoint.left, disjoint.right, strict=True):
        assert (i < 2) != (j < 2)
    assert disjoint.same.tolist() == [0.0] * 4


def test_pairs_are_shared_or_disjoint_by_construction_and_fixed_by_seed_and_epoch() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((60, 5)) < 0.25).astype(np.float32)
    sets = label_sets(y)
    pairs = sample_pairs(y, seed=1, epoch=2)
    for i, j, same in zip(pairs.left, pairs.right, pairs.same, strict=True):
        assert bool(sets[i] & sets[j]) == (same == 1.0)
    assert 0 < pairs.same.mean() < 1
    again = sample_pairs(y, seed=1, epoch=2)
    assert np.array_equal(pairs.left, again.left) and np.array_equal(pairs.right, again.right)
    assert not np.array_equal(pairs.left, sample_pairs(y, seed=1, epoch=3).left)


def test_anchor_without_a_disjoint_partner_gets_a_shared_one() -> None:
    y = np.ones((5, 1), dtype=np.float32)
    pairs = sample_pairs(y, seed=0, epoch=0, p_disjoint=1.0)
    assert pairs.same.tolist() == [1.0] * 5 and all(pairs.left != pairs.right)


# ---------------------------------------------------------------------------------------------------- loss
def test_contrastive_loss_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.3, 0.4]])  # distances 1, 1, 0.5
    same = torch.tensor([1.0, 0.0, 0.0])
    # 1^2 ; relu(1 - 1)^2 = 0 ; relu(1 - 0.5)^2 = 0.25
    assert float(contrastive_loss(a, b, same, margin=1.0)) == pytest.approx((1.0 + 0.0 + 0.25) / 3)


def test_contrastive_loss_matches_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    same = (torch.rand(16, generator=g) < 0.5).float()
    terms = []
    for i in range(16):
        d = math.sqrt(sum((float(a[i, k]) - float(b[i, k])) ** 2 for k in range(8)))
        terms.append(d * d if same[i] == 1 else max(0.0, 1.3 - d) ** 2)
    assert float(contrastive_loss(a, b, same, margin=1.3)) == pytest.approx(sum(terms) / 16, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- end to end
def _table(root: Path) -> Path:
    n = 24
    return png_table(root, {"a": [i % 2 for i in range(n)], "b": [(i // 3) % 2 for i in range(n)]}, n)


def _train(root: Path, table: Path, out: Path, *extra: str) -> object:
    args = ["train", "multilabel", "--data", root, "--labels", table, "--fold", "1", *FAST, "--out", out, *extra]
    return runner.invoke(app, [str(a) for a in args])


def test_siamese_is_registered() -> None:
    assert "siamese" in PRETRAINERS.names()


def test_cli_pretrains_transfers_the_backbone_and_links_the_runs(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from medkit.engine import components

    built: list[dict[str, torch.Tensor]] = []
    original = components.build_model

    def recording(spec, pretrained=False, weights=None):  # noqa: ANN001, ANN202
        model = original(spec, pretrained, weights)
        built.append(copy.deepcopy(model.backbone.state_dict()))
        return model

    monkeypatch.setattr(components, "build_model", recording)
    table, out = _table(tmp_path), tmp_path / "run"
    res = _train(tmp_path, table, out, "--epochs", "1", "--pretrain", "siamese", "--pretrain-epochs", "2")
    assert res.exit_code == 0, res.stderr
    pre = out / "pretrain"
    assert json.loads((pre / "run.json").read_text())["parent"] == str(out.resolve())
    record = json.loads((out / "run.json").read_text())
    assert record["child"] == {"pretrain": str(pre.resolve())}
    assert record["config"]["weights"] == str(pre / "backbone.pt")
    assert pd.read_csv(pre / "metrics.csv")["epoch"].tolist() == [1, 2]
    saved = torch.load(pre / "backbone.pt", weights_only=True)
    # built[0]: the pretraining's model; built[-1]: the classifier, as fit() built it, before its first step
    assert len(built) == 2
    classifier = built[-1]
    assert set(classifier) == {k.removeprefix("backbone.") for k in saved}
    assert all(torch.equal(classifier[k.removeprefix("backbone.")], v) for k, v in saved.items())
    assert not all(torch.equal(built[0][k], classifier[k]) for k in classifier if classifier[k].is_floating_point())


def test_cli_interrupted_pretraining_needs_resume_and_continues(tmp_path: Path) -> None:
    table, out = _table(tmp_path), tmp_path / "run"
    assert (
        _train(tmp_path, table, out, "--epochs", "1", "--pretrain", "siamese", "--pretrain-epochs", "1").exit_code == 0
    )
    first = pd.read_csv(out / "pretrain" / "metrics.csv")
    # As if stopped after the first pretraining epoch of two: no backbone file, no classifier run yet.
    import shutil

    (out / "pretrain" / "backbone.pt").unlink()
    for p in out.iterdir():
        if p.name != "pretrain":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    again = ["--epochs", "1", "--pretrain", "siamese", "--pretrain-epochs", "2"]
    refused = _train(tmp_path, table, out, *again)
    assert refused.exit_code == 2 and "unfinished pretraining" in refused.stderr
    res = _train(tmp_path, table, out, *again, "--resume")
    assert res.exit_code == 0, res.stderr
    metrics = pd.read_csv(out / "pretrain" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["train_loss"].iloc[0] == pytest.approx(first["train_loss"].iloc[0])  # epoch 1 kept, not redone
    assert (out / "pretrain" / "backbone.pt").exists() and (out / "checkpoints" / "best.pt").exists()


def test_cli_unknown_pretraining_method_is_one_line(tmp_path: Path) -> None:
    res = _train(tmp_path, _table(tmp_path), tmp_path / "run", "--pretrain", "siamse", "--pretrain-epochs", "1")
    assert res.exit_code == 2 and "did you mean 'siamese'" in res.stderr

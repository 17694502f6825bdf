"""METRICS: every entry against scikit-learn and hand-computed values, plus input validation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn import metrics as skm

from medkit.errors import DataError, UnknownNameError, UsageError
from medkit.metrics import (
    RSNA_WEIGHTS,
    apply_thresholds,
    auc_per_label,
    optimise_thresholds,
    quadratic_weighted_kappa,
)
from medkit.metrics.grades import kappa_from_confusion
from medkit.registries import METRICS


def _multilabel(n: int = 120, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, k)) < 0.35).astype(np.float64)
    # scores correlated with the targets, rounded so that ties occur
    s = np.clip(np.round(0.35 * t + 0.65 * rng.random((n, k)), 2), 0.0, 1.0)
    return t, s


def _multiclass(n: int = 150, k: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y.astype(np.float64), p


# ------------------------------------------------------------------------------------------ registry walk
def _input_for(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "qwk":
        y, p = _multiclass(k=6)
        return y, p
    if name == "rsna_logloss":
        return _multilabel(k=6)
    return _multilabel()


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_builds_and_scores(name: str) -> None:
    entry = METRICS.get(name)
    metric = METRICS.create(name)
    assert metric.greater_is_better is entry.flags["greater_is_better"]
    assert entry.description
    value = metric(*_input_for(name))
    assert isinstance(value, float) and math.isfinite(value)
    # a perfect prediction scores at least as well as the noisy one, in the metric's own direction
    y, s = _input_for(name)
    perfect = np.eye(s.shape[1])[y.astype(int)] if name == "qwk" else y
    best = metric(y, perfect)
    assert (best >= value) if metric.greater_is_better else (best <= value)
    assert pickle.loads(pickle.dumps(metric))(y, s) == pytest.approx(value)


def test_flags_direction() -> None:
    assert not METRICS.create("logloss").greater_is_better
    assert not METRICS.create("rsna_logloss").greater_is_better
    assert METRICS.create("auc").greater_is_better


# ------------------------------------------------------------------------------------------ AUC
def test_auc_hand_computed() -> None:
    # pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, *) two wins -> 3/4
    assert METRICS.create("auc")(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert METRICS.create("auc")(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_auc_multilabel_matches_sklearn_with_ties() -> None:
    t, s = _multilabel()
    expected = np.mean([skm.roc_auc_score(t[:, k], s[:, k]) for k in range(t.shape[1])])
    assert METRICS.create("auc")(t, s) == pytest.approx(expected, abs=1e-12)
    per = auc_per_label(t, s, labels=["a", "b", "c", "d"])
    assert list(per) == ["a", "b", "c", "d"]
    assert per["c"] == pytest.approx(skm.roc_auc_score(t[:, 2], s[:, 2]), abs=1e-12)


def test_auc_skips_single_class_columns_and_warns_when_all_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    t, s = _multilabel()
    t[:, 1] = 0.0
    expected = np.mean([skm.roc_auc_score(t[:, k], s[:, k]) for k in (0, 2, 3)])
    assert METRICS.create("auc")(t, s) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(auc_per_label(t, s)["1"])
    capsys.readouterr()
    assert math.isnan(METRICS.create("auc")(np.zeros((5, 2)), s[:5, :2]))
    assert "single class" in capsys.readouterr().err


def test_auc_multiclass_one_vs_rest_matches_sklearn() -> None:
    y, p = _multiclass()
    expected = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert METRICS.create("auc")(y, p) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------ thresholded
@pytest.mark.parametrize("average", ["macro", "micro", "samples"])
def test_f1_f2_multilabel_match_sklearn(average: str) -> None:
    t, s = _multilabel()
    pred = (s >= 0.5).astype(int)
    assert METRICS.create("f1", average=average)(t, s) == pytest.approx(
        skm.f1_score(t, pred, average=average, zero_division=0.0), abs=1e-12
    )
    assert METRICS.create("f2", average=average)(t, s) == pytest.approx(
        skm.fbeta_score(t, pred, beta=2.0, average=average, zero_division=0.0), abs=1e-12
    )


def test_f1_binary_threshold_and_per_label_thresholds() -> None:
    t, s = _multilabel()
    y, score = t[:, 0], s[:, 0]
    assert METRICS.create("f1", threshold=0.3)(y, score) == pytest.approx(skm.f1_score(y, score >= 0.3), abs=1e-12)
    th = [0.3, 0.5, 0.6, 0.7]
    pred = (s >= np.array(th)).astype(int)
    assert METRICS.create("f2", threshold=th)(t, s) == pytest.approx(
        skm.fbeta_score(t, pred, beta=2, average="macro", zero_division=0.0), abs=1e-12
    )
    # hand value: tp=1, fp=1, fn=1 -> F1 = 2/4, F2 = 5/(5+4+1)
    yt, ys = np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.1])
    assert METRICS.create("f1")(yt, ys) == pytest.approx(0.5)
    assert METRICS.create("f2")(yt, ys) == pytest.approx(0.5)


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_f1_multiclass_argmax_matches_sklearn(average: str) -> None:
    y, p = _multiclass()
    assert METRICS.create("f1", average=average)(y, p) == pytest.approx(
        skm.f1_score(y, p.argmax(1), average=average), abs=1e-12
    )


def test_mcc_matches_sklearn() -> None:
    t, s = _multilabel()
    pred = (s >= 0.5).astype(int)
    assert METRICS.create("mcc")(t[:, 0], s[:, 0]) == pytest.approx(skm.matthews_corrcoef(t[:, 0], pred[:, 0]))
    macro = np.mean([skm.matthews_corrcoef(t[:, k], pred[:, k]) for k in range(t.shape[1])])
    assert METRICS.create("mcc")(t, s) == pytest.approx(macro, abs=1e-12)
    assert METRICS.create("mcc", average="micro")(t, s) == pytest.approx(
        skm.matthews_corrcoef(t.ravel(), pred.ravel()), abs=1e-12
    )
    y, p = _multiclass()
    assert METRICS.create("mcc")(y, p) == pytest.approx(skm.matthews_corrcoef(y, p.argmax(1)), abs=1e-12)
    # a constant prediction: undefined, reported as 0 like scikit-learn
    assert METRICS.create("mcc")(np.array([0, 1, 1]), np.array([0.9, 0.9, 0.9])) == 0.0


def test_accuracy_matches_sklearn() -> None:
    t, s = _multilabel()
    pred = (s >= 0.5).astype(int)
    assert METRICS.create("accuracy")(t, s) == pytest.approx(skm.accuracy_score(t, pred))  # subset accuracy
    assert METRICS.create("accuracy", average="macro")(t, s) == pytest.approx((t == pred).mean())
    y, p = _multiclass()
    assert METRICS.create("accuracy")(y, p) == pytest.approx(skm.accuracy_score(y, p.argmax(1)))


# ------------------------------------------------------------------------------------------ QWK
def test_qwk_hand_computed() -> None:
    # O = {(0,0), (1,2), (2,2)}: observed disagreement 1, expected 5 -> 1 - 1/5
    assert quadratic_weighted_kappa([0, 1, 2], [0, 2, 2]) == pytest.approx(0.8)
    assert kappa_from_confusion(np.eye(3)) == pytest.approx(1.0)


def test_qwk_matches_sklearn_from_probs_and_regression() -> None:
    y, p = _multiclass(k=6)
    qwk = METRICS.create("qwk")
    expected = skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic", labels=np.arange(6))
    assert qwk(y, p) == pytest.approx(expected, abs=1e-12)
    expectation = p @ np.arange(6)
    expected = skm.cohen_kappa_score(
        y, np.clip(np.floor(expectation + 0.5), 0, 5), weights="quadratic", labels=np.arange(6)
    )
    assert METRICS.create("qwk", from_probs="expectation")(y, p) == pytest.approx(expected, abs=1e-12)
    reg = y + np.random.default_rng(3).normal(0, 0.8, y.size)
    rounded = np.clip(np.floor(reg + 0.5), 0, 5)
    expected = skm.cohen_kappa_score(y, rounded, weights="quadratic", labels=np.arange(6))
    assert qwk(y, reg) == pytest.approx(expected, abs=1e-12)
    cuts = [0.2, 1.1, 2.5, 3.0, 4.7]
    expected = skm.cohen_kappa_score(y, np.digitize(reg, cuts), weights="quadratic", labels=np.arange(6))
    assert METRICS.create("qwk", thresholds=cuts)(y, reg) == pytest.approx(expected, abs=1e-12)


def test_apply_thresholds_counts_cut_points_at_or_below() -> None:
    assert apply_thresholds([-1.0, 0.5, 0.49, 1.7, 9.0], [0.5, 1.5]).tolist() == [0, 1, 0, 2, 2]


def test_optimise_thresholds_recovers_a_squashed_scale_and_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 300)
    pred = 0.4 * y + rng.uniform(-0.15, 0.15, y.size)  # perfectly ordered, wrong scale
    assert METRICS.create("qwk")(y, pred) < 0.8
    cuts = optimise_thresholds(y, pred, num_classes=6)
    assert quadratic_weighted_kappa(y, apply_thresholds(pred, cuts), 6) == pytest.approx(1.0)
    assert METRICS.create("qwk", thresholds="optimised")(y, pred) == pytest.approx(1.0)
    assert np.array_equal(cuts, optimise_thresholds(y, pred, num_classes=6))
    assert np.all(np.diff(cuts) >= 0)


def test_optimised_thresholds_are_coordinate_optima() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 200)
    pred = y + rng.normal(0, 1.0, y.size)
    cuts = optimise_thresholds(y, pred, num_classes=5)
    best = quadratic_weighted_kappa(y, apply_thresholds(pred, cuts), 5)
    assert best >= quadratic_weighted_kappa(y, apply_thresholds(pred, [0.5, 1.5, 2.5, 3.5]), 5)
    # no single threshold moved anywhere on a fine grid between its neighbours does better
    for j in range(4):
        lo = cuts[j - 1] if j else pred.min() - 1
        hi = cuts[j + 1] if j < 3 else pred.max() + 1
        for value in np.linspace(lo, hi, 400):
            trial = cuts.copy()
            trial[j] = value
            assert quadratic_weighted_kappa(y, apply_thresholds(pred, trial), 5) <= best + 1e-12


# ------------------------------------------------------------------------------------------ log losses
def test_logloss_matches_sklearn() -> None:
    t, s = _multilabel()
    s = np.clip(s, 0.01, 0.99)
    expected = np.mean([skm.log_loss(t[:, k], s[:, k], labels=[0, 1]) for k in range(t.shape[1])])
    assert METRICS.create("logloss")(t, s) == pytest.approx(expected, abs=1e-12)
    y, p = _multiclass()
    assert METRICS.create("logloss")(y, p) == pytest.approx(skm.log_loss(y, p, labels=np.arange(4)), abs=1e-12)


def test_rsna_logloss_matches_weighted_row_log_loss() -> None:
    t, s = _multilabel(k=6)
    s = np.clip(s, 0.01, 0.99)
    # the competition scores every (image, subtype) row with weight 2 on 'any' and 1 elsewhere
    weights = np.tile(np.array(RSNA_WEIGHTS), t.shape[0])
    expected = skm.log_loss(t.ravel(), s.ravel(), sample_weight=weights, labels=[0, 1])
    assert METRICS.create("rsna_logloss")(t, s) == pytest.approx(expected, abs=1e-12)


def test_rsna_logloss_hand_value_and_clip() -> None:
    t = np.array([[0, 0, 0, 0, 0, 1]], dtype=float)
    s = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.0]])
    # five columns at log 2, 'any' at -log(1e-7) with weight 2, over total weight 7
    expected = (5 * math.log(2) + 2 * -math.log(1e-7)) / 7
    assert METRICS.create("rsna_logloss")(t, s) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_typed_errors() -> None:
    t, s = _multilabel()
    with pytest.raises(DataError, match="do not match"):
        METRICS.create("auc")(t, s[:, :3])
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        METRICS.create("f1")(t, bad)
    with pytest.raises(DataError, match="0 or 1"):
        METRICS.create("auc")(t * 0.5, s)
    with pytest.raises(DataError, match="epidural"):
        METRICS.create("rsna_logloss")(t, s)
    with pytest.raises(DataError, match="probabilities"):
        METRICS.create("logloss")(t, s * 3)
    with pytest.raises(UsageError, match="did you mean 'threshold'"):
        METRICS.create("f1", treshold=0.3)
    with pytest.raises(UsageError, match="average"):
        METRICS.create("f1", average="weighted")
    with pytest.raises(UnknownNameError, match="did you mean 'qwk'"):
        METRICS.get("qkw")


def test_cli_lists_metrics_with_direction() -> None:
    import json

    from typer.testing import CliRunner

    from medkit.cli.main import app

    result = CliRunner().invoke(app, ["list", "metrics", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(METRICS.names())
    assert rows["rsna_logloss"]["flags"]["greater_is_better"] is False
    assert rows["qwk"]["flags"]["greater_is_better"] is True
    result = CliRunner().invoke(app, ["list", "metrics", "q*"])
    assert result.exit_code == 0 and "qwk" in result.stdout and "auc" not in result.stdout

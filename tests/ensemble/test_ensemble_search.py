"""Weight search and the cross-validated estimate: known optima, a worse member, pure-noise members, per-label
weights and the folds."""

from __future__ import annotations

import numpy as np
import pytest

from medkit.ensemble import (
    Blender,
    Combiner,
    Scorer,
    assign_folds,
    cross_validate,
    hill_climb,
    nelder_mead,
    search_weights,
)
from medkit.errors import DataError, UsageError
from medkit.metrics import auc_score
from medkit.target import BINARY, MULTILABEL

TARGET = np.array([0.5, 0.25, 0.25])


def _distance(w: np.ndarray) -> float:
    return float(((np.asarray(w) - TARGET) ** 2).sum())


def test_hill_climbing_reaches_a_reachable_optimum_exactly() -> None:
    # best single member 0; then +1 (tie with +2 goes to the earlier member), +2, +0: counts 2, 1, 1 = TARGET.
    np.testing.assert_allclose(hill_climb(_distance, 3), TARGET)


def test_hill_climbing_stops_when_nothing_improves() -> None:
    calls: list[np.ndarray] = []

    def best_alone(w: np.ndarray) -> float:
        calls.append(np.asarray(w))
        return float(-w[1])  # member 1 alone is optimal

    np.testing.assert_allclose(hill_climb(best_alone, 3), [0, 1, 0])
    assert len(calls) == 3 + 3  # the singles, then one round of additions that all fail


def test_nelder_mead_recovers_the_optimum_and_is_seeded() -> None:
    w = nelder_mead(_distance, 3, seed=0)
    np.testing.assert_allclose(w, TARGET, atol=2e-3)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    np.testing.assert_array_equal(w, nelder_mead(_distance, 3, seed=0))


def _binary_members(signals: list[float], n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and members whose logit is ``signal * (2y - 1)`` plus independent unit noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    members = [1 / (1 + np.exp(-(s * (2 * y - 1) + rng.normal(0, 1, n)))) for s in signals]
    return y, np.stack(members)[:, :, None]


AUC = Scorer.build("auc", BINARY)


@pytest.mark.parametrize("search", ["hill", "nelder-mead"])
def test_a_worse_member_is_down_weighted_and_the_blend_beats_the_mean_on_held_out_folds(search: str) -> None:
    y, probs = _binary_members([0.7, 0.7, 0.0])  # the third member is noise
    blender = Blender(AUC, Combiner("weighted"), search)
    fitted = blender.fit(y, probs)
    assert fitted.weights[2] < 0.05
    folds, _ = assign_folds(y, k=5, seed=0)
    cv = cross_validate(blender, y, probs, folds)
    assert cv.blend.mean > cv.mean.mean + 0.03
    assert cv.blend.pooled > cv.mean.pooled + 0.03
    # the members and the mean are scored on the same held-out rows, without fitting: their pooled score is
    # their plain score
    assert cv.members[2].pooled == pytest.approx(auc_score(y, probs[2, :, 0]))
    assert cv.mean.pooled == pytest.approx(auc_score(y, probs[:, :, 0].mean(axis=0)))


def test_with_twenty_noise_members_the_cv_estimate_exposes_the_overfit() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.5).astype(float)
    probs = rng.random((20, 300, 1))
    blender = Blender(AUC, Combiner("weighted"), "hill")
    fitted_on_all = blender.score(y, probs, blender.fit(y, probs))
    cv = cross_validate(blender, y, probs, assign_folds(y, k=5, seed=0)[0])
    assert fitted_on_all > 0.56  # noise fitted to noise
    assert cv.blend.pooled < 0.53 and cv.blend.mean < 0.53
    assert fitted_on_all - cv.blend.pooled > 0.05


def test_per_label_weights_pick_the_good_member_of_each_label() -> None:
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.random((n, 2)) < 0.4).astype(float)
    good = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1, (n, 2)))))
    noise = rng.random((n, 2))
    a = np.stack([good[:, 0], noise[:, 1]], axis=1)  # member a knows label 0 only
    b = np.stack([noise[:, 0], good[:, 1]], axis=1)  # member b knows label 1 only
    probs = np.stack([a, b])
    scorer = Scorer.build("auc", MULTILABEL)
    w = search_weights(scorer, Combiner("weighted"), y, probs, "hill", per_label=True)
    np.testing.assert_allclose(w, [[1.0, 0.0], [0.0, 1.0]])
    shared = search_weights(scorer, Combiner("weighted"), y, probs, "hill")
    assert shared.shape == (2,)


def test_per_label_needs_a_metric_of_one_column() -> None:
    y = np.tile([[0, 1, 0, 1, 0, 1]], (4, 1)).T.astype(float)
    probs = np.random.default_rng(0).random((2, 6, 6))
    scorer = Scorer.build("rsna_logloss", MULTILABEL)
    with pytest.raises(UsageError, match="cannot score one label column"):
        search_weights(scorer, Combiner("weighted"), y, probs, per_label=True)


def test_a_loss_is_minimised_not_maximised() -> None:
    # member 0 is right, member 1 is confidently wrong: any share of member 1 raises the log loss
    y = np.array([1.0, 0.0, 1.0, 0.0])
    probs = np.array([[0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.2, 0.8]])[:, :, None]
    for search in ("hill", "nelder-mead"):
        w = search_weights(Scorer.build("logloss", BINARY), Combiner("weighted"), y, probs, search)
        assert w[0] > 0.99, search


def test_unknown_search_is_a_usage_error() -> None:
    y, probs = _binary_members([1.0, 1.0], n=20)
    with pytest.raises(UsageError, match="did you mean 'nelder-mead'"):
        search_weights(AUC, Combiner("weighted"), y, probs, "nelder_mead")


# ---------------------------------------------------------------- folds


def test_the_fold_column_is_used_when_present() -> None:
    y = np.array([0, 1, 0, 1, 0, 1], dtype=float)
    fold_ids, source = assign_folds(y, folds=np.array([2, 2, 0, 0, 1, 1]))
    assert fold_ids.tolist() == [2, 2, 0, 0, 1, 1]
    assert "fold" in source


def test_seeded_folds_keep_patients_whole_and_spread_the_labels() -> None:
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 3).astype(str)
    y = np.repeat((rng.random(60) < 0.3).astype(float), 3)
    fold_ids, source = assign_folds(y, folds=np.zeros(180), groups=patients, k=5, seed=7)  # one fold: ignored
    assert "patient_id" in source
    for p in np.unique(patients):
        assert len(set(fold_ids[patients == p])) == 1
    positives = [y[fold_ids == f].sum() / 3 for f in range(5)]
    assert max(positives) - min(positives) <= 1
    again, _ = assign_folds(y, groups=patients, k=5, seed=7)
    np.testing.assert_array_equal(fold_ids, again)


def test_too_few_rows_to_cross_validate() -> None:
    with pytest.raises(DataError, match="cannot cross-validate"):
        assign_folds(np.array([1.0]), k=5)


def test_a_label_of_one_class_keeps_equal_weights_without_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    n = 200
    y = np.zeros((n, 2))
    y[:, 0] = rng.random(n) < 0.5  # label 1 has no positive in these rows (a rare finding in a small fold)
    good = np.stack([y[:, 0] * 0.6 + rng.random(n) * 0.4, rng.random(n)], axis=1)
    probs = np.stack([good, rng.random((n, 2))])
    w = search_weights(Scorer.build("auc", MULTILABEL), Combiner("weighted"), y, probs, "hill", per_label=True)
    np.testing.assert_allclose(w[:, 0], [1.0, 0.0])
    np.testing.assert_allclose(w[:, 1], [0.5, 0.5])
    w = search_weights(AUC, Combiner("weighted"), np.zeros(n), probs[:, :, :1], "hill")
    np.testing.assert_allclose(w, [0.5, 0.5])
    assert "undefined" not in capsys.readouterr().err

"""Blend methods against hand-computed values and a plain-loop reference; weight normalisation; grades and cut
points of graded outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medkit.ensemble import (
    EPS,
    blend,
    expected_grade,
    fit_cut_points,
    grades,
    normalise_weights,
    qwk_with_cut_points,
    rank_scale,
    uses_cut_points,
)
from medkit.errors import UsageError
from medkit.metrics import optimise_thresholds
from medkit.target import BINARY, MULTICLASS, MULTILABEL, ORDINAL

# Two members, three rows, two columns.
P1 = np.array([[0.2, 0.9], [0.4, 0.5], [0.6, 0.1]])
P2 = np.array([[0.4, 0.5], [0.8, 0.3], [0.2, 0.7]])
PROBS = np.stack([P1, P2])
W = np.array([0.75, 0.25])


def _ranks(column: list[float]) -> list[float]:
    """Average ranks scaled to [0, 1], by counting (no sorting library)."""
    n = len(column)
    out = []
    for v in column:
        below = sum(1 for u in column if u < v)
        equal = sum(1 for u in column if u == v)
        out.append((below + (equal - 1) / 2) / (n - 1))
    return out


def _plain(probs: np.ndarray, method: str, w: list[float], power: float = 2.0) -> np.ndarray:
    """A loop over rows, columns and members, written from the formulas in docs/ensemble.md."""
    m, n, k = probs.shape
    w = [x / sum(w) for x in w]
    out = np.zeros((n, k))
    ranks = [[_ranks([probs[i, r, c] for r in range(n)]) for c in range(k)] for i in range(m)]
    for r in range(n):
        for c in range(k):
            if method in ("mean", "weighted"):
                out[r, c] = sum(w[i] * probs[i, r, c] for i in range(m))
            elif method == "rank":
                out[r, c] = sum(w[i] * ranks[i][c][r] for i in range(m))
            elif method == "geometric":
                out[r, c] = math.exp(sum(w[i] * math.log(max(probs[i, r, c], EPS)) for i in range(m)))
            elif method == "power":
                out[r, c] = sum(w[i] * probs[i, r, c] ** power for i in range(m)) ** (1 / power)
    return out


def test_hand_computed_cells() -> None:
    assert blend(PROBS, "weighted", W)[0, 0] == pytest.approx(0.75 * 0.2 + 0.25 * 0.4)
    assert blend(PROBS, "mean")[1, 1] == pytest.approx((0.5 + 0.3) / 2)
    assert blend(PROBS, "geometric", W)[0, 0] == pytest.approx(0.2**0.75 * 0.4**0.25)
    assert blend(PROBS, "power", W, power=2.0)[0, 0] == pytest.approx(math.sqrt(0.75 * 0.04 + 0.25 * 0.16))
    # column 0: member 1 ranks rows 0, 0.5, 1; member 2 (0.4, 0.8, 0.2) ranks them 0.5, 1, 0
    np.testing.assert_allclose(blend(PROBS, "rank", W)[:, 0], [0.125, 0.625, 0.75])


@pytest.mark.parametrize("method", ["mean", "weighted", "rank", "geometric", "power"])
@pytest.mark.parametrize("weights", [[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
def test_every_method_matches_the_plain_loop(method: str, weights: list[float]) -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((3, 7, 2))
    probs[1, 2, 0] = probs[1, 4, 0]  # a tie for the ranks
    probs[2, 0, 1] = 0.0  # a zero for the log
    w = [*weights, 1.0]
    np.testing.assert_allclose(blend(probs, method, w, power=3.0), _plain(probs, method, w, power=3.0), atol=1e-12)


def test_power_one_is_the_mean_and_geometric_clips_zero() -> None:
    np.testing.assert_allclose(blend(PROBS, "power", W, power=1.0), blend(PROBS, "weighted", W))
    zero = np.stack([np.zeros((1, 1)), np.ones((1, 1))])
    assert blend(zero, "geometric")[0, 0] == pytest.approx(math.sqrt(EPS))


def test_per_label_weights_blend_each_column_with_its_own() -> None:
    w = np.array([[1.0, 0.0], [0.0, 1.0]])  # column 0 from member 1, column 1 from member 2
    out = blend(PROBS, "weighted", w)
    np.testing.assert_allclose(out[:, 0], P1[:, 0])
    np.testing.assert_allclose(out[:, 1], P2[:, 1])


def test_softmax_outputs_are_renormalised_for_geometric_and_power() -> None:
    a = np.array([[0.7, 0.2, 0.1]])
    b = np.array([[0.1, 0.6, 0.3]])
    probs = np.stack([a, b])
    geo = blend(probs, "geometric", softmax=True)
    raw = np.sqrt(a * b)
    np.testing.assert_allclose(geo, raw / raw.sum())
    assert blend(probs, "power", softmax=True).sum() == pytest.approx(1.0)
    assert blend(probs, "geometric", softmax=False).sum() == pytest.approx(raw.sum())  # sigmoid outputs: as is


def test_rank_scale_single_row_and_ties() -> None:
    assert rank_scale(np.array([[[0.3]]]))[0, 0, 0] == 0.5
    np.testing.assert_allclose(rank_scale(np.array([[[0.1], [0.5], [0.5], [0.9]]]))[0, :, 0], [0, 0.5, 0.5, 1])


def test_weights_are_normalised_per_column() -> None:
    np.testing.assert_allclose(normalise_weights([2.0, 6.0], 2), [[0.25], [0.75]])
    np.testing.assert_allclose(normalise_weights(None, 4, 2), np.full((4, 2), 0.25))
    np.testing.assert_allclose(normalise_weights([[1, 3], [1, 1]], 2, 2), [[0.5, 0.75], [0.5, 0.25]])
    with pytest.raises(UsageError, match=">= 0"):
        normalise_weights([1.0, -0.5], 2)
    with pytest.raises(UsageError, match="sum to 0"):
        normalise_weights([0.0, 0.0], 2)
    with pytest.raises(UsageError, match="members"):
        normalise_weights([1.0, 1.0, 1.0], 2)


def test_unknown_method_and_bad_power_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="did you mean 'geometric'"):
        blend(PROBS, "geometirc")
    with pytest.raises(UsageError, match="--power must be > 0"):
        blend(PROBS, "power", power=0.0)


# ---------------------------------------------------------------- graded outputs


def test_expected_grade_of_ordinal_and_multiclass() -> None:
    cumulative = np.array([[0.9, 0.4], [0.1, 0.0]])  # P(grade > 0), P(grade > 1)
    np.testing.assert_allclose(expected_grade(ORDINAL, cumulative), [1.3, 0.1])
    classes = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(expected_grade(MULTICLASS, classes), [1.3, 0.0])


def test_cut_points_separate_the_grades_exactly() -> None:
    # expected grades 0.1 0.2 | 0.7 0.8 | 0.9 1.0: rounding puts the last four in grade 1. The first cut may stay
    # at 0.5 (already between 0.2 and 0.7; ties keep the current value), the second moves to the midpoint 0.85:
    # a perfect QWK.
    y = np.array([0, 0, 1, 1, 2, 2])
    exp = np.array([0.1, 0.2, 0.7, 0.8, 0.9, 1.0])
    cumulative = np.stack([np.minimum(exp, 1.0), np.maximum(exp - 1.0, 0.0)], axis=1)
    cuts = fit_cut_points(ORDINAL, y, cumulative, 3)
    np.testing.assert_allclose(cuts, [0.5, 0.85])
    np.testing.assert_allclose(cuts, optimise_thresholds(y, exp, 3))
    assert grades(ORDINAL, cumulative, cuts).tolist() == [0, 0, 1, 1, 2, 2]
    assert grades(ORDINAL, cumulative).tolist() == [0, 0, 1, 1, 1, 1]  # rounded
    assert qwk_with_cut_points(ORDINAL, y, cumulative, cuts, 3) == pytest.approx(1.0)


def test_multiclass_grades_default_to_the_argmax() -> None:
    classes = np.array([[0.5, 0.0, 0.5], [0.1, 0.6, 0.3]])
    assert grades(MULTICLASS, classes).tolist() == [0, 1]
    assert grades(MULTICLASS, classes, [0.5, 1.5]).tolist() == [1, 1]  # expected grades 1.0 and 1.2


def test_cut_points_only_for_graded_outputs_with_qwk() -> None:
    assert uses_cut_points(ORDINAL, "qwk") and uses_cut_points(MULTICLASS, "qwk")
    assert not uses_cut_points(ORDINAL, "accuracy")
    assert not uses_cut_points(BINARY, "qwk") and not uses_cut_points(MULTILABEL, "auc")

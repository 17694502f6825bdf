"""Neighbour aggregation of CT slice logits against hand-computed weighted sums (edges, unsorted rows, series)."""

from __future__ import annotations

import numpy as np
import pytest

from medkit.engine.aggregate import aggregate_neighbours, parse_weights
from medkit.errors import DataError, UsageError

W = (0.25, 0.5, 0.25)


def test_one_series_in_order_with_repeated_edges() -> None:
    logits = np.array([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0], [2.0, 2.0]])
    got = aggregate_neighbours(logits, ["s"] * 4, [1, 2, 3, 4], W)
    # slice 1: 0.25*1 + 0.5*1 + 0.25*3 (the first slice repeated before it)
    expected = np.array(
        [
            [0.25 * 1 + 0.5 * 1 + 0.25 * 3, 0.25 * -2 + 0.5 * -2 + 0.25 * 0],
            [0.25 * 1 + 0.5 * 3 + 0.25 * -1, 0.25 * -2 + 0.5 * 0 + 0.25 * 4],
            [0.25 * 3 + 0.5 * -1 + 0.25 * 2, 0.25 * 0 + 0.5 * 4 + 0.25 * 2],
            [0.25 * -1 + 0.5 * 2 + 0.25 * 2, 0.25 * 4 + 0.5 * 2 + 0.25 * 2],
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert expected[0, 0] == 1.5 and expected[3, 1] == 2.5


def test_unsorted_rows_of_two_series_come_back_in_input_order() -> None:
    # series A slices 10, 20, 30 (logits 1, 2, 4); series B slices 1, 2 (logits 8, 16); rows shuffled.
    series = ["B", "A", "A", "B", "A"]
    order = [2, 30, 10, 1, 20]
    logits = np.array([16.0, 4.0, 1.0, 8.0, 2.0])
    got = aggregate_neighbours(logits, series, order, (1.0, 10.0, 100.0))
    # out = 1 * previous + 10 * self + 100 * next, edges repeated
    expected = [
        8 + 160 + 1600,  # B slice 2: prev 8, next = itself
        2 + 40 + 400,  # A slice 30: prev 2, next = itself
        1 + 10 + 200,  # A slice 10: prev = itself, next 2
        8 + 80 + 1600,  # B slice 1: prev = itself, next 16
        1 + 20 + 400,  # A slice 20
    ]
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (5,)


def test_five_weights_reach_two_slices_each_side() -> None:
    logits = np.array([[0.0], [1.0], [2.0], [3.0]])
    got = aggregate_neighbours(logits, [0, 0, 0, 0], [0, 1, 2, 3], (1, 2, 3, 4, 5))
    # slice 0 window: [0, 0, 0, 1, 2] -> 0 + 0 + 0 + 4 + 10; slice 3: [1, 2, 3, 3, 3] -> 1 + 4 + 9 + 12 + 15
    np.testing.assert_array_equal(got[:, 0], [14, 1 * 0 + 2 * 0 + 3 * 1 + 4 * 2 + 5 * 3, 0 + 2 + 6 + 12 + 15, 41])


def test_a_single_slice_series_and_equal_positions_keep_row_order() -> None:
    got = aggregate_neighbours(np.array([5.0, 1.0, 3.0]), ["x", "y", "y"], [0, 7, 7], (1.0, 0.0, 0.0))
    # x alone: its own value; y: two slices at the same position in row order (1 then 3): previous of 3 is 1
    np.testing.assert_array_equal(got, [5.0, 1.0, 1.0])


def _reference(logits: np.ndarray, series: list[str], order: list[float], w: tuple[float, ...]) -> np.ndarray:
    out = np.zeros_like(logits)
    r = len(w) // 2
    for s in set(series):
        rows = sorted((i for i in range(len(series)) if series[i] == s), key=lambda i: (order[i], i))
        for p, i in enumerate(rows):
            for j, wj in enumerate(w):
                q = min(max(p + j - r, 0), len(rows) - 1)
                out[i] += wj * logits[rows[q]]
    return out


def test_matches_a_plain_loop_on_random_series() -> None:
    rng = np.random.default_rng(0)
    n = 200
    series = [f"s{v}" for v in rng.integers(0, 13, n)]
    order = rng.normal(size=n).tolist()
    logits = rng.normal(size=(n, 6))
    for w in [(0.1, 0.8, 0.1), (0.05, 0.1, 0.7, 0.1, 0.05), (1.0,)]:
        np.testing.assert_allclose(aggregate_neighbours(logits, series, order, w), _reference(logits, series, order, w))


def test_no_weights_leave_the_logits_unchanged() -> None:
    x = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(aggregate_neighbours(x, ["a"], [0], ()), x)


def test_parse_weights() -> None:
    assert parse_weights("0.25, 0.5,0.25") == (0.25, 0.5, 0.25)
    assert parse_weights("none") == () and parse_weights(None) == () and parse_weights("") == ()
    assert parse_weights([1, 2, 3]) == (1.0, 2.0, 3.0)
    with pytest.raises(UsageError, match="odd count"):
        parse_weights("0.5,0.5")
    with pytest.raises(UsageError, match="must be numbers"):
        parse_weights("a,b,c")


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(UsageError, match="odd count"):
        aggregate_neighbours(np.zeros((2, 1)), ["a", "a"], [0, 1], (1.0, 1.0))
    with pytest.raises(DataError, match="no slice order"):
        aggregate_neighbours(np.zeros((2, 1)), ["a", "a"], [0, float("nan")], W)
    with pytest.raises(DataError, match="not numeric"):
        aggregate_neighbours(np.zeros((2, 1)), ["a", "a"], ["x", "y"], W)
    with pytest.raises(DataError, match="2 rows of logits but 3 series"):
        aggregate_neighbours(np.zeros((2, 1)), ["a", "a", "b"], [0, 1], W)

"""The assignment optimiser: units into folds, even label prevalence and fold sizes on target.

Greedy placement (rarest label first, larger units first, the order of iterative stratification applied to
units) followed by a local search of single-unit moves and pair swaps, all on a chi-square distance (see
`assign_units`). This module imports numpy (and threadpoolctl when present), not torch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

__all__ = ["assign_units"]


def _objective(excess: np.ndarray, weight: np.ndarray) -> float:
    return float((excess * excess * weight).sum())


def assign_units(
    counts: np.ndarray,
    sizes: np.ndarray,
    ratios: np.ndarray,
    seed: int = 42,
    passes: int = 20,
    size_weight: float = 1.0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Place units into folds so that every fold has the overall prevalence of every label and its share of rows.

    For fold k with ``n[k]`` rows and ``A[k,l]`` positives of label l, the distance minimised is

        sum_{k,l} (A[k,l] - p[l] * n[k])**2 / (ratios[k] * T[l])
        + size_weight * sum_k (n[k] - ratios[k] * N)**2 / (ratios[k] * N)

    where ``T[l]`` is the label's total, ``p[l] = T[l] / N`` its prevalence and N the number of rows: a
    chi-square distance of every fold's prevalence from the overall one, plus one of fold sizes from their
    targets (at ``size_weight`` 1, fold size counts like a label present in every row). Aiming at prevalence
    rather than at count targets lets a fold that must take one positive of a rare label more than its share
    also take a few more rows; a ``size_weight`` below 1 allows more of that. Greedy placement (rarest label
    first, larger units first, seeded random order among equals) is followed by up to ``passes`` rounds of
    single-unit moves and pair swaps that lower the distance.

    Args:
        counts: ``(units, labels)`` positives per unit.
        sizes: ``(units,)`` rows per unit.
        ratios: ``(folds,)`` target shares summing to 1.
        seed: Seed of the tie-breaks.
        passes: Local-search rounds (0 = greedy only).
        size_weight: Weight of the fold-size term against the prevalence terms.

    Returns:
        ``(units,)`` fold of every unit, and the distance after the greedy pass and at the end.
    """
    # The matrices here are thin (units x a few folds); a multithreaded BLAS spends far longer waking threads
    # than computing, and 25x longer on a busy machine, so the search runs on one BLAS thread.
    try:
        from threadpoolctl import threadpool_limits

        limit: Any = threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limit = contextlib.nullcontext()
    with limit:
        return _assign_units(counts, sizes, ratios, seed, passes, size_weight)


def _assign_units(
    counts: np.ndarray, sizes: np.ndarray, ratios: np.ndarray, seed: int, passes: int, size_weight: float
) -> tuple[np.ndarray, dict[str, float]]:
    counts = np.asarray(counts, dtype=np.float64).reshape(len(sizes), -1)
    sizes = np.asarray(sizes, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64)
    n_units = len(sizes)
    k = len(ratios)
    rng = np.random.default_rng(seed)
    order_noise = rng.random(n_units)
    fold_noise = rng.random((n_units, k)) * 1e-12
    total = counts.sum(axis=0)
    n_rows = sizes.sum()
    prevalence = total / n_rows if n_rows else np.zeros_like(total)
    # Each unit's positives beyond what its rows would carry at the overall prevalence: a fold whose units sum
    # to 0 in a column has exactly the overall prevalence of that label. The last column is the row count.
    x = np.concatenate([counts - sizes[:, None] * prevalence[None, :], sizes[:, None]], axis=1)
    scale = ratios[:, None] * np.append(total, n_rows)[None, :]
    weight = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    weight[:, -1] *= size_weight
    excess = np.zeros_like(scale)
    excess[:, -1] = -ratios * n_rows
    # Rarity of a unit = total of its rarest positive label; units of rare labels are placed first, while
    # every fold still has room for them.
    rarity = np.where(counts > 0, total[None, :], np.inf).min(axis=1) if counts.size else np.full(n_units, np.inf)
    fold = np.empty(n_units, dtype=np.int64)
    sq = x * x
    # Half the cost of placing u in fold k is sum_l w[k,l] * (x[u,l]**2 / 2 + x[u,l] * excess[k,l]); the first
    # part does not change during the pass, and w * excess is kept up to date, so a step is one small mat-vec.
    half_base = 0.5 * (sq @ weight.T) + fold_noise
    wx = weight * excess
    for u in np.lexsort((order_noise, -sizes, rarity)).tolist():
        c = x[u]
        cost = wx @ c
        cost += half_base[u]
        f = int(cost.argmin())
        fold[u] = f
        wx[f] += weight[f] * c
    np.add.at(excess, fold, x)
    # The distance can be as low with a fold left empty as with every fold used (strata cells of one row each
    # make that a tie); when there are enough units, no fold stays empty.
    _fill_empty_folds(x, sq, fold, excess, weight)
    stats = {"greedy": _objective(excess, weight)}
    if n_units and k > 1:
        for _ in range(passes):
            moved = _move_round(x, sq, fold, excess, weight)
            swapped = _swap_round(x, sq, fold, excess, weight)
            if not moved and not swapped:
                break
        _settle_ties(x, sq, fold, excess, weight, ratios)
    stats["final"] = _objective(excess, weight)
    return fold, stats


def _move_gains(x: np.ndarray, sq: np.ndarray, fold: np.ndarray, excess: np.ndarray, weight: np.ndarray) -> Any:
    """Change of the distance when unit u leaves its fold for fold b, for every (u, b) at once (inf: stay)."""
    rows = np.arange(len(fold))
    m1 = sq @ weight.T
    m2 = x @ (excess * weight).T
    leave = m1[rows, fold] - 2.0 * m2[rows, fold]
    gain = m1 + 2.0 * m2 + leave[:, None]
    gain[rows, fold] = np.inf
    return gain


def _fill_empty_folds(x: np.ndarray, sq: np.ndarray, fold: np.ndarray, excess: np.ndarray, weight: np.ndarray) -> None:
    """Move into each empty fold the unit (from a fold of two or more) whose move costs least."""
    k = excess.shape[0]
    while len(fold) >= k:
        members = np.bincount(fold, minlength=k)
        empty = np.flatnonzero(members == 0)
        if not len(empty):
            return
        b = int(empty[0])
        movable = np.flatnonzero(members[fold] > 1)
        gain = _move_gains(x, sq, fold, excess, weight)[movable, b]
        u = int(movable[int(np.argmin(gain))])
        excess[fold[u]] -= x[u]
        excess[b] += x[u]
        fold[u] = b


def _settle_ties(
    x: np.ndarray, sq: np.ndarray, fold: np.ndarray, excess: np.ndarray, weight: np.ndarray, ratios: np.ndarray
) -> None:
    """Moves that leave the distance unchanged but bring fold sizes nearer their targets, until none is left.

    One-hot strata sum to the row count, so with strata cells of one row each the prevalence terms can cancel the
    size term exactly: then a 3 / 1 split costs the same as 2 / 2. Such ties are settled towards equal sizes.
    """
    k = excess.shape[0]
    sizes = x[:, -1]
    target = ratios * sizes.sum()
    tol = 1e-9 * max(1.0, _objective(excess, weight))
    for _ in range(min(len(fold), 1000)):  # each move lowers the size deviation; ties are small-table cases
        members = np.bincount(fold, minlength=k)
        over = np.bincount(fold, weights=sizes, minlength=k) - target
        gain = _move_gains(x, sq, fold, excess, weight)
        # Moving u (size s) from a to b lowers the squared size deviations when over[a] - over[b] > s.
        better = (over[fold][:, None] - over[None, :]) > sizes[:, None] + 1e-9
        ok = better & (np.abs(gain) <= tol) & (members[fold] > 1)[:, None]
        cand = np.argwhere(ok)
        if not len(cand):
            return
        u, b = (int(v) for v in cand[0])
        excess[fold[u]] -= x[u]
        excess[b] += x[u]
        fold[u] = b


def _move_round(x: np.ndarray, sq: np.ndarray, fold: np.ndarray, excess: np.ndarray, weight: np.ndarray) -> int:
    """Move single units to the fold that lowers the distance most, best moves first; return how many moved.

    A move that would leave a fold empty is not made while there are at least as many units as folds.
    """
    gain = _move_gains(x, sq, fold, excess, weight)
    best_gain = gain.min(axis=1)
    cand = np.flatnonzero(best_gain < -1e-12)
    moved = 0
    members = np.bincount(fold, minlength=excess.shape[0])
    keep_full = len(fold) >= excess.shape[0]
    for u in cand[np.argsort(best_gain[cand], kind="stable")]:
        a = fold[u]
        if keep_full and members[a] == 1:
            continue
        c = x[u]
        # Earlier moves in this round changed the excess: recompute this unit's gain exactly.
        change = ((c * c + 2.0 * c * excess) * weight).sum(axis=1) + ((c * c - 2.0 * c * excess[a]) * weight[a]).sum()
        change[a] = np.inf
        b = int(np.argmin(change))
        if change[b] < -1e-12:
            excess[a] -= c
            excess[b] += c
            fold[u] = b
            members[a] -= 1
            members[b] += 1
            moved += 1
    return moved


def _swap_round(
    x: np.ndarray, sq: np.ndarray, fold: np.ndarray, excess: np.ndarray, weight: np.ndarray, top: int = 256
) -> int:
    """Exchange pairs of units between two folds, where a single move would unbalance the fold sizes.

    Swapping u (fold a) with v (fold b) changes the distance by ``move(u, a->b) + move(v, b->a)
    - 2 * sum_l (w[a,l] + w[b,l]) * x[u,l] * x[v,l]``; the best pair is searched among the ``top`` units of
    each fold whose single move is cheapest. Returns the number of swaps made.
    """
    k = excess.shape[0]
    swapped = 0
    gain = _move_gains(x, sq, fold, excess, weight)
    for a in range(k):
        for b in range(a + 1, k):
            in_a = np.flatnonzero(fold == a)
            in_b = np.flatnonzero(fold == b)
            if not len(in_a) or not len(in_b):
                continue
            ga, gb = gain[in_a, b], gain[in_b, a]
            if len(in_a) > top:
                keep = np.argpartition(ga, top)[:top]
                in_a, ga = in_a[keep], ga[keep]
            if len(in_b) > top:
                keep = np.argpartition(gb, top)[:top]
                in_b, gb = in_b[keep], gb[keep]
            delta = ga[:, None] + gb[None, :] - 2.0 * (x[in_a] * (weight[a] + weight[b])) @ x[in_b].T
            i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
            if delta[i, j] < -1e-12:
                u, v = in_a[i], in_b[j]
                d = x[u] - x[v]
                excess[a] -= d
                excess[b] += d
                fold[u], fold[v] = b, a
                swapped += 1
                gain = _move_gains(x, sq, fold, excess, weight)
    return swapped

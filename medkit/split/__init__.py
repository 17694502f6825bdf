"""Leak-free, stratified folds: patient groups and near-duplicate clusters stay whole, label prevalence stays even.

The problem has three parts, solved in this order:

1. **Units.** Rows that must share a fold are merged into one unit by union-find (connected components) over
   three keys: the image itself (the same image listed twice is one image), the group (patient, study) and the
   near-duplicate cluster from ``medkit audit``. A duplicate cluster that spans two patients merges both
   patients into one unit; such merges are counted and reported, never silently broken.
2. **Assignment.** Every unit carries a count vector: its positives per label (multi-hot columns, one-hot
   classes, one-hot strata) plus its row count. Units are placed greedily, rarest label first and larger units
   first within a label (the order of iterative stratification, Sechidis et al. 2011, applied to units instead
   of rows), each into the fold where it least increases a chi-square distance between the fold's label
   prevalences and the overall ones, plus one of fold sizes from their targets. A local search then moves single
   units between folds, and swaps pairs of units, while that distance drops.
3. **Certificate.** From the final assignment alone, count groups that occur in more than one fold and
   duplicate clusters that do; both must be 0.

Everything is keyed by sorted values of the image, group and cluster columns, so the result depends on the seed
and the table's content, never on its row order. This module imports numpy, pandas and scipy (and
threadpoolctl when present), not torch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = [
    "LabelMatrix",
    "Units",
    "SplitResult",
    "parse_holdout",
    "expand_separated",
    "label_matrix",
    "build_units",
    "assign_units",
    "split_table",
    "leakage_certificate",
    "prevalence_table",
    "max_deviation",
    "looks_like_rsna_long",
]

MAX_CLASSES = 50
_RSNA_ID = re.compile(r"^ID_[0-9a-fA-F]+_(epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any)$")


@dataclass
class LabelMatrix:
    """Per-row 0/1 indicators that the split balances.

    Attributes:
        values: ``(rows, columns)`` float array of 0/1 indicators.
        names: One name per column: a label, ``column=value`` for a class or a stratum.
        sources: The table column each indicator comes from.
    """

    values: np.ndarray
    names: list[str]
    sources: list[str]


@dataclass
class Units:
    """Rows merged into units that must share a fold.

    Attributes:
        of_row: ``(rows,)`` unit index of every row.
        count: Number of units.
        merged_units: Units that hold more than one group because a duplicate cluster joined them.
        conflicting_clusters: Duplicate clusters whose images belong to more than one group.
    """

    of_row: np.ndarray
    count: int
    merged_units: int = 0
    conflicting_clusters: int = 0


@dataclass
class SplitResult:
    """A finished split and everything the report needs.

    Attributes:
        fold: ``(rows,)`` fold index of every row (for a holdout: 0 train, 1 val, 2 test).
        fold_names: Name of each fold (``"0"``..``"K-1"``, or ``train``/``val``/``test``).
        ratios: Target share of rows per fold.
        labels: The indicators that were balanced.
        units: The units that were kept whole.
        certificate: Leakage counts computed from ``fold`` alone (see `leakage_certificate`).
        group: The group column used, or None.
        unmatched_duplicates: Rows of the duplicates table whose image is not in the table.
        objective: Chi-square distance to the target counts after the greedy pass and after the local search.
    """

    fold: np.ndarray
    fold_names: list[str]
    ratios: np.ndarray
    labels: LabelMatrix
    units: Units
    certificate: dict[str, int]
    group: str | None = None
    unmatched_duplicates: int = 0
    objective: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No group shared between folds, no duplicate cluster split, no empty fold."""
        return all(v == 0 for v in self.certificate.values())


def parse_holdout(text: str) -> np.ndarray:
    """Target shares of a holdout: ``"0.2"`` gives train/val 0.8/0.2, ``"0.2,0.1"`` train/val/test 0.7/0.2/0.1.

    Raises:
        UsageError: When the shares are not numbers in (0, 1) that sum to less than 1.
    """
    try:
        parts = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--holdout '{text}' is not a number list", hint="use e.g. --holdout 0.2 or 0.2,0.1") from None
    if not 1 <= len(parts) <= 2 or any(not 0 < p < 1 for p in parts) or sum(parts) >= 1:
        raise UsageError(
            f"--holdout '{text}' must be one or two shares in (0, 1) that sum to less than 1",
            hint="use e.g. --holdout 0.2 (train/val) or 0.2,0.1 (train/val/test)",
        )
    return np.array([1 - sum(parts), *parts])


def expand_separated(series: Any, sep: str = "|") -> Any:
    """Turn a column of separated labels (NIH ``"Effusion|Mass"``) into multi-hot columns named by the labels.

    Every distinct token becomes a column, including tokens such as ``No Finding``; empty cells give all zeros.
    Columns are sorted by name so the result does not depend on row order.
    """
    import pandas as pd

    text = series.fillna("").astype(str)
    dummies = text.str.get_dummies(sep=sep)
    dummies.columns = [str(c).strip() for c in dummies.columns]
    dummies = dummies.T.groupby(level=0).max().T if dummies.columns.duplicated().any() else dummies
    dummies = dummies.loc[:, [c for c in dummies.columns if c]]
    return pd.DataFrame(dummies[sorted(dummies.columns)].to_numpy(dtype=np.int8), columns=sorted(dummies.columns))


def _indicators(df: Any, column: str, as_stratum: bool, strict: bool) -> tuple[np.ndarray, list[str]] | None:
    """0/1 indicator columns for one table column: itself when binary, one per class or stratum value otherwise."""
    import pandas as pd

    s = df[column]
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64)[:, None], [column]
    present = s.dropna()
    if not as_stratum and numeric and present.isin([0, 1]).all():
        return s.fillna(0).to_numpy(dtype=np.float64)[:, None], [column]
    values = np.unique(present.to_numpy() if numeric else present.astype(str).to_numpy())
    if len(values) > MAX_CLASSES:
        if strict:
            kind = "stratum" if as_stratum else "label"
            raise UsageError(
                f"{kind} column '{column}' has {len(values)} distinct values (more than {MAX_CLASSES})",
                hint="pass a binary, class or grade column, or bin a continuous one before splitting",
            )
        return None
    key = s.to_numpy() if numeric else s.astype(str).where(s.notna(), None).to_numpy()
    cols = np.stack([(key == v) for v in values], axis=1).astype(np.float64)
    names = [f"{column}={v.item() if hasattr(v, 'item') else v}" for v in values]
    return cols, names


def joint_parts(column: str) -> list[str]:
    """The table columns of a stratum: ``"isup_grade*data_provider"`` -> both, a plain name -> itself."""
    return [c.strip() for c in column.split("*")] if "*" in column else [column]


def _with_joint(df: Any, column: str) -> Any:
    """``df`` with a joint stratum column ``a*b`` added (values ``"3|radboud"``; missing when a part is missing)."""
    parts = joint_parts(column)
    if len(parts) == 1:
        return df
    sub = df[parts]
    joint = sub.astype(str).agg("|".join, axis=1).where(sub.notna().all(axis=1), None)
    return df.assign(**{column: joint})


def label_matrix(
    df: Any, labels: Sequence[str] = (), strata: Sequence[str] = (), strict: bool = True
) -> tuple[LabelMatrix, list[str]]:
    """Indicators to balance: binary label columns as they are, class/grade columns and strata one-hot.

    Args:
        df: The table.
        labels: Label columns (0/1 multi-hot, a class index, an ordinal grade).
        strata: Extra columns to balance (data provider, scanner, sex), one-hot whatever their type; ``a*b``
            balances every combination of the values of ``a`` and ``b`` (grade x data provider).
        strict: Raise on a column with too many distinct values; otherwise skip it and name it in the return.

    Returns:
        The indicators and the label columns that were skipped.

    Raises:
        UsageError: (strict) When a column has more than 50 distinct values.
    """
    blocks: list[np.ndarray] = []
    names: list[str] = []
    sources: list[str] = []
    skipped: list[str] = []
    for col, as_stratum in [*((c, False) for c in labels), *((c, True) for c in strata)]:
        got = _indicators(_with_joint(df, col) if as_stratum else df, col, as_stratum, strict)
        if got is None:
            skipped.append(col)
            continue
        blocks.append(got[0])
        names.extend(got[1])
        sources.extend([col] * len(got[1]))
    values = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
    return LabelMatrix(values, names, sources), skipped


def _codes(values: Any) -> tuple[np.ndarray, int]:
    """Codes of sorted distinct values (-1 for missing), so codes do not depend on row order."""
    import pandas as pd

    s = pd.Series(values)
    missing = s.isna().to_numpy()
    codes, uniques = pd.factorize(s.astype(str).where(~missing, None), sort=True)
    codes = np.asarray(codes, dtype=np.int64)
    codes[missing] = -1
    return codes, len(uniques)


def _distinct_per_key(key: np.ndarray, value: np.ndarray, n_keys: int) -> int:
    """How many keys occur with more than one distinct value (both non-negative integer codes)."""
    if not len(key):
        return 0
    pairs = np.unique(key.astype(np.int64) * (int(value.max()) + 1) + value)
    return int((np.bincount(pairs // (int(value.max()) + 1), minlength=n_keys) > 1).sum())


def build_units(images: Any, groups: Any = None, clusters: Any = None) -> Units:
    """Merge rows that share an image, a group or a duplicate cluster into units (connected components).

    Args:
        images: Per-row image key (the same image twice is one unit).
        groups: Per-row group key (patient, study), or None; missing values mean no group.
        clusters: Per-row duplicate cluster key, or None; missing values mean no cluster.

    Returns:
        The units, numbered in the order of the sorted image keys.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    img, n_img = _codes(images)
    n_rows = len(img)
    # An image without a key gets a node of its own; only then does row order matter.
    lone = np.flatnonzero(img < 0)
    img[lone] = n_img + np.arange(len(lone))
    n_img += len(lone)
    offset = n_img
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    grp = clu = None
    n_grp = 0
    for key, name in ((groups, "group"), (clusters, "cluster")):
        if key is None:
            continue
        codes, n = _codes(key)
        has = codes >= 0
        src.append(img[has])
        dst.append(codes[has] + offset)
        if name == "group":
            grp, n_grp = np.where(has, codes, -1), n
        else:
            clu = np.where(has, codes, -1)
        offset += n
    a = np.concatenate(src) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(offset, offset)).tocsr()
    _, comp = connected_components(graph, directed=False)
    # Renumber components by their first image node so unit ids follow the sorted image keys.
    _, unit_of_image = np.unique(comp[:n_img], return_inverse=True)
    of_row = unit_of_image[img]
    count = int(of_row.max()) + 1 if n_rows else 0
    merged = conflicting = 0
    if grp is not None and n_grp:
        has = grp >= 0
        merged = _distinct_per_key(of_row[has], grp[has], count)
        if clu is not None:
            both = has & (clu >= 0)
            conflicting = _distinct_per_key(clu[both], grp[both], int(clu.max()) + 1)
    return Units(of_row, count, merged, conflicting)


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


def leakage_certificate(fold: np.ndarray, n_folds: int, groups: Any = None, clusters: Any = None) -> dict[str, int]:
    """Leakage counts computed from a fold assignment alone.

    Args:
        fold: ``(rows,)`` fold of every row.
        n_folds: Number of folds that should be non-empty.
        groups: Per-row group key, or None.
        clusters: Per-row duplicate cluster key, or None.

    Returns:
        ``groups_shared`` (groups found in more than one fold), ``duplicate_clusters_split`` (clusters found in
        more than one fold) and ``empty_folds``.
    """
    fold = np.asarray(fold)

    def spread(key: Any) -> int:
        if key is None:
            return 0
        codes, n = _codes(key)
        has = codes >= 0
        if not has.any():
            return 0
        return _distinct_per_key(codes[has], fold[has], n)

    sizes = np.bincount(fold, minlength=n_folds)
    return {
        "groups_shared": spread(groups),
        "duplicate_clusters_split": spread(clusters),
        "empty_folds": int((sizes[:n_folds] == 0).sum()),
    }


def prevalence_table(values: np.ndarray, fold: np.ndarray, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Overall prevalence ``(L,)`` and per-fold prevalence ``(K, L)`` of 0/1 indicators (NaN for an empty fold)."""
    values = np.asarray(values, dtype=np.float64)
    overall = values.mean(axis=0) if len(values) else np.zeros(values.shape[1])
    sums = np.zeros((n_folds, values.shape[1]))
    np.add.at(sums, fold, values)
    sizes = np.bincount(fold, minlength=n_folds).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_fold = sums / sizes[:, None]
    return overall, per_fold


def max_deviation(values: np.ndarray, fold: np.ndarray, n_folds: int) -> tuple[float, float]:
    """Largest absolute and relative prevalence deviation over labels and folds.

    ``abs = max_{l,k} |p[k,l] - p[l]|`` and ``rel = max_{l,k} |p[k,l] - p[l]| / p[l]`` over labels with
    ``p[l] > 0``, where ``p[k,l]`` is the share of positives of label l among the rows of fold k and ``p[l]``
    the share in the whole table. Empty folds are ignored.
    """
    overall, per_fold = prevalence_table(values, fold, n_folds)
    if not overall.size:
        return 0.0, 0.0
    dev = np.abs(per_fold - overall[None, :])
    dev = dev[~np.isnan(dev).any(axis=1)]
    if not dev.size:
        return 0.0, 0.0
    pos = overall > 0
    rel = float((dev[:, pos] / overall[pos]).max()) if pos.any() else 0.0
    return float(dev.max()), rel


def looks_like_rsna_long(df: Any) -> bool:
    """Whether a table is the RSNA hemorrhage long format (``ID_<image>_<subtype>``, ``Label``)."""
    if not {"ID", "Label"} <= set(map(str, df.columns)) or not len(df):
        return False
    head = df["ID"].astype(str).head(20)
    return bool(head.map(lambda s: bool(_RSNA_ID.match(s))).all())


def _match_duplicates(images: Any, duplicates: Any) -> tuple[np.ndarray, int]:
    """Per-row cluster (object array, None when none) from a duplicates table, matched by path, name, then stem."""
    import pandas as pd

    for col in ("image", "cluster"):
        if col not in duplicates.columns:
            raise DataError(
                f"the duplicates table has no '{col}' column (columns: {', '.join(map(str, duplicates.columns))})",
                hint="pass the duplicates.csv written by `medkit audit --out`, with columns image and cluster",
            )
    dup = duplicates.dropna(subset=["image", "cluster"])
    dup_img = dup["image"].astype(str)
    dup_clu = dup["cluster"].astype(str)
    table_img = pd.Series(images).astype(str)

    def name(s: Any) -> Any:
        return s.str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1]

    def stem(s: Any) -> Any:
        return name(s).str.replace(r"\.(png|jpe?g|tiff?|dcm|dicom|npy|npz|bmp|webp)$", "", regex=True, case=False)

    cluster = pd.Series([None] * len(table_img), dtype=object)
    matched = np.zeros(len(dup), dtype=bool)
    for key in (lambda s: s, name, stem):
        lookup = pd.Series(dup_clu.to_numpy(), index=key(dup_img).to_numpy())
        lookup = lookup[~lookup.index.duplicated()]
        todo = cluster.isna().to_numpy()
        hit = key(table_img[todo]).map(lookup)
        cluster[todo] = hit.to_numpy()
        matched |= key(dup_img).isin(key(table_img)).to_numpy()
        if not cluster.isna().any():
            break
    return cluster.to_numpy(), int((~matched).sum())


def split_table(
    df: Any,
    *,
    folds: int = 5,
    holdout: np.ndarray | None = None,
    image: str | None = None,
    group: str | None = None,
    labels: Sequence[str] = (),
    strata: Sequence[str] = (),
    extra_labels: Any = None,
    duplicates: Any = None,
    seed: int = 42,
    passes: int = 20,
    size_weight: float = 1.0,
) -> SplitResult:
    """Split a table into K folds (or a train/val/test holdout) with groups and duplicate clusters kept whole.

    Args:
        df: The table, one row per image.
        folds: Number of folds (ignored with ``holdout``).
        holdout: Target shares of train/val(/test), e.g. from `parse_holdout`.
        image: Image column (the key of duplicates and of identical rows), or None for the row number.
        group: Group column (patient, study), or None.
        labels: Label columns to balance (binary, class or grade).
        strata: Extra columns to balance, one-hot.
        extra_labels: Optional DataFrame of extra 0/1 label columns aligned with ``df`` (an expanded
            pipe-separated column).
        duplicates: Optional DataFrame with columns ``image`` and ``cluster`` (``medkit audit`` output).
        seed: Seed of the tie-breaks.
        passes: Local-search rounds.
        size_weight: Weight of equal fold sizes against even prevalence (see `assign_units`).

    Returns:
        The split, its certificate and what the report needs.

    Raises:
        UsageError: When fewer than 2 folds are asked for.
        DataError: When the table is empty or the duplicates table lacks its columns.
    """
    if holdout is not None:
        ratios = np.asarray(holdout, dtype=np.float64)
        names = ["train", "val", "test"][: len(ratios)]
    else:
        if folds < 2:
            raise UsageError(f"--folds {folds}: a split needs at least 2 folds", hint="use --folds 5, or --holdout 0.2")
        ratios = np.full(folds, 1.0 / folds)
        names = [str(i) for i in range(folds)]
    if not len(df):
        raise DataError("the table has no rows to split", hint="check the table is the one with one row per image")
    lm, _ = label_matrix(df, labels, strata)
    if extra_labels is not None and extra_labels.shape[1]:
        lm = LabelMatrix(
            np.concatenate([np.asarray(extra_labels, dtype=np.float64), lm.values], axis=1),
            [*map(str, extra_labels.columns), *lm.names],
            [*map(str, extra_labels.columns), *lm.sources],
        )
    images = df[image].to_numpy() if image is not None else np.arange(len(df))
    groups = df[group].to_numpy() if group is not None else None
    clusters, unmatched = (None, 0)
    if duplicates is not None:
        clusters, unmatched = _match_duplicates(images, duplicates)
    units = build_units(images, groups, clusters)
    from scipy.sparse import coo_matrix

    n = len(df)
    member = coo_matrix((np.ones(n), (units.of_row, np.arange(n))), shape=(units.count, n)).tocsr()
    counts = member @ lm.values
    sizes = np.asarray(member.sum(axis=1)).ravel()
    unit_fold, stats = assign_units(counts, sizes, ratios, seed=seed, passes=passes, size_weight=size_weight)
    fold = unit_fold[units.of_row] if n else np.zeros(0, np.int64)
    cert = leakage_certificate(fold, len(ratios), groups, clusters)
    return SplitResult(fold, names, ratios, lm, units, cert, group, unmatched, stats)

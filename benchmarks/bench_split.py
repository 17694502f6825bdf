"""Benchmark `medkit split` on the full NIH ChestX-ray14 table against the splitters people use today.

Run by hand (not part of the tests):

    pip install --no-deps --target /tmp/iterstrat iterative-stratification
    python benchmarks/bench_split.py [--table Data_Entry_2017_v2020.csv.gz] [--iterstrat-path /tmp/iterstrat]

Every method gets the same 0/1 label matrix (the tokens of "Finding Labels", "No Finding" included) and the
same patients, and splits into K folds in this one process, one after the other. Printed per method: wall
seconds (the fastest of --repeat runs), patients found in more than one fold, and the largest prevalence
deviation over labels and folds, absolute ``max |p[k,l] - p[l]|`` and relative ``max |p[k,l] - p[l]| / p[l]``
(docs/split.md).

- medkit: patients kept whole, all labels balanced (greedy, and greedy + local search).
- iterstrat MultilabelStratifiedKFold: all labels balanced, patients ignored (the leakage it causes is counted).
- scikit-learn StratifiedGroupKFold: patients kept whole, one label only (the rarest, and "No Finding").
- scikit-learn GroupKFold: patients kept whole, no labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse.csgraph  # noqa: F401  (imported up front: every method is timed without import costs)

from medkit.split import expand_separated, leakage_certificate, max_deviation, split_table

DEFAULT_TABLE = "/work/shared/data/torchxrayvision/Data_Entry_2017_v2020.csv.gz"


def _from_splits(n: int, splits: object) -> np.ndarray:
    fold = np.full(n, -1)
    for k, (_, val) in enumerate(splits):  # type: ignore[call-overload]
        fold[val] = k
    return fold


def main() -> None:
    """Time each splitter on the NIH table and print one row per method."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=DEFAULT_TABLE)
    ap.add_argument("--n-folds", "-k", type=int, default=5, help="number of folds (as `medkit split --n-folds`)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rows", type=int, default=0, help="use only the first N rows (0 = all)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method; the fastest is reported")
    ap.add_argument("--iterstrat-path", default="/tmp/iterstrat", help="folder where iterstrat was pip-installed")
    args = ap.parse_args()

    df = pd.read_csv(args.table)
    if args.rows:
        df = df.head(args.rows).reset_index(drop=True)
    y_df = expand_separated(df["Finding Labels"])
    y = y_df.to_numpy().astype(np.int64)
    patients = df["Patient ID"].to_numpy()
    n, k = len(df), args.n_folds
    rarest = str(y_df.columns[int(np.argmin(y.sum(axis=0)))])
    print(
        f"{Path(args.table).name}: {n} images, {len(np.unique(patients))} patients, {y.shape[1]} labels "
        f"(rarest {rarest}: {int(y_df[rarest].sum())}), {k} folds, seed {args.seed}",
        flush=True,
    )

    methods: list[tuple[str, Callable[[], np.ndarray]]] = [
        (
            "medkit (greedy + local search)",
            lambda: (
                split_table(
                    df, folds=k, image="Image Index", group="Patient ID", extra_labels=y_df, seed=args.seed
                ).fold
            ),
        ),
        (
            "medkit (--size-weight 0.1)",
            lambda: (
                split_table(
                    df,
                    folds=k,
                    image="Image Index",
                    group="Patient ID",
                    extra_labels=y_df,
                    seed=args.seed,
                    size_weight=0.1,
                ).fold
            ),
        ),
        (
            "medkit (greedy only, --passes 0)",
            lambda: (
                split_table(
                    df, folds=k, image="Image Index", group="Patient ID", extra_labels=y_df, seed=args.seed, passes=0
                ).fold
            ),
        ),
    ]
    sys.path.insert(0, args.iterstrat_path)
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        methods.append(
            (
                "iterstrat MultilabelStratifiedKFold",
                lambda: _from_splits(
                    n, MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=args.seed).split(df, y)
                ),
            )
        )
    except ImportError:
        print(f"iterstrat not found under {args.iterstrat_path}: skipped", file=sys.stderr)
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    for label in (rarest, "No Finding"):
        col = y_df[label].to_numpy()
        methods.append(
            (
                f"sklearn StratifiedGroupKFold on '{label}'",
                lambda col=col: _from_splits(
                    n,
                    StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=args.seed).split(
                        df, col, groups=patients
                    ),
                ),
            )
        )
    methods.append(("sklearn GroupKFold", lambda: _from_splits(n, GroupKFold(n_splits=k).split(df, groups=patients))))

    rows = []
    for name, fn in methods:
        seconds = float("inf")
        for _ in range(max(args.repeat, 1)):
            start = time.perf_counter()
            fold = fn()
            seconds = min(seconds, time.perf_counter() - start)
        assert (fold >= 0).all(), name
        shared = leakage_certificate(fold, k, groups=patients)["groups_shared"]
        dev_abs, dev_rel = max_deviation(y, fold, k)
        rows.append((name, seconds, shared, dev_abs, dev_rel))
        print(f"  done: {name} ({seconds:.2f} s)", file=sys.stderr, flush=True)

    base = next((r for r in rows if r[0].startswith("iterstrat")), None)
    print()
    print(
        f"{'method':45s} {'seconds':>8s} {'vs iterstrat':>12s} {'shared patients':>16s} {'max abs dev':>12s} "
        f"{'max rel dev':>12s}"
    )
    for name, seconds, shared, dev_abs, dev_rel in rows:
        ratio = f"{base[1] / seconds:.1f}x" if base else "-"
        print(f"{name:45s} {seconds:8.2f} {ratio:>12s} {shared:16d} {dev_abs:12.6f} {dev_rel:12.4%}")
    print("\nvs iterstrat = iterstrat's seconds / this method's seconds (higher is faster).")


if __name__ == "__main__":
    main()

"""Side-by-side: medkit metrics vs the usual baselines (run by hand; prints ratios).

1. optimise_thresholds (exact coordinate ascent) vs the Kaggle "OptimizedRounder" (scipy Nelder-Mead on
   sklearn cohen_kappa_score, start 0.5, 1.5, ...): QWK fitted on one half of the data, scored on the other.
2. auc_score vs mean of sklearn roc_auc_score per column (N=50k, K=14).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import scipy.optimize as so
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medkit.metrics import apply_thresholds, auc_score, optimise_thresholds, quadratic_weighted_kappa


def rounder_nelder_mead(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    def loss(coef: np.ndarray) -> float:
        return -cohen_kappa_score(y, np.digitize(pred, np.sort(coef)), weights="quadratic")

    return np.sort(so.minimize(loss, np.arange(k - 1) + 0.5, method="nelder-mead").x)


def timed(fn, *a, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*a)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    rng = np.random.default_rng(0)
    k = 6
    print("== QWK cut points, PANDA-like: grade 0..5, regression output = squashed grade + noise")
    for n in (2000, 10000):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            y = rng.choice(k, n, p=[0.27, 0.25, 0.13, 0.12, 0.12, 0.11])
            pred = 0.8 * y + 0.3 + rng.normal(0, 0.7, n)  # biased, squashed, noisy
            fit, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
            t_ours, cuts = timed(optimise_thresholds, y[fit], pred[fit], k, repeat=1)
            t_nm, cuts_nm = timed(rounder_nelder_mead, y[fit], pred[fit], k, repeat=1)

            def q(c: np.ndarray, m: np.ndarray, y: np.ndarray = y, pred: np.ndarray = pred) -> float:
                return quadratic_weighted_kappa(y[m], apply_thresholds(pred[m], c), k)

            rnd = np.arange(k - 1) + 0.5
            print(
                f"n={n} seed={seed}: QWK fit/held-out  rounding {q(rnd, fit):.4f}/{q(rnd, test):.4f}  "
                f"nelder-mead {q(cuts_nm, fit):.4f}/{q(cuts_nm, test):.4f} ({t_nm:.2f}s)  "
                f"medkit {q(cuts, fit):.4f}/{q(cuts, test):.4f} ({t_ours:.2f}s)  speed-up x{t_nm / t_ours:.1f}"
            )
    print("== mean column AUC, N=50000, K=14")
    rng = np.random.default_rng(1)
    t = (rng.random((50000, 14)) < 0.1).astype(float)
    s = np.round(0.3 * t + rng.random(t.shape), 3)
    t_sk, ref = timed(lambda: np.mean([roc_auc_score(t[:, j], s[:, j]) for j in range(14)]))
    t_mk, ours = timed(partial(auc_score, t, s))
    print(
        f"sklearn {t_sk * 1e3:.0f} ms, medkit {t_mk * 1e3:.0f} ms, ratio sklearn/medkit x{t_sk / t_mk:.2f}, "
        f"|diff| {abs(ref - ours):.1e}"
    )


if __name__ == "__main__":
    main()

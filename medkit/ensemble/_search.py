"""Searching blend weights on out-of-fold predictions for a metric.

- ``hill``: Caruana et al. (2004) ensemble selection. Start from the best single member, then repeatedly add
  (with replacement) the member whose addition scores best, while that improves the metric; the weights are the
  counts divided by their sum. Deterministic (ties go to the earlier member).
- ``nelder-mead``: `scipy.optimize.minimize` over unconstrained parameters z with weights ``softmax(z)`` (so
  they stay positive and sum to 1), from equal weights and from two starts drawn from the seed; the best result
  is kept.

Both only ever evaluate the metric, so they work for metrics without a gradient (AUC, QWK). ``per_label`` runs
one search per label column, each on that column's metric. Targets of one class only (a rare label in a small
fold) leave nothing to rank on: such a search keeps equal weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medkit.ensemble._methods import Combiner
from medkit.errors import DataError, UsageError, did_you_mean
from medkit.target import BINARY, TargetKind

__all__ = ["SEARCHES", "Scorer", "check_search", "hill_climb", "nelder_mead", "search_weights"]

#: The ``--search`` choices.
SEARCHES = ("hill", "nelder-mead")
#: Hill climbing stops after this many additions even if the metric still improves.
MAX_HILL_STEPS = 200
#: Nelder-Mead random restarts (besides the start from equal weights).
RESTARTS = 2


def check_search(search: str) -> str:
    """``search`` when it is one of `SEARCHES`.

    Raises:
        UsageError: An unknown search, with a suggestion.
    """
    if search not in SEARCHES:
        raise UsageError(
            f"unknown weight search '{search}'{did_you_mean(search, SEARCHES)}", hint=f"use {' or '.join(SEARCHES)}"
        )
    return search


@dataclass(frozen=True)
class Scorer:
    """A metric with its direction, for one target kind.

    Attributes:
        name: METRICS name.
        fn: The metric callable.
        kind: How predictions are shaped for it (`medkit.metrics.score`).
        greater_is_better: Direction of the metric.
    """

    name: str
    fn: Any
    kind: TargetKind
    greater_is_better: bool

    @classmethod
    def build(cls, name: str, kind: TargetKind) -> Scorer:
        """The METRICS entry ``name`` for predictions of ``kind``.

        Raises:
            UnknownNameError: An unknown metric, with a suggestion.
        """
        from medkit.metrics import build_metric, greater_is_better

        fn = build_metric(name)
        return cls(name, fn, kind, greater_is_better(fn))

    def __call__(self, y: Any, probs: Any) -> float:
        """The metric of ``(N, K)`` probabilities (nan where it is undefined, e.g. AUC of one class)."""
        from medkit.metrics import score

        return score(self.fn, self.kind, y, probs)

    def loss(self, value: float) -> float:
        """``value`` as something to minimise; an undefined score is the worst possible."""
        if value != value:
            return float("inf")
        return -value if self.greater_is_better else value

    def for_column(self, y: Any, probs: Any) -> Scorer:
        """The same metric on one 0/1 label column (for per-label weights).

        Raises:
            UsageError: The metric cannot score a single column.
        """
        column = Scorer(self.name, self.fn, BINARY, self.greater_is_better)
        try:
            column(y[:, 0], probs[:, :1])
        except DataError as exc:
            raise UsageError(
                f"--per-label: metric '{self.name}' cannot score one label column ({exc.message})",
                hint="pass --metric with a per-column metric (auc, logloss: rsna_logloss is a weighted sum of "
                "column log losses)",
            ) from None
        return column


Objective = Callable[[Any], float]


def _objective(scorer: Scorer, combiner: Combiner, y: Any, probs: Any) -> Objective:
    features = combiner.features(probs)
    return lambda w: scorer.loss(scorer(y, combiner.blend_features(features, w)))


def hill_climb(objective: Objective, members: int, max_steps: int = MAX_HILL_STEPS) -> Any:
    """Greedy ensemble selection with replacement; returns ``(M,)`` weights summing to 1.

    Args:
        objective: ``weights (M,) -> loss`` (lower is better).
        members: M.
        max_steps: Most additions after the first member.
    """
    import numpy as np

    eye = np.eye(members)
    singles = [objective(eye[i]) for i in range(members)]
    counts = eye[int(np.argmin(singles))].copy()
    best = min(singles)
    for _ in range(max_steps):
        trials = [objective((counts + eye[i]) / (counts.sum() + 1)) for i in range(members)]
        i = int(np.argmin(trials))
        if not trials[i] < best:
            break
        counts[i] += 1
        best = trials[i]
    return counts / counts.sum()


#: Nelder-Mead parameters are clipped here: a weight e^-20 times the largest is zero for any metric, and a flat
#: objective beyond the clip lets the simplex shrink and stop instead of walking towards infinity.
Z_CLIP = 10.0


def _softmax(z: Any) -> Any:
    import numpy as np

    z = np.clip(z, -Z_CLIP, Z_CLIP)
    e = np.exp(z - np.max(z))
    return e / e.sum()


def nelder_mead(objective: Objective, members: int, seed: int = 0) -> Any:
    """Nelder-Mead over softmax-parametrised weights from equal weights and `RESTARTS` seeded starts; returns the
    best ``(M,)`` weights found.

    The initial simplex takes unit steps in each parameter (scipy's default 5 % steps around 0 would barely move a
    piecewise-constant metric such as AUC).
    """
    import numpy as np
    from scipy.optimize import minimize

    if members == 1:
        return np.ones(1)
    rng = np.random.default_rng(seed)
    starts = [np.zeros(members)] + [rng.normal(0.0, 1.0, members) for _ in range(RESTARTS)]
    best_w, best = np.full(members, 1.0 / members), objective(np.full(members, 1.0 / members))
    for z0 in starts:
        simplex = np.vstack([z0, z0 + np.eye(members)])
        res = minimize(
            lambda z: objective(_softmax(z)),
            z0,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxiter": 200 * members, "xatol": 1e-3, "fatol": 1e-8},
        )
        if res.fun < best:
            best_w, best = _softmax(res.x), float(res.fun)
    return best_w


def search_weights(
    scorer: Scorer,
    combiner: Combiner,
    y: Any,
    probs: Any,
    search: str = "hill",
    per_label: bool = False,
    seed: int = 0,
) -> Any:
    """Blend weights that optimise ``scorer`` on out-of-fold predictions.

    Args:
        scorer: The metric.
        combiner: The blend method the weights are for.
        y: OOF targets.
        probs: ``(M, N, K)`` OOF probabilities.
        search: ``hill`` or ``nelder-mead``.
        per_label: One weight vector per label column, each optimised on that column (multilabel targets).
        seed: Seed of the Nelder-Mead restarts.

    Returns:
        ``(M,)`` weights, or ``(M, K)`` with ``per_label``; non-negative, summing to 1 (per column).
    """
    import numpy as np

    check_search(search)
    m = probs.shape[0]
    equal = np.full(m, 1.0 / m)

    def run(objective: Objective, targets: Any) -> Any:
        if not _two_classes(targets):  # nothing to rank on (AUC undefined for every weight): keep equal weights
            return equal
        return hill_climb(objective, m) if search == "hill" else nelder_mead(objective, m, seed)

    if not per_label:
        return run(_objective(scorer, combiner, y, probs), y)
    y2 = np.asarray(y).reshape(len(y), -1)
    column = scorer.for_column(y2, probs[0])
    return np.stack(
        [run(_objective(column, combiner, y2[:, k], probs[:, :, k : k + 1]), y2[:, k]) for k in range(y2.shape[1])],
        axis=1,
    )


def _two_classes(y: Any) -> bool:
    """Whether some target column holds two classes or more (else no weighting can be told apart)."""
    import numpy as np

    y2 = np.asarray(y).reshape(len(y), -1)
    return bool(len(y2)) and bool((y2.min(axis=0) != y2.max(axis=0)).any())

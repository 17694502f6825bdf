"""The blend functions: M members' probabilities ``(M, N, K)`` and weights -> one ``(N, K)`` table.

Every method is a weighted mean in some space, so one pattern serves all of them: map each member's probabilities
into that space (`features`), take the weighted mean over members (`combine`), and map back (`finish`).

| method | space | back |
|---|---|---|
| ``mean``, ``weighted`` | p | p |
| ``rank`` | per-column rank, scaled to [0, 1] | the mean rank itself (a score, not a probability) |
| ``geometric`` | log(max(p, eps)) | exp |
| ``power`` | p ** P | ** (1 / P) |

For softmax outputs (multiclass) the geometric and power means are renormalised so each row sums to 1 again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medkit.errors import UsageError, did_you_mean

__all__ = ["METHODS", "EPS", "Combiner", "check_method", "normalise_weights", "rank_scale", "combine", "blend"]

#: The ``--method`` choices.
METHODS = ("mean", "weighted", "rank", "geometric", "power")
#: Probabilities are clipped here before a log (geometric mean).
EPS = 1e-7


def check_method(method: str) -> str:
    """``method`` when it is one of `METHODS`.

    Raises:
        UsageError: An unknown method, with a suggestion.
    """
    if method not in METHODS:
        raise UsageError(
            f"unknown blend method '{method}'{did_you_mean(method, METHODS)}", hint=f"use one of {', '.join(METHODS)}"
        )
    return method


@dataclass(frozen=True)
class Combiner:
    """How one method turns members into a blend.

    Attributes:
        method: One of `METHODS`.
        power: The exponent P of ``power`` (ignored by the others).
        softmax: The outputs are one softmax over classes: geometric and power blends are renormalised per row.
    """

    method: str
    power: float = 2.0
    softmax: bool = False

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.method == "power" and not self.power > 0:
            raise UsageError(
                f"--power must be > 0, got {self.power}", hint="P = 1 is the mean; for P -> 0 use --method geometric"
            )

    def features(self, probs: Any) -> Any:
        """Members' probabilities ``(M, N, K)`` mapped into the space where the weighted mean is taken."""
        import numpy as np

        p = np.asarray(probs, dtype=np.float64)
        if self.method == "rank":
            return rank_scale(p)
        if self.method == "geometric":
            return np.log(np.clip(p, EPS, 1.0))
        if self.method == "power":
            return p**self.power
        return p

    def finish(self, mixed: Any) -> Any:
        """The weighted mean ``(N, K)`` of the features mapped back to [0, 1]."""
        import numpy as np

        if self.method == "geometric":
            mixed = np.exp(mixed)
        elif self.method == "power":
            mixed = np.maximum(mixed, 0.0) ** (1.0 / self.power)
        if self.softmax and self.method in ("geometric", "power"):
            mixed = mixed / mixed.sum(axis=1, keepdims=True)
        return np.clip(mixed, 0.0, 1.0)

    def blend_features(self, features: Any, weights: Any) -> Any:
        """`finish` of the weighted mean of precomputed `features` (what a weight search evaluates many times)."""
        return self.finish(combine(features, weights))

    def __call__(self, probs: Any, weights: Any = None) -> Any:
        """Blend ``(M, N, K)`` probabilities with ``weights`` (``(M,)``, per label ``(M, K)``, None = equal)."""
        return self.blend_features(self.features(probs), weights)


def rank_scale(probs: Any) -> Any:
    """Per member and column, the rank of each row (ties share their mean rank), scaled to [0, 1].

    One row gets 0.5. The result orders rows like the probabilities do but says nothing about their calibration.
    """
    import numpy as np
    from scipy.stats import rankdata

    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[-2]
    if n == 1:
        return np.full_like(p, 0.5)
    return (rankdata(p, method="average", axis=-2) - 1.0) / (n - 1.0)


def normalise_weights(weights: Any, members: int, columns: int = 1) -> Any:
    """Weights as a ``(M, K)`` array whose columns sum to 1: None gives equal weights; ``(M,)`` applies to every
    column.

    Raises:
        UsageError: A weight that is negative or not finite, a column summing to 0, or the wrong shape.
    """
    import numpy as np

    if weights is None:
        return np.full((members, columns), 1.0 / members)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = np.repeat(w[:, None], columns, axis=1)
    if w.shape != (members, columns):
        raise UsageError(f"{w.shape} weights for {members} members and {columns} columns")
    if not np.isfinite(w).all() or (w < 0).any():
        raise UsageError(f"blend weights must be finite and >= 0, got {w.tolist()}")
    total = w.sum(axis=0)
    if (total <= 0).any():
        raise UsageError("blend weights of a column sum to 0", hint="give at least one member a positive weight")
    return w / total


def combine(features: Any, weights: Any) -> Any:
    """Weighted mean over members: ``(M, N, K)`` features and ``(M,)`` / ``(M, K)`` weights -> ``(N, K)``."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    w = normalise_weights(weights, x.shape[0], x.shape[2])
    return np.einsum("mk,mnk->nk", w, x)


def blend(probs: Any, method: str, weights: Any = None, power: float = 2.0, softmax: bool = False) -> Any:
    """Blend members' probabilities.

    Args:
        probs: ``(M, N, K)`` probabilities: M members, N rows, K columns.
        method: One of `METHODS` (``mean`` and ``weighted`` are both the weighted arithmetic mean).
        weights: ``(M,)`` or per column ``(M, K)`` non-negative weights, normalised here; None = equal weights.
        power: The exponent of ``power``.
        softmax: The columns are one softmax (renormalise geometric and power blends per row).

    Returns:
        ``(N, K)`` blended values in [0, 1].
    """
    return Combiner(method, power, softmax)(probs, weights)

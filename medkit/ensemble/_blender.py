"""`Blender`: fit a blend (weights, then cut points) on some OOF rows and score it on others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medkit.ensemble._methods import Combiner, normalise_weights
from medkit.ensemble._ordinal import fit_cut_points, grades, qwk_with_cut_points
from medkit.ensemble._search import Scorer, search_weights
from medkit.ensemble._thresholds import fit_thresholds

__all__ = ["Fitted", "Blender"]


@dataclass
class Fitted:
    """A fitted blend.

    Attributes:
        weights: ``(M,)`` weights, or ``(M, K)`` per label; normalised.
        cut_points: Cut points of the blended expected grade (graded outputs scored with QWK), else None.
        thresholds: ``(K,)`` decision thresholds of 0/1 outputs (`Blender.thresholds`), else None.
    """

    weights: Any
    cut_points: Any = None
    thresholds: Any = None


@dataclass(frozen=True)
class Blender:
    """How a blend is fitted and scored.

    Attributes:
        scorer: The metric.
        combiner: The blend method.
        search: ``hill`` or ``nelder-mead``; None keeps equal weights (``--method mean``, or no OOF).
        per_label: One weight vector per label column.
        seed: Seed of the search.
        cut_points: Fit cut points of the expected grade for QWK after the weights.
        num_classes: Grades or classes (for the cut points).
        thresholds: Criterion of per-label decision thresholds fitted after the weights (0/1 outputs), or None.
            They do not change the metric the blend is scored with.
    """

    scorer: Scorer
    combiner: Combiner
    search: str | None = "hill"
    per_label: bool = False
    seed: int = 0
    cut_points: bool = False
    num_classes: int = 0
    thresholds: str | None = None

    def fit(self, y: Any, probs: Any, weights: Any = None) -> Fitted:
        """Fit on ``(M, N, K)`` OOF probabilities: ``weights`` when given (else searched, or equal without a
        search), then the cut points or the decision thresholds."""
        import numpy as np

        m, _, k = probs.shape
        if weights is None and self.search is not None and m > 1:
            weights = search_weights(self.scorer, self.combiner, y, probs, self.search, self.per_label, self.seed)
        w = normalise_weights(weights, m, k)
        w = w if self.per_label else w[:, 0]
        cuts = thresholds = None
        if self.cut_points:
            cuts = fit_cut_points(self.scorer.kind, y, self.combiner(probs, w), self.num_classes)
        if self.thresholds is not None:
            thresholds = fit_thresholds(self.thresholds, y, self.combiner(probs, w))
        return Fitted(np.asarray(w), cuts, thresholds)

    def predict(self, probs: Any, fitted: Fitted) -> Any:
        """Blended ``(N, K)`` probabilities."""
        return self.combiner(probs, fitted.weights)

    def grades(self, blended: Any, fitted: Fitted) -> Any:
        """Grades ``(N,)`` of blended graded outputs (with the fitted cut points when there are some)."""
        return grades(self.scorer.kind, blended, fitted.cut_points)

    def score(self, y: Any, probs: Any, fitted: Fitted) -> float:
        """The metric of the fitted blend on ``(y, probs)``: QWK of the cut grades when cut points were fitted."""
        blended = self.predict(probs, fitted)
        if fitted.cut_points is not None:
            return qwk_with_cut_points(self.scorer.kind, y, blended, fitted.cut_points, self.num_classes)
        return self.scorer(y, blended)

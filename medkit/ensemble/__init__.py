"""Blending prediction files: `medkit ensemble`.

- `medkit.ensemble._align`: read the members' prediction (and OOF) tables and check they share ids, columns and
  target kind; align their rows on the image id.
- `medkit.ensemble._methods`: the blend methods (mean, weighted, rank, geometric, power) on ``(M, N, K)`` arrays.
- `medkit.ensemble._search`: weights searched on OOF predictions for a metric (hill climbing, Nelder-Mead),
  optionally per label.
- `medkit.ensemble._ordinal`: grades and QWK cut points of graded outputs.
- `medkit.ensemble._thresholds`: per-label decision thresholds of 0/1 outputs chosen on the blended OOF (F1, F2,
  Youden's J, accuracy).
- `medkit.ensemble._blender`, `medkit.ensemble._cv`: fitting a blend on some OOF rows and scoring it on others;
  the cross-validated estimate.
- `medkit.ensemble._run`: `ensemble()`, the whole command as one call, and its `EnsembleReport`.

This package imports numpy, pandas and scipy inside its functions, never torch; it never imports the engine or
the CLI. docs/ensemble.md describes the methods and why the estimate is cross-validated.
"""

from __future__ import annotations

from medkit.ensemble._align import Members, OofSet, infer_kind, load_members, load_oofs, oof_file
from medkit.ensemble._blender import Blender, Fitted
from medkit.ensemble._cv import CVEstimate, CVScore, ThresholdCV, assign_folds, cross_validate
from medkit.ensemble._methods import EPS, METHODS, Combiner, blend, check_method, normalise_weights, rank_scale
from medkit.ensemble._ordinal import expected_grade, fit_cut_points, grades, qwk_with_cut_points, uses_cut_points
from medkit.ensemble._run import (
    EnsembleOptions,
    EnsembleReport,
    MemberReport,
    ensemble,
    labels_path,
    output_paths,
    resolve_metric,
)
from medkit.ensemble._search import SEARCHES, Scorer, check_search, hill_climb, nelder_mead, search_weights
from medkit.ensemble._thresholds import (
    THRESHOLD_CRITERIA,
    LabelThreshold,
    ThresholdReport,
    check_criterion,
    criterion_at,
    decide,
    fit_thresholds,
    threshold_candidates,
)

__all__ = [
    "EPS",
    "METHODS",
    "SEARCHES",
    "THRESHOLD_CRITERIA",
    "Scorer",
    "Blender",
    "CVEstimate",
    "CVScore",
    "Combiner",
    "EnsembleOptions",
    "EnsembleReport",
    "Fitted",
    "LabelThreshold",
    "MemberReport",
    "Members",
    "OofSet",
    "ThresholdCV",
    "ThresholdReport",
    "assign_folds",
    "blend",
    "check_criterion",
    "check_method",
    "check_search",
    "criterion_at",
    "cross_validate",
    "decide",
    "ensemble",
    "expected_grade",
    "fit_cut_points",
    "fit_thresholds",
    "grades",
    "hill_climb",
    "infer_kind",
    "labels_path",
    "load_members",
    "load_oofs",
    "nelder_mead",
    "normalise_weights",
    "oof_file",
    "output_paths",
    "qwk_with_cut_points",
    "rank_scale",
    "resolve_metric",
    "search_weights",
    "threshold_candidates",
    "uses_cut_points",
]

"""`ensemble()`: the whole `medkit ensemble` command as a library call, and the report it returns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkit.console import info, warn
from medkit.data.predictions import PredictionsMeta, sidecar_path, write_predictions
from medkit.ensemble._align import Members, OofSet, load_members, load_oofs, oof_file
from medkit.ensemble._blender import Blender, Fitted
from medkit.ensemble._cv import CVEstimate, assign_folds, cross_validate
from medkit.ensemble._methods import Combiner, check_method, normalise_weights
from medkit.ensemble._ordinal import uses_cut_points
from medkit.ensemble._search import Scorer, check_search
from medkit.ensemble._thresholds import ThresholdReport, check_criterion, decide, summarise
from medkit.errors import UsageError
from medkit.target import MULTILABEL

__all__ = [
    "EnsembleOptions",
    "MemberReport",
    "EnsembleReport",
    "ensemble",
    "resolve_metric",
    "output_paths",
    "labels_path",
]


@dataclass
class EnsembleOptions:
    """What `ensemble` does (the ``medkit ensemble`` flags).

    Attributes:
        method: ``mean``, ``weighted``, ``rank``, ``geometric`` or ``power``. With OOF tables every method but
            ``mean`` searches its weights; without them only equal weights exist (``weighted`` is refused).
        power: The exponent P of ``power``.
        metric: METRICS name the weights are searched for and the blend is scored with; default: the
            competition's, else the one the members' sidecars (or runs) name.
        competition: COMPETITIONS name whose metric is the default.
        search: ``hill`` or ``nelder-mead``.
        per_label: One weight vector per label column (multilabel only).
        cv_folds: Folds of the cross-validated estimate when the OOF has no ``fold`` column.
        seed: Seed of those folds and of the Nelder-Mead restarts.
        out: The blended prediction table (``.csv``; a folder gets ``blend.csv`` inside).
        thresholds: Choose one decision threshold per label on the blended OOF for this criterion (``f1``,
            ``f2``, ``youden``, ``accuracy``; binary and multilabel outputs, needs OOF tables) and write the 0/1
            decisions to ``<out stem>_labels.csv``; None (default): no thresholds.
    """

    method: str = "mean"
    power: float = 2.0
    metric: str | None = None
    competition: str | None = None
    search: str = "hill"
    per_label: bool = False
    cv_folds: int = 5
    seed: int = 0
    out: str | os.PathLike[str] = "blend.csv"
    thresholds: str | None = None


@dataclass
class MemberReport:
    """One member of the blend.

    Attributes:
        predictions: Its prediction file.
        oof: Its OOF table, or None.
        weight: Its weight (a list, one per label, with per-label weights).
        oof_score: Its metric on the OOF rows, or None without OOF.
    """

    predictions: str
    oof: str | None
    weight: float | list[float]
    oof_score: float | None = None


@dataclass
class EnsembleReport:
    """What `ensemble` did and measured.

    Attributes:
        method: The blend method.
        power: Its exponent (``power`` only).
        search: The weight search, or None when the weights are equal.
        per_label: Whether each label column has its own weights.
        metric: The metric (``""`` when none is known and nothing was scored).
        greater_is_better: Its direction.
        target: The target kind of the members.
        label_names: The blended outputs.
        rows: Rows of the blended predictions.
        members: One record per member.
        oof_rows: OOF rows the weights were searched on (0 without OOF).
        mean_oof: The equal-weight blend's OOF score.
        blend_oof: The blend's OOF score with weights fitted on these very rows (optimistic).
        cv: The cross-validated estimate, or None without OOF.
        cut_points: Cut points of the expected grade (graded outputs with QWK), else None.
        cut_oof: The OOF QWK with those cut points (fitted on these rows: optimistic).
        thresholds: Per-label decision thresholds with their OOF and cross-validated criterion, or None.
        outputs: Files written: ``predictions``, ``sidecar``, ``oof`` / ``oof_sidecar`` with OOF tables, and
            ``labels`` (the 0/1 decisions) with thresholds.
    """

    method: str
    power: float | None
    search: str | None
    per_label: bool
    metric: str
    greater_is_better: bool
    target: str
    label_names: tuple[str, ...]
    rows: int
    members: tuple[MemberReport, ...]
    oof_rows: int = 0
    mean_oof: float | None = None
    blend_oof: float | None = None
    cv: CVEstimate | None = None
    cut_points: tuple[float, ...] | None = None
    cut_oof: float | None = None
    thresholds: ThresholdReport | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``--json`` prints; the sidecar's ``details`` is this without ``outputs``)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("members", "cv", "thresholds")}
        d["label_names"] = list(self.label_names)
        d["members"] = [vars(m).copy() for m in self.members]
        d["cv"] = self.cv.to_dict() if self.cv is not None else None
        d["cut_points"] = list(self.cut_points) if self.cut_points is not None else None
        d["thresholds"] = self.thresholds.to_dict() if self.thresholds is not None else None
        return d


def output_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The blended table and the blended OOF table: ``blend.csv`` -> (``blend.csv``, ``blend_oof.csv``); a folder
    (existing, or a path without a suffix) gets ``blend.csv`` inside."""
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / "blend.csv"
    return path, path.with_name(f"{path.stem}_oof{path.suffix}")


def labels_path(out: str | os.PathLike[str]) -> Path:
    """The table of 0/1 decisions next to the blended table: ``blend.csv`` -> ``blend_labels.csv``."""
    path = output_paths(out)[0]
    return path.with_name(f"{path.stem}_labels{path.suffix}")


def resolve_metric(
    metric: str | None, competition: str | None, declared: Sequence[tuple[str, str]], required: bool
) -> str:
    """The metric in force: ``metric``, else the competition's, else the one the members declare.

    Args:
        metric: ``--metric``.
        competition: ``--competition``.
        declared: ``(file, metric)`` pairs from the members' sidecars and runs (``""``: none declared).
        required: Raise when no metric is known (OOF tables are to be scored).

    Raises:
        UnknownNameError: An unknown metric or competition, with a suggestion.
        UsageError: The members name different metrics, or none is known and one is required.
    """
    from medkit.registries import COMPETITIONS, METRICS

    if metric:
        return METRICS.get(metric).name
    if competition:
        return str(COMPETITIONS.create(competition).metric)
    named = sorted({name for _, name in declared if name})
    if len(named) > 1:
        pairs = ", ".join(f"{where}: {name}" for where, name in declared if name)
        raise UsageError(f"the members name different metrics ({pairs})", hint="choose one with --metric NAME")
    if named:
        return METRICS.get(named[0]).name
    if required:
        raise UsageError(
            "no metric to search the weights for: no sidecar or run names one",
            hint="pass --metric NAME (see `medkit list metrics`) or --competition NAME",
        )
    return ""


def _check_options(options: EnsembleOptions, has_oof: bool) -> None:
    check_method(options.method)
    check_search(options.search)
    if options.thresholds is not None:
        check_criterion(options.thresholds)
        if not has_oof:
            raise UsageError(
                "--thresholds chooses each label's threshold on OOF predictions",
                hint="pass one --oof per member (its oof.csv or run folder); one member with its --oof works too",
            )
    if options.method == "weighted" and not has_oof:
        raise UsageError(
            "--method weighted needs OOF predictions to search the weights on",
            hint="pass one --oof per member (its oof.csv or run folder), or use --method mean",
        )
    if options.per_label and (not has_oof or options.method == "mean"):
        raise UsageError(
            "--per-label searches weights on OOF predictions",
            hint="pass one --oof per member and a method with weights (weighted, rank, geometric, power)",
        )


def _check_outputs(paths: Sequence[Path], inputs: Sequence[Path]) -> None:
    taken = {p.resolve() for q in inputs for p in (q, sidecar_path(q))}
    for path in paths:
        if path.resolve() in taken or sidecar_path(path).resolve() in taken:
            raise UsageError(f"--out {path} would overwrite an input file", hint="write the blend somewhere else")


def ensemble(
    preds: Sequence[str | os.PathLike[str]],
    oofs: Sequence[str | os.PathLike[str]] = (),
    options: EnsembleOptions | None = None,
) -> EnsembleReport:
    """Blend prediction files: check and align them, fit weights on OOF tables (when given), estimate the blend
    by cross-validation, and write the blended table, its sidecar and the blended OOF.

    Args:
        preds: The members' prediction tables (``medkit predict`` output): two or more, or one with its OOF
            table (to score it and choose thresholds).
        oofs: One OOF table (an oof.csv or a run folder) per member, in the same order, or none.
        options: Method, metric, search, folds and output.

    Returns:
        The report (also stored in the sidecar's ``details``).

    Raises:
        UsageError: Options that cannot work together, or no metric when OOF tables are given.
        DataError: Tables that cannot be read or do not match.
    """
    options = options or EnsembleOptions()
    _check_options(options, bool(oofs))
    out, oof_out = output_paths(options.out)
    written = [out, oof_out, labels_path(options.out)] if options.thresholds else [out, oof_out]
    _check_outputs(written, [Path(p) for p in preds] + [oof_file(p) for p in oofs])
    members = load_members(preds)
    info(
        f"{len(members.paths)} members: {members.probs.shape[1]} rows, {len(members.columns)} columns ({members.kind})"
    )
    if options.per_label and members.kind is not MULTILABEL:
        raise UsageError(
            f"--per-label needs several 0/1 label columns; these predictions are {members.kind}",
            hint="drop --per-label",
        )
    if options.thresholds is not None and members.kind.integer:
        raise UsageError(
            f"--thresholds chooses thresholds of 0/1 outputs; these predictions are {members.kind} (graded)",
            hint="graded outputs get QWK cut points of the expected grade instead: drop --thresholds and pass "
            "--metric qwk (see 'Grades: cut points for QWK' in docs/ensemble.md)",
        )
    oof = load_oofs(oofs, members) if oofs else None
    declared = list(zip(map(str, members.paths), members.metrics, strict=True))
    if oof is not None:
        declared += list(zip(map(str, oof.paths), oof.metrics, strict=True))
    metric = resolve_metric(options.metric, options.competition, declared, required=oof is not None)
    scorer = Scorer.build(metric, members.kind) if metric else None
    if options.method == "rank" and scorer is not None and not scorer.greater_is_better:
        warn(f"rank averages are scores, not probabilities: the {metric} of a rank blend says little")
    combiner = Combiner(options.method, options.power, members.kind.softmax)
    report, fitted = _fit(options, members, oof, scorer, combiner)
    if report.thresholds is not None:
        report.thresholds.file = str(labels_path(options.out))
        report.thresholds.columns = members.label_names
    report.outputs = _write(out, oof_out, members, oof, combiner, fitted, report)
    return report


def _fit(
    options: EnsembleOptions, members: Members, oof: OofSet | None, scorer: Scorer | None, combiner: Combiner
) -> tuple[EnsembleReport, Fitted]:
    """Weights (and cut points) from the OOF tables with their scores and CV estimate; equal weights without."""
    import numpy as np

    m = len(members.paths)
    search = options.search if oof is not None and options.method != "mean" and m > 1 else None
    report = EnsembleReport(
        method=options.method,
        power=options.power if options.method == "power" else None,
        search=search,
        per_label=options.per_label,
        metric=scorer.name if scorer is not None else "",
        greater_is_better=scorer.greater_is_better if scorer is not None else True,
        target=members.kind.name,
        label_names=members.label_names,
        rows=int(members.probs.shape[1]),
        members=(),
    )
    if oof is None or scorer is None:
        w = normalise_weights(None, m)[:, 0]
        report.members = tuple(MemberReport(str(p), None, float(x)) for p, x in zip(members.paths, w, strict=True))
        return report, Fitted(w)
    blender = Blender(
        scorer,
        combiner,
        search=search,
        per_label=options.per_label,
        seed=options.seed,
        cut_points=uses_cut_points(members.kind, scorer.name),
        num_classes=members.num_classes,
        thresholds=options.thresholds,
    )
    info(f"OOF: {oof.probs.shape[1]} rows; fitting weights ({search or 'equal weights'})")
    fitted = blender.fit(oof.y, oof.probs)
    fold_ids, source = assign_folds(oof.y, oof.folds, oof.groups, options.cv_folds, options.seed)
    info(f"cross-validating the blend on {source}")
    report.cv = cross_validate(blender, oof.y, oof.probs, fold_ids, source)
    report.oof_rows = int(oof.probs.shape[1])
    report.members = tuple(
        MemberReport(str(p), str(o), np.asarray(w).tolist(), scorer(oof.y, oof.probs[i]))
        for i, (p, o, w) in enumerate(zip(members.paths, oof.paths, fitted.weights, strict=True))
    )
    report.mean_oof = scorer(oof.y, combiner(oof.probs))
    report.blend_oof = scorer(oof.y, blender.predict(oof.probs, fitted))
    if fitted.cut_points is not None:
        report.cut_points = tuple(float(c) for c in fitted.cut_points)
        report.cut_oof = blender.score(oof.y, oof.probs, fitted)
    if fitted.thresholds is not None:
        cv = report.cv.thresholds
        report.thresholds = summarise(
            options.thresholds or "",
            members.label_names,
            oof.y,
            blender.predict(oof.probs, fitted),
            fitted.thresholds,
            (cv.folds, cv.pooled) if cv is not None else None,
        )
    return report, fitted


def _meta(members: Members, report: EnsembleReport, sources: Sequence[Path]) -> PredictionsMeta:
    details = report.to_dict()
    details.pop("outputs", None)
    return PredictionsMeta(
        target=members.kind.name,
        label_names=members.label_names,
        label_cols=members.meta.label_cols if members.meta is not None else (),
        num_classes=members.num_classes,
        metric=report.metric,
        task=members.meta.task if members.meta is not None else "",
        cut_points=report.cut_points or (),
        sources=tuple(str(p) for p in sources),
        details=details,
    )


def _table(base: Any, members: Members, blended: Any, combiner_grades: Any) -> Any:
    frame = base.copy()
    for j, col in enumerate(members.columns):
        frame[col] = blended[:, j]
    if combiner_grades is not None:
        frame["grade"] = combiner_grades
    return frame


def _write(
    out: Path,
    oof_out: Path,
    members: Members,
    oof: OofSet | None,
    combiner: Combiner,
    fitted: Fitted,
    report: EnsembleReport,
) -> dict[str, str]:
    """Write the blended predictions (+ sidecar) and, with OOF tables, the blended OOF (+ sidecar)."""
    from medkit.ensemble._ordinal import grades

    def graded(blended: Any) -> Any:
        return grades(members.kind, blended, fitted.cut_points) if members.kind.integer else None

    blended = combiner(members.probs, fitted.weights)
    write_predictions(
        out, _table(members.ids, members, blended, graded(blended)), _meta(members, report, members.paths)
    )
    written = {"predictions": str(out), "sidecar": str(sidecar_path(out))}
    if oof is not None:
        oof_blended = combiner(oof.probs, fitted.weights)
        frame = _table(oof.frame, members, oof_blended, graded(oof_blended))
        write_predictions(oof_out, frame, _meta(members, report, oof.paths))
        written.update(oof=str(oof_out), oof_sidecar=str(sidecar_path(oof_out)))
    if fitted.thresholds is not None and report.thresholds is not None:
        written["labels"] = str(_write_labels(Path(report.thresholds.file), members, blended, fitted.thresholds))
    return written


def _write_labels(path: Path, members: Members, blended: Any, thresholds: Any) -> Path:
    """The 0/1 decisions: the id columns and one ``<label>`` column per output, no ``_prob`` column.

    They are not added to the blended table: there, as in every prediction table, a ``<label>`` column holds the
    target (`medkit.data.predictions`), and a reader would take the decisions for the truth.
    """
    from medkit._io import write_csv

    frame = members.ids.copy()
    for j, label in enumerate(members.label_names):
        frame[label] = decide(blended, thresholds)[:, j]
    return write_csv(path, frame)

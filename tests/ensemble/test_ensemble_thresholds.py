"""Per-label decision thresholds: the search against hand-computed tables, the tie rule, the cross-validated
estimate against a plain-loop sklearn reference, and `ensemble(..., thresholds=...)` end to end on files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, fbeta_score

from medkit.data.predictions import PredictionsMeta, read_predictions, write_predictions
from medkit.ensemble import (
    Blender,
    Combiner,
    EnsembleOptions,
    Scorer,
    criterion_at,
    cross_validate,
    ensemble,
    fit_thresholds,
    load_members,
    load_oofs,
    threshold_candidates,
)
from medkit.errors import DataError, UsageError
from medkit.target import MULTILABEL

# 8 rows, 4 positives. Every distinct cut of p: below all, the 7 midpoints, above all.
P = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.85])
Y = np.array([0, 1, 0, 1, 0, 0, 1, 1])
# candidate -> (tp, fp, fn, tn) of "p >= candidate", counted by hand.
COUNTS = {
    0.025: (4, 4, 0, 0),
    0.10: (4, 3, 0, 1),
    0.20: (3, 3, 1, 1),
    0.30: (3, 2, 1, 2),
    0.40: (2, 2, 2, 2),
    0.50: (2, 1, 2, 3),
    0.60: (2, 0, 2, 4),
    0.75: (1, 0, 3, 4),
    0.925: (0, 0, 4, 4),
}
# The criterion at each candidate, from the counts above (F-beta = (1+b2) tp / ((1+b2) tp + b2 fn + fp)).
HAND = {
    "f1": [8 / 12, 8 / 11, 6 / 10, 6 / 9, 4 / 8, 4 / 7, 4 / 6, 2 / 5, 0.0],
    "f2": [20 / 24, 20 / 23, 15 / 22, 15 / 21, 10 / 20, 10 / 19, 10 / 18, 5 / 17, 0.0],
    "youden": [0.0, 0.25, 0.0, 0.25, 0.0, 0.25, 0.5, 0.25, 0.0],
    "accuracy": [4 / 8, 5 / 8, 4 / 8, 5 / 8, 4 / 8, 5 / 8, 6 / 8, 5 / 8, 4 / 8],
}
BEST = {"f1": 0.10, "f2": 0.10, "youden": 0.60, "accuracy": 0.60}


def test_candidates_are_every_distinct_cut() -> None:
    np.testing.assert_allclose(threshold_candidates(P), list(COUNTS))


@pytest.mark.parametrize("criterion", ["f1", "f2", "youden", "accuracy"])
def test_search_matches_the_hand_computed_table(criterion: str) -> None:
    for t, want in zip(COUNTS, HAND[criterion], strict=True):
        assert criterion_at(criterion, Y, P, t) == pytest.approx(want), t
    assert fit_thresholds(criterion, Y, P)[0] == pytest.approx(BEST[criterion])


def test_criteria_agree_with_sklearn_at_every_candidate() -> None:
    for t in COUNTS:
        d = np.greater_equal(P, t).astype(int)
        assert criterion_at("f1", Y, P, t) == pytest.approx(f1_score(Y, d, zero_division=0))
        assert criterion_at("f2", Y, P, t) == pytest.approx(fbeta_score(Y, d, beta=2, zero_division=0))
        assert criterion_at("accuracy", Y, P, t) == pytest.approx(accuracy_score(Y, d))


def test_ties_go_to_the_candidate_closest_to_one_half() -> None:
    # F1 = 2/3 both with every row positive (0.05) and with only 0.9 positive (0.6); 0.6 is closer to 0.5.
    p, y = np.array([0.1, 0.2, 0.3, 0.9]), np.array([1, 0, 0, 1])
    assert criterion_at("f1", y, p, 0.05) == pytest.approx(2 / 3) == criterion_at("f1", y, p, 0.6)
    assert fit_thresholds("f1", y, p)[0] == pytest.approx(0.6)
    # A label where nothing beats 0.5 keeps decisions identical to 0.5's.
    p2, y2 = np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1])
    assert fit_thresholds("f1", y2, p2)[0] == pytest.approx(0.5)


def test_multilabel_columns_get_their_own_threshold_and_undefined_youden_keeps_one_half() -> None:
    y = np.stack([Y, np.zeros(8)], axis=1)
    p = np.stack([P, P], axis=1)
    np.testing.assert_allclose(fit_thresholds("youden", y, p), [0.6, 0.5])


def _reference_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Plain loop: every midpoint (and one cut below / above all), sklearn F1, ties closest to 0.5."""
    v = sorted(set(p.tolist()))
    cands = [v[0] / 2] + [(a + b) / 2 for a, b in zip(v, v[1:], strict=False)] + [(v[-1] + 1) / 2]
    scores = [f1_score(y, (p >= t).astype(int), zero_division=0) for t in cands]
    best = max(scores)
    return min((abs(t - 0.5), t) for t, s in zip(cands, scores, strict=True) if s >= best - 1e-12)[1]


def test_cross_validated_estimate_matches_a_plain_loop_with_sklearn() -> None:
    rng = np.random.default_rng(3)
    n = 60
    y = (rng.random((n, 2)) < [0.2, 0.5]).astype(float)
    probs = np.clip(0.3 * y + rng.random((n, 2)) * 0.6, 0, 1)[None]  # one member: (1, N, 2)
    folds = np.arange(n) % 3
    blender = Blender(Scorer.build("f1", MULTILABEL), Combiner("mean", 2.0, False), search=None, thresholds="f1")
    cv = cross_validate(blender, y, probs, folds).thresholds
    assert cv is not None
    decisions = np.zeros((n, 2), dtype=int)
    for f in range(3):
        test, train = folds == f, folds != f
        for k in range(2):
            t = _reference_threshold(y[train, k], probs[0, train, k])
            decisions[test, k] = probs[0, test, k] >= t
            assert cv.folds[f, k] == pytest.approx(f1_score(y[test, k], decisions[test, k], zero_division=0))
    for k in range(2):
        assert cv.pooled[k] == pytest.approx(f1_score(y[:, k], decisions[:, k], zero_division=0))


# ------------------------------------------------------------------------------------------- files end to end
LABELS = ("a", "b")


def _files(tmp_path: Path, n: int = 80, members: int = 2) -> tuple[list[Path], list[Path], np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random((n, 2)) < [0.15, 0.5]).astype(float)
    preds, oofs = [], []
    for m in range(members):
        oof = np.clip(0.35 * y + rng.random((n, 2)) * 0.5, 0, 1)
        frame = pd.DataFrame({"image": [f"val{i}" for i in range(n)], "a": y[:, 0], "b": y[:, 1]})
        for j, name in enumerate(LABELS):
            frame[f"{name}_prob"] = oof[:, j]
        meta = PredictionsMeta(target="multilabel", label_names=LABELS, metric="f1")
        oofs.append(write_predictions(tmp_path / f"m{m}_oof.csv", frame, meta))
        test = pd.DataFrame({"image": [f"test{i}" for i in range(20)]})
        for name in LABELS:
            test[f"{name}_prob"] = rng.random(20)
        preds.append(write_predictions(tmp_path / f"m{m}.csv", test, meta))
    return preds, oofs, y


def test_ensemble_writes_decisions_next_to_the_blend_and_records_them(tmp_path: Path) -> None:
    preds, oofs, y = _files(tmp_path)
    out = tmp_path / "out" / "blend.csv"
    report = ensemble(preds, oofs, EnsembleOptions(method="weighted", out=out, thresholds="f2"))
    th = report.thresholds
    assert th is not None and th.criterion == "f2" and [t.label for t in th.labels] == list(LABELS)
    # The thresholds are those of the blended OOF rows the weights were fitted on (blend_oof.csv).
    oof_frame, _ = read_predictions(out.with_name("blend_oof.csv"))
    blended_oof = oof_frame[["a_prob", "b_prob"]].to_numpy()
    np.testing.assert_allclose(th.thresholds, fit_thresholds("f2", y, blended_oof))
    for k, t in enumerate(th.labels):
        assert t.at_default == pytest.approx(fbeta_score(y[:, k], blended_oof[:, k] >= 0.5, beta=2, zero_division=0))
        assert t.at_threshold >= t.at_default and len(t.cv_folds) == report.cv.n_folds
    labels = pd.read_csv(out.with_name("blend_labels.csv"))
    blend, meta = read_predictions(out)
    assert list(labels.columns) == ["image", "a", "b"] and labels["image"].tolist() == blend["image"].tolist()
    np.testing.assert_array_equal(
        labels[["a", "b"]].to_numpy(), blend[["a_prob", "b_prob"]].to_numpy() >= th.thresholds
    )
    # blend.csv stays a plain prediction table: no <label> column a reader could take for targets.
    assert list(blend.columns) == ["image", "a_prob", "b_prob"] and meta is not None
    side = json.loads(out.with_suffix(".json").read_text())["details"]["thresholds"]
    assert side["criterion"] == "f2" and side["columns"] == ["a", "b"] and side["file"].endswith("blend_labels.csv")
    assert [r["threshold"] for r in side["labels"]] == pytest.approx(list(th.thresholds))
    assert report.outputs["labels"] == str(out.with_name("blend_labels.csv"))
    # The decision table is not a prediction table, so it cannot be blended or used as an OOF table by mistake.
    with pytest.raises(DataError, match="no probability columns"):
        read_predictions(out.with_name("blend_labels.csv"))
    # The blend and its OOF are read back as members of a later blend.
    again = load_members([out])
    load_oofs([out.with_name("blend_oof.csv")], again)


def test_one_member_with_its_oof_gets_thresholds(tmp_path: Path) -> None:
    preds, oofs, y = _files(tmp_path, members=1)
    report = ensemble(preds, oofs, EnsembleOptions(out=tmp_path / "one.csv", thresholds="youden"))
    oof = pd.read_csv(oofs[0])
    np.testing.assert_allclose(report.thresholds.thresholds, fit_thresholds("youden", y, oof[["a_prob", "b_prob"]]))
    assert (tmp_path / "one_labels.csv").is_file()


def test_threshold_errors(tmp_path: Path) -> None:
    preds, oofs, _ = _files(tmp_path, members=1)
    with pytest.raises(UsageError, match="did you mean 'youden'") as exc:
        ensemble(preds, oofs, EnsembleOptions(out=tmp_path / "x.csv", thresholds="yuoden"))
    assert "f1, f2, youden, accuracy" in str(exc.value.hint)
    with pytest.raises(UsageError, match="OOF") as exc:
        ensemble(preds, (), EnsembleOptions(out=tmp_path / "x.csv", thresholds="f1"))
    assert "--oof" in str(exc.value.hint)
    graded = PredictionsMeta(target="ordinal", label_names=(">0", ">1"), metric="qwk", num_classes=3)
    frame = pd.DataFrame({"image": ["i0", "i1"], ">0_prob": [0.2, 0.9], ">1_prob": [0.1, 0.5]})
    p = write_predictions(tmp_path / "g.csv", frame, graded)
    with pytest.raises(UsageError, match="graded") as exc:
        ensemble([p], [p], EnsembleOptions(out=tmp_path / "x.csv", thresholds="f1"))
    assert "cut points" in str(exc.value.hint)
    assert not (tmp_path / "x.csv").exists()


def test_without_thresholds_nothing_changes(tmp_path: Path) -> None:
    preds, oofs, _ = _files(tmp_path)
    report = ensemble(preds, oofs, EnsembleOptions(method="weighted", out=tmp_path / "b.csv"))
    assert report.thresholds is None and "labels" not in report.outputs
    assert not (tmp_path / "b_labels.csv").exists()
    assert json.loads((tmp_path / "b.json").read_text())["details"]["thresholds"] is None

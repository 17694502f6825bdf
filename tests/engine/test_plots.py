"""The numbers behind the run's pictures (against sklearn and hand-computed tables), the decision rule that the
confusion matrix and the accuracies use, and MedMNIST label meanings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medkit.engine import plots
from medkit.engine.outputs import Decision, best_threshold, choose_decision, label_meanings, split_scores
from medkit.target import BINARY, MULTICLASS, MULTILABEL, ORDINAL


def _scores(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and scores rounded to 1 decimal, so many scores tie (the hard case for curve points)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float64)
    s = np.round(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), 1)
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_and_auc_equal_sklearn(seed: int) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _scores(seed=seed)
    fpr, tpr, thr = plots.roc_points(y, s)
    want_fpr, want_tpr, want_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    np.testing.assert_allclose(thr[1:], want_thr[1:])  # sklearn's first threshold is inf (older versions: max + 1)
    assert plots.trapezoid_auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_points_by_hand() -> None:
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): the tied pair moves both rates at once
    fpr, tpr, thr = plots.roc_points([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thr[1:].tolist() == [0.9, 0.8, 0.1]
    assert plots.trapezoid_auc(fpr, tpr) == pytest.approx(0.875)


@pytest.mark.parametrize("seed", [0, 3])
def test_pr_points_and_average_precision_equal_sklearn(seed: int) -> None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _scores(seed=seed)
    precision, recall, thr = plots.pr_points(y, s)
    want_p, want_r, want_t = precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, want_p)
    np.testing.assert_allclose(recall, want_r)
    np.testing.assert_allclose(thr, want_t)
    assert plots.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_calibration_bins_equal_sklearn_and_count_rows() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(4)
    p = rng.random(200)
    p[:5] = [0.0, 0.1, 0.2, 1.0, 0.5]  # values on bin edges go to the lower bin
    y = (rng.random(200) < p).astype(float)
    mean_p, frac, counts = plots.calibration_bins(y, p, 10)
    want_frac, want_mean = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(frac, want_frac)
    np.testing.assert_allclose(mean_p, want_mean)
    assert counts.sum() == 200
    # by hand, 5 bins (edges 0.2, 0.4, 0.6, 0.8): 0.2 sits on an edge -> bin 0; 0.25 -> bin 1; 0.9, 0.95 -> bin 4
    mean_p, frac, counts = plots.calibration_bins([0, 1, 1, 0], [0.2, 0.25, 0.9, 0.95], 5)
    assert counts.tolist() == [1, 1, 2] and frac.tolist() == [0.0, 1.0, 0.5]
    np.testing.assert_allclose(mean_p, [0.2, 0.25, 0.925])


def test_confusion_counts_by_hand_and_against_sklearn() -> None:
    from sklearn.metrics import confusion_matrix

    t, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    assert plots.confusion_counts(t, p, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    np.testing.assert_array_equal(plots.confusion_counts(t, p, 4), confusion_matrix(t, p, labels=range(4)))


def test_binary_columns_of_every_kind() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y, s, titles = plots.binary_columns(MULTICLASS, np.array([0, 2]), probs, ["a", "b", "c"])
    assert y.tolist() == [[1, 0, 0], [0, 0, 1]] and s is not None and titles[0] == "a vs rest"
    y, _, titles = plots.binary_columns(ORDINAL, np.array([0, 2, 3]), np.zeros((3, 3)), [">0", ">1", ">2"])
    assert y.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]] and titles == ["grade >0", "grade >1", "grade >2"]
    y, s, _ = plots.binary_columns(BINARY, np.array([1.0, 0.0]), np.array([0.9, 0.2]), ["x"])
    assert y.shape == (2, 1) and s.shape == (2, 1)


def test_best_threshold_by_hand() -> None:
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.2, 0.3, 0.35, 0.6, 0.9]
    # p > 0.25 gets 5 of 6 right; 0.5 gets 3, every other cut at most 4
    assert best_threshold(y, p) == pytest.approx(0.25)
    assert best_threshold([0, 1], [0.2, 0.8]) == 0.5  # every cut in (0.2, 0.8) is perfect: 0.5 is kept
    assert best_threshold([], []) == 0.5


def test_split_scores_of_a_binary_target() -> None:
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    decision = choose_decision(BINARY, y, p, "auc", 0)
    scores = split_scores(BINARY, y, p, decision)
    assert scores["auc"] == pytest.approx(roc_auc_score(y, p))
    assert scores["acc"] == pytest.approx(3 / 6) and scores["acc_at_threshold"] == pytest.approx(5 / 6)
    assert scores["threshold"] == pytest.approx(0.25) and scores["n"] == 6


def test_decisions_of_graded_and_multilabel_outputs() -> None:
    # ordinal (cumulative "grade > k" probabilities): without QWK the expected grade is rounded
    probs = np.array([[0.2, 0.1], [0.9, 0.2], [0.9, 0.8]])
    rule = choose_decision(ORDINAL, np.array([0, 1, 2]), probs, "auc", 3)
    assert rule.cut_points is None and rule.classes(ORDINAL, probs).tolist() == [0, 1, 2]
    assert split_scores(ORDINAL, np.array([0, 1, 1]), probs, rule)["acc"] == pytest.approx(2 / 3)
    # QWK: cut points are fitted on the validation rows
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 3, 40)
    cum = np.stack([(grades > 0) * 0.6 + 0.2, (grades > 1) * 0.6 + 0.2], axis=1)
    rule = choose_decision(ORDINAL, grades, cum, "qwk", 3)
    assert rule.cut_points is not None and len(rule.cut_points) == 2
    assert (rule.classes(ORDINAL, cum) == grades).all()
    # multiclass: the most probable class; multilabel: no single class
    mc = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert Decision().classes(MULTICLASS, mc).tolist() == [1, 0]
    assert choose_decision(MULTILABEL, np.zeros((2, 2)), mc, "auc", 0).classes(MULTILABEL, mc) is None


def test_label_meanings_of_medmnist_files(tmp_path: Path) -> None:
    assert label_meanings(tmp_path / "breastmnist.npz", BINARY, ["label0"]) == {
        "label0": "1 = normal, benign; 0 = malignant"
    }
    organs = label_meanings(tmp_path / "organamnist_64.npz", MULTICLASS, [f"class{c}" for c in range(11)])
    assert organs["class0"] == "bladder" and organs["class3"] == "heart" and len(organs) == 11
    assert label_meanings(tmp_path / "chestmnist.npz", MULTILABEL, ["label0", "label1"]) == {
        "label0": "atelectasis",
        "label1": "cardiomegaly",
    }
    assert label_meanings(tmp_path / "mine.npz", BINARY, ["label0"]) == {}
    assert label_meanings(tmp_path / "breastmnist", BINARY, ["label0"]) == {}  # a folder of files, not an archive


def test_curves_have_one_panel_per_quantity_and_skip_empty_ones(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    rows = [{"epoch": e, "stage": 1 + (e > 2), "train_loss": 1 / e, "auc": 0.5 + e / 10} for e in (1, 2, 3)]
    one = plots.plot_curves(tmp_path / "one.png", rows, ["auc"])
    two = plots.plot_curves(tmp_path / "two.png", rows, ["train_loss", "auc", "missing"], best_epoch=3)
    h1, h2 = mpimg.imread(str(one)).shape[0], mpimg.imread(str(two)).shape[0]
    assert h2 > 1.7 * h1  # a second panel, none for the missing key
    assert plots.plot_curves(tmp_path / "none.png", rows, ["missing"]) is None
    assert not (tmp_path / "none.png").exists()

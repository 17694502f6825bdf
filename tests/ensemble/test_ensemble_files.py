"""Reading and aligning members, every error case, and `ensemble()` end to end on files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medkit.data.predictions import PredictionsMeta, read_predictions, write_predictions
from medkit.ensemble import EnsembleOptions, ensemble, infer_kind, load_members, load_oofs, output_paths
from medkit.errors import DataError, UnknownNameError, UsageError
from medkit.metrics import auc_score, quadratic_weighted_kappa
from medkit.target import BINARY, MULTICLASS, MULTILABEL, ORDINAL


def _write(
    path: Path,
    probs: np.ndarray,
    ids: list[str] | None = None,
    labels: tuple[str, ...] = ("y",),
    target: str = "binary",
    metric: str = "auc",
    extra: dict[str, object] | None = None,
    sidecar: bool = True,
) -> Path:
    """A prediction table (``<label>_prob`` columns) with its sidecar; ``extra`` adds columns (targets, fold)."""
    probs = np.asarray(probs, dtype=float).reshape(len(probs), -1)
    frame = pd.DataFrame({"image": ids or [f"img{i}" for i in range(len(probs))]})
    for name, values in (extra or {}).items():
        frame[name] = values
    for j, name in enumerate(labels):
        frame[f"{name}_prob"] = probs[:, j]
    meta = PredictionsMeta(target=target, label_names=labels, metric=metric)
    if sidecar:
        return write_predictions(path, frame, meta)
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- alignment


def test_rows_are_aligned_on_the_image_id(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.1, 0.2, 0.3], ids=["x", "y", "z"])
    b = _write(tmp_path / "b.csv", [0.9, 0.7, 0.8], ids=["z", "x", "y"])  # same ids, another order
    members = load_members([a, b])
    assert members.ids["image"].tolist() == ["x", "y", "z"]
    np.testing.assert_allclose(members.probs[:, :, 0], [[0.1, 0.2, 0.3], [0.7, 0.8, 0.9]])
    assert members.kind is BINARY and members.metrics == ("auc", "auc")


def test_kind_is_inferred_from_the_columns_without_a_sidecar() -> None:
    assert infer_kind([">0_prob", ">1_prob"]) is ORDINAL
    assert infer_kind(["class0_prob", "class1_prob", "class2_prob"]) is MULTICLASS
    assert infer_kind(["a_prob", "b_prob"]) is MULTILABEL
    assert infer_kind(["y_prob"]) is BINARY


def test_missing_ids_are_counted_and_named(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", np.linspace(0, 1, 6))
    b = _write(tmp_path / "b.csv", np.linspace(0, 1, 4))  # img4, img5 missing
    with pytest.raises(DataError, match=r"b\.csv: 2 ids of .*a\.csv are missing \('img4', 'img5'\)") as exc:
        load_members([a, b])
    assert "same split" in (exc.value.hint or "")


def test_extra_ids_are_counted_and_named(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", np.linspace(0, 1, 3))
    b = _write(tmp_path / "b.csv", np.linspace(0, 1, 7), ids=[f"img{i}" for i in range(7)])
    with pytest.raises(DataError, match=r"4 ids are not in .*a\.csv \('img3', 'img4', 'img5', \.\.\.\)"):
        load_members([a, b])


def test_different_columns_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", np.full((3, 2), 0.5), labels=("p", "q"), target="multilabel")
    b = _write(tmp_path / "b.csv", np.full((3, 2), 0.5), labels=("p", "r"), target="multilabel")
    with pytest.raises(DataError, match=r"only here \['r_prob'\], only there \['q_prob'\]"):
        load_members([a, b])


def test_columns_in_another_order_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", np.full((3, 2), 0.5), labels=("p", "q"), target="multilabel")
    b = _write(tmp_path / "b.csv", np.full((3, 2), 0.5), labels=("q", "p"), target="multilabel")
    with pytest.raises(DataError, match="in another order"):
        load_members([a, b])


def test_nan_is_refused_naming_the_file_and_image(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.1, 0.2, 0.3])
    b = _write(tmp_path / "b.csv", [0.1, np.nan, 0.3], sidecar=False)
    with pytest.raises(DataError, match=r"b\.csv: column 'y_prob' has 1 missing or infinite values.*'img1'"):
        load_members([a, b])


def test_values_outside_unit_interval_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.1, 0.2, 0.3])
    b = _write(tmp_path / "b.csv", [0.1, 2.5, 0.3], sidecar=False)
    with pytest.raises(DataError, match=r"b\.csv: column 'y_prob' has 1 values outside \[0, 1\]") as exc:
        load_members([a, b])
    assert "logits" in (exc.value.hint or "")


def test_target_kinds_must_agree(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", np.full((3, 2), 0.5), labels=("class0", "class1"), target="multiclass")
    b = _write(tmp_path / "b.csv", np.full((3, 2), 0.5), labels=("class0", "class1"), target="multilabel")
    with pytest.raises(DataError, match="target kind 'multilabel'"):
        load_members([a, b])


def _pair(tmp_path: Path, n: int = 40) -> tuple[list[Path], list[Path], np.ndarray]:
    """Two members with test predictions and OOF tables (targets + probabilities) on ``n`` rows."""
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(float)
    preds, oofs = [], []
    for name, signal in (("a", 2.0), ("b", 0.5)):
        oof = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
        oofs.append(_write(tmp_path / name / "oof.csv", oof, ids=[f"val/{i}" for i in range(n)], extra={"y": y}))
        preds.append(_write(tmp_path / name / "preds.csv", rng.random(10), ids=[f"test/{i}" for i in range(10)]))
    return preds, oofs, y


def test_oof_count_must_match_the_members(tmp_path: Path) -> None:
    preds, oofs, _ = _pair(tmp_path)
    with pytest.raises(UsageError, match="2 prediction files but 1 --oof tables") as exc:
        ensemble(preds, oofs[:1], EnsembleOptions(method="weighted", out=tmp_path / "o.csv"))
    assert "same order" in (exc.value.hint or "")


def test_oof_without_targets_is_refused(tmp_path: Path) -> None:
    preds, oofs, _ = _pair(tmp_path)
    bare = _write(tmp_path / "bare.csv", np.full(40, 0.5), ids=[f"val/{i}" for i in range(40)])
    members = load_members(preds)
    with pytest.raises(DataError, match=r"bare\.csv: OOF table lacks target column\(s\) y"):
        load_oofs([oofs[0], bare], members)


def test_oof_targets_must_agree(tmp_path: Path) -> None:
    preds, oofs, y = _pair(tmp_path)
    flipped = _write(
        tmp_path / "c.csv", np.full(40, 0.5), ids=[f"val/{i}" for i in range(40)], extra={"y": np.r_[1 - y[:1], y[1:]]}
    )
    with pytest.raises(DataError, match=r"targets of 1 images disagree.*'val/0'"):
        load_oofs([oofs[0], flipped], load_members(preds))


def test_a_run_folder_stands_for_its_oof_csv(tmp_path: Path) -> None:
    preds, oofs, y = _pair(tmp_path)
    oof = load_oofs([oofs[0].parent, oofs[1].parent], load_members(preds))
    np.testing.assert_array_equal(oof.y, y)
    assert oof.paths == tuple(oofs)


def test_weighted_without_oof_is_a_usage_error(tmp_path: Path) -> None:
    preds, _, _ = _pair(tmp_path)
    with pytest.raises(UsageError, match="--method weighted needs OOF") as exc:
        ensemble(preds, [], EnsembleOptions(method="weighted", out=tmp_path / "o.csv"))
    assert "--oof" in (exc.value.hint or "") and "--method mean" in (exc.value.hint or "")


def test_unknown_method_and_metric_suggest_a_name(tmp_path: Path) -> None:
    preds, oofs, _ = _pair(tmp_path)
    with pytest.raises(UsageError, match="unknown blend method 'wieghted' \\(did you mean 'weighted'\\?\\)"):
        ensemble(preds, oofs, EnsembleOptions(method="wieghted", out=tmp_path / "o.csv"))
    with pytest.raises(UnknownNameError, match="unknown metric 'acu' \\(did you mean 'auc'\\?\\)"):
        ensemble(preds, oofs, EnsembleOptions(method="weighted", metric="acu", out=tmp_path / "o.csv"))
    with pytest.raises(UnknownNameError, match="unknown competition 'rnsa'"):
        ensemble(preds, oofs, EnsembleOptions(method="weighted", competition="rnsa", out=tmp_path / "o.csv"))


def test_members_naming_different_metrics_need_one(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.1, 0.9], metric="auc")
    b = _write(tmp_path / "b.csv", [0.2, 0.8], metric="logloss")
    oa = _write(tmp_path / "oa.csv", [0.1, 0.9], extra={"y": [0.0, 1.0]}, sidecar=False)
    ob = _write(tmp_path / "ob.csv", [0.2, 0.8], extra={"y": [0.0, 1.0]}, sidecar=False)
    with pytest.raises(UsageError, match="members name different metrics"):
        ensemble([a, b], [oa, ob], EnsembleOptions(method="weighted", out=tmp_path / "o.csv"))


def test_no_metric_anywhere_is_a_usage_error_with_the_fix(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.1, 0.9], sidecar=False)
    b = _write(tmp_path / "b.csv", [0.2, 0.8], sidecar=False)
    oa = _write(tmp_path / "oa.csv", [0.1, 0.9], extra={"y": [0.0, 1.0]}, sidecar=False)
    ob = _write(tmp_path / "ob.csv", [0.2, 0.8], extra={"y": [0.0, 1.0]}, sidecar=False)
    with pytest.raises(UsageError, match="no metric") as exc:
        ensemble([a, b], [oa, ob], EnsembleOptions(method="weighted", out=tmp_path / "o.csv"))
    assert "--metric" in (exc.value.hint or "")
    # without OOF tables nothing is scored, and no metric is needed
    assert ensemble([a, b], [], EnsembleOptions(out=tmp_path / "o.csv")).metric == ""


def test_per_label_needs_several_label_columns(tmp_path: Path) -> None:
    preds, oofs, _ = _pair(tmp_path)
    with pytest.raises(UsageError, match="--per-label needs several 0/1 label columns"):
        ensemble(preds, oofs, EnsembleOptions(method="weighted", per_label=True, out=tmp_path / "o.csv"))
    with pytest.raises(UsageError, match="--per-label"):
        ensemble(preds, [], EnsembleOptions(method="rank", per_label=True, out=tmp_path / "o.csv"))


def test_the_output_never_overwrites_an_input(tmp_path: Path) -> None:
    preds, _, _ = _pair(tmp_path)
    before = preds[0].read_bytes()
    with pytest.raises(UsageError, match="would overwrite an input"):
        ensemble(preds, [], EnsembleOptions(out=preds[0]))
    assert preds[0].read_bytes() == before


def test_output_paths() -> None:
    assert output_paths("x/ens.csv") == (Path("x/ens.csv"), Path("x/ens_oof.csv"))
    assert output_paths("out") == (Path("out/blend.csv"), Path("out/blend_oof.csv"))


# ---------------------------------------------------------------- ensemble() end to end


def test_mean_without_oof_writes_the_mean_and_its_sidecar(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [0.2, 0.4, 0.6], extra={"patient_id": ["p1", "p1", "p2"]})
    b = _write(tmp_path / "b.csv", [0.6, 0.8, 0.0], ids=["img0", "img1", "img2"])
    rep = ensemble([a, b], [], EnsembleOptions(out=tmp_path / "out" / "blend.csv"))
    frame, meta = read_predictions(tmp_path / "out" / "blend.csv")
    assert frame.columns.tolist() == ["image", "patient_id", "y_prob"]
    np.testing.assert_allclose(frame["y_prob"], [0.4, 0.6, 0.3])
    assert meta is not None and meta.target == "binary" and meta.metric == "auc"
    assert meta.sources == (str(a), str(b))
    assert meta.details["method"] == "mean" and meta.details["members"][0]["weight"] == 0.5
    assert rep.cv is None and rep.search is None and "oof" not in rep.outputs


def test_weighted_blend_with_oof_reports_scores_and_writes_the_blended_oof(tmp_path: Path) -> None:
    preds, oofs, y = _pair(tmp_path, n=60)
    rep = ensemble(preds, oofs, EnsembleOptions(method="weighted", out=tmp_path / "blend.csv", cv_folds=3))
    oof_a = pd.read_csv(oofs[0])["y_prob"].to_numpy()
    assert rep.members[0].oof_score == pytest.approx(auc_score(y, oof_a))
    assert rep.cv is not None and rep.cv.n_folds == 3 and len(rep.cv.members) == 2
    w = np.array([m.weight for m in rep.members])
    assert w.sum() == pytest.approx(1.0)
    # the written blend is the members' weighted mean with the reported weights
    tests = np.stack([pd.read_csv(p)["y_prob"].to_numpy() for p in preds])
    np.testing.assert_allclose(pd.read_csv(tmp_path / "blend.csv")["y_prob"], w @ tests, atol=1e-12)
    blended_oof, meta = read_predictions(tmp_path / "blend_oof.csv")
    assert blended_oof["y"].tolist() == y.tolist()  # targets kept: the blend can join a later blend
    assert rep.blend_oof == pytest.approx(auc_score(y, blended_oof["y_prob"]))
    side = json.loads((tmp_path / "blend.json").read_text())
    assert side["details"]["cv"]["blend"]["pooled"] == pytest.approx(rep.cv.blend.pooled)
    assert meta is not None and meta.sources == tuple(str(p) for p in oofs)


def test_a_blend_can_be_a_member_of_a_later_blend(tmp_path: Path) -> None:
    preds, oofs, _ = _pair(tmp_path)
    ensemble(preds, oofs, EnsembleOptions(method="weighted", out=tmp_path / "first.csv"))
    rep = ensemble(
        [tmp_path / "first.csv", preds[0]],
        [tmp_path / "first_oof.csv", oofs[0]],
        EnsembleOptions(method="rank", out=tmp_path / "second.csv"),
    )
    assert rep.metric == "auc" and rep.search == "hill"


def test_the_fold_column_of_the_oof_drives_the_cv(tmp_path: Path) -> None:
    n = 40
    y = (np.arange(n) % 2).astype(float)
    fold = np.arange(n) // 10  # four folds
    rng = np.random.default_rng(1)
    preds, oofs = [], []
    for name in "ab":
        oofs.append(_write(tmp_path / f"{name}_oof.csv", rng.random(n), extra={"y": y, "fold": fold}))
        preds.append(_write(tmp_path / f"{name}.csv", rng.random(5)))
    rep = ensemble(preds, oofs, EnsembleOptions(method="weighted", out=tmp_path / "o.csv"))
    assert rep.cv is not None and rep.cv.n_folds == 4 and "fold" in rep.cv.source


def test_ordinal_blend_fits_cut_points_for_qwk_and_writes_grades(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    labels = (">0", ">1")
    preds, oofs = [], []
    for name in "ab":
        # under-confident cumulative probabilities: rounding the expected grade misses grade 2, cut points do not
        exp = 0.6 * y + rng.normal(0, 0.15, n)
        cum = np.clip(np.stack([exp, exp - 0.6], axis=1), 0, 1)
        oofs.append(
            _write(
                tmp_path / f"{name}_oof.csv", cum, labels=labels, target="ordinal", metric="qwk", extra={"target": y}
            )
        )
        preds.append(_write(tmp_path / f"{name}.csv", cum[:12], labels=labels, target="ordinal", metric="qwk"))
    rep = ensemble(preds, oofs, EnsembleOptions(method="weighted", out=tmp_path / "blend.csv"))
    assert rep.cut_points is not None and len(rep.cut_points) == 2
    assert rep.cut_oof is not None and rep.cut_oof > rep.blend_oof
    frame, meta = read_predictions(tmp_path / "blend.csv")
    assert meta is not None and list(meta.cut_points) == list(rep.cut_points) and meta.num_classes == 3
    expected = frame[[">0_prob", ">1_prob"]].sum(axis=1).to_numpy()
    assert frame["grade"].tolist() == np.searchsorted(rep.cut_points, expected, side="right").tolist()
    oof_frame, _ = read_predictions(tmp_path / "blend_oof.csv")
    assert quadratic_weighted_kappa(y, oof_frame["grade"], 3) == pytest.approx(rep.cut_oof)


def test_rank_blend_warns_for_a_log_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds, oofs, _ = _pair(tmp_path)
    ensemble(preds, oofs, EnsembleOptions(method="rank", metric="logloss", out=tmp_path / "o.csv"))
    assert "rank averages are scores, not probabilities" in capsys.readouterr().err


def test_metric_precedence_flag_then_competition_then_members() -> None:
    from medkit.ensemble import resolve_metric

    declared = [("a.csv", "logloss"), ("b.csv", ""), ("a_oof.csv", "logloss")]
    assert resolve_metric("auc", "rsna", declared, required=True) == "auc"
    assert resolve_metric(None, "rsna", declared, required=True) == "rsna_logloss"
    assert resolve_metric(None, None, declared, required=True) == "logloss"
    assert resolve_metric(None, None, [("a.csv", "")], required=False) == ""


def test_kind_and_metric_come_from_the_run_when_tables_have_no_sidecar(tmp_path: Path) -> None:
    n = 30
    y = np.arange(n) % 3
    rng = np.random.default_rng(0)
    preds, runs = [], []
    for name in "ab":
        run = tmp_path / name
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"spec": {"target": "multiclass", "metric": "accuracy"}}))
        probs = rng.dirichlet(np.ones(3), n)
        labels = ("class0", "class1", "class2")
        _write(run / "oof.csv", probs, labels=labels, extra={"target": y}, sidecar=False)
        preds.append(_write(run / "preds.csv", probs[:5], labels=labels, sidecar=False))
        runs.append(run)
    rep = ensemble(preds, runs, EnsembleOptions(method="power", out=tmp_path / "o.csv"))
    assert rep.metric == "accuracy" and rep.target == "multiclass" and rep.cut_points is None
    frame, _ = read_predictions(tmp_path / "o.csv")
    probs = frame[["class0_prob", "class1_prob", "class2_prob"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)  # a power mean of softmax outputs is renormalised
    assert frame["grade"].tolist() == probs.argmax(axis=1).tolist()


def test_mean_with_oof_scores_the_members_and_the_mean(tmp_path: Path) -> None:
    preds, oofs, y = _pair(tmp_path)
    rep = ensemble(preds, oofs, EnsembleOptions(method="mean", out=tmp_path / "m.csv"))
    assert rep.search is None and [m.weight for m in rep.members] == [0.5, 0.5]
    oof = np.stack([pd.read_csv(p)["y_prob"].to_numpy() for p in oofs])
    assert rep.members[1].oof_score == pytest.approx(auc_score(y, oof[1]))
    assert rep.mean_oof == pytest.approx(auc_score(y, oof.mean(axis=0)))
    assert rep.blend_oof == pytest.approx(rep.mean_oof)
    assert rep.cv is not None and rep.cv.blend.pooled == pytest.approx(rep.cv.mean.pooled)

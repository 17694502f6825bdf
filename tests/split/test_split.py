"""`medkit split`: hand-checkable splits, properties on random tables, the group/duplicate conflict, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.competitions.rsna import looks_like_rsna_long
from medkit.errors import DataError, UsageError
from medkit.split import (
    assign_units,
    build_units,
    expand_separated,
    leakage_certificate,
    max_deviation,
    parse_holdout,
    prevalence_table,
    split_table,
)

runner = CliRunner()


def _folds_of(df: pd.DataFrame, fold: np.ndarray, key: str) -> pd.Series:
    """Number of distinct folds per value of ``key`` (1 everywhere when nothing leaks)."""
    return pd.Series(fold, index=df.index).groupby(df[key].to_numpy()).nunique()


def _random_table(n_patients: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 6, n_patients)
    patient = np.repeat([f"P{i:04d}" for i in range(n_patients)], per)
    n = len(patient)
    df = pd.DataFrame({"image": [f"img_{i:05d}.png" for i in range(n)], "patient_id": patient})
    # Labels correlated within a patient, as in real data: a patient-level propensity plus noise.
    base = np.repeat(rng.random((n_patients, 1)), per, axis=0)
    for j, p in enumerate((0.4, 0.15, 0.05, 0.02)):
        df[f"L{j}"] = (rng.random(n) < p * (0.5 + base[:, 0])).astype(int)
    df["site"] = np.repeat(rng.choice(["a", "b", "c"], n_patients), per)
    return df


# ---------------------------------------------------------------- known answers


def test_two_positive_patients_go_to_different_folds() -> None:
    # A and B are the only positive patients; the only balanced 2-fold split puts one in each fold, with one
    # negative patient each (4 rows per fold).
    df = pd.DataFrame(
        {
            "image": [f"{p}{i}" for p in "ABCD" for i in range(2)],
            "patient_id": np.repeat(list("ABCD"), 2),
            "y": [1, 1, 1, 1, 0, 0, 0, 0],
        }
    )
    res = split_table(df, folds=2, image="image", group="patient_id", labels=["y"])
    fold = pd.Series(res.fold, index=df["patient_id"]).groupby(level=0).first()
    assert fold["A"] != fold["B"]
    assert fold["C"] != fold["D"]
    assert np.bincount(res.fold).tolist() == [4, 4]
    assert max_deviation(df[["y"]].to_numpy(), res.fold, 2) == (0.0, 0.0)


def test_multilabel_singletons_split_exactly() -> None:
    # Two rows of each of three kinds (L1, L2, neither): each of 2 folds must get one of each kind.
    df = pd.DataFrame({"image": list("abcdef"), "L1": [1, 1, 0, 0, 0, 0], "L2": [0, 0, 1, 1, 0, 0]})
    res = split_table(df, folds=2, image="image", labels=["L1", "L2"])
    for pair in (["a", "b"], ["c", "d"], ["e", "f"]):
        rows = df.index[df["image"].isin(pair)]
        assert set(res.fold[rows]) == {0, 1}


def test_ordinal_grades_and_strata_are_one_hot_balanced() -> None:
    # PANDA-like: ISUP 0-5 x two providers, 5 slides of each combination -> 5 folds get exactly one of each.
    grades, providers = np.meshgrid(np.arange(6), ["karolinska", "radboud"], indexing="ij")
    df = pd.DataFrame({"isup_grade": np.repeat(grades.ravel(), 5), "data_provider": np.repeat(providers.ravel(), 5)})
    df["image"] = [f"s{i:03d}" for i in range(len(df))]
    res = split_table(df, folds=5, image="image", labels=["isup_grade"], strata=["data_provider"])
    assert res.labels.names == [
        *(f"isup_grade={g}" for g in range(6)),
        "data_provider=karolinska",
        "data_provider=radboud",
    ]
    counts = pd.crosstab([df["isup_grade"], df["data_provider"]], res.fold)
    # Grade and provider are balanced as marginals; every fold has 12 slides and 2 of each grade.
    assert (pd.crosstab(df["isup_grade"], res.fold) == 2).all().all()
    assert (pd.crosstab(df["data_provider"], res.fold) == 6).all().all()
    assert counts.to_numpy().sum() == 60


def test_joint_strata_balance_every_combination() -> None:
    # Grade x provider, 2 folds. Balancing the marginals alone allows fold 0 = {(0,a),(0,a),(1,b),(1,b)}: both
    # marginals even, every combination in one fold. With the joint stratum each combination is split 1 / 1.
    df = pd.DataFrame({"grade": [0, 0, 1, 1, 0, 0, 1, 1], "provider": list("aabbbbaa")})
    df["image"] = [f"s{i}" for i in range(len(df))]
    for seed in range(5):
        res = split_table(df, folds=2, image="image", labels=["grade"], strata=["grade*provider"], seed=seed)
        assert "grade*provider=0|a" in res.labels.names and "grade*provider=1|b" in res.labels.names
        cells = pd.crosstab([df["grade"], df["provider"]], res.fold)
        assert (cells.to_numpy() == 1).all(), cells


@pytest.mark.parametrize(("rows", "folds"), [(4, 2), (10, 5), (12, 3)])
def test_strata_of_single_rows_still_give_equal_folds(rows: int, folds: int) -> None:
    # Every row its own stratum cell: the prevalence terms cancel the size term exactly, so one fold taking every
    # row costs the same as equal folds; the tie must go to equal folds.
    df = pd.DataFrame({"image": [f"s{i}" for i in range(rows)], "cell": [f"c{i}" for i in range(rows)]})
    for seed in range(3):
        res = split_table(df, folds=folds, image="image", strata=["cell"], seed=seed)
        assert np.bincount(res.fold, minlength=folds).tolist() == [rows // folds] * folds


def test_cli_joint_strata_names_a_missing_part(tmp_path: Path) -> None:
    pd.DataFrame({"image_id": ["a", "b", "c", "d"], "isup_grade": [0, 1, 0, 1], "data_provider": list("xxyy")}).to_csv(
        tmp_path / "t.csv", index=False
    )
    res = runner.invoke(app, ["split", str(tmp_path / "t.csv"), "--n-folds", "2", "--strata", "isup_grade*provider"])
    assert res.exit_code == 2 and "stratum column 'provider'" in res.stderr
    args = ["split", str(tmp_path / "t.csv"), "--n-folds", "2", "--strata", "isup_grade*data_provider", "--json"]
    res = runner.invoke(app, [*args, "--group", "none", "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.output
    folds = pd.read_csv(tmp_path / "f.csv")
    assert (pd.crosstab([folds["isup_grade"], folds["data_provider"]], folds["fold"]).sum(axis=1) == 1).all()
    assert pd.crosstab(folds["isup_grade"], folds["fold"]).to_numpy().tolist() == [[1, 1], [1, 1]]


def test_holdout_sizes_are_exact() -> None:
    df = pd.DataFrame({"image": [f"i{i}" for i in range(100)], "y": [1] * 30 + [0] * 70})
    res = split_table(df, holdout=parse_holdout("0.2,0.1"), image="image", labels=["y"])
    assert res.fold_names == ["train", "val", "test"]
    assert np.bincount(res.fold).tolist() == [70, 20, 10]
    # 30 positives shared 0.7/0.2/0.1 -> 21/6/3 exactly.
    assert np.bincount(res.fold[df["y"].to_numpy() == 1]).tolist() == [21, 6, 3]


@pytest.mark.parametrize(("size_weight", "expected"), [(1.0, [(3, 2 / 3), (3, 1 / 3)]), (0.1, [(4, 0.5), (2, 0.5)])])
def test_size_weight_trades_fold_size_for_prevalence(size_weight: float, expected: list) -> None:
    # 3 positives and 3 negatives, 2 folds. Equal sizes force prevalences 2/3 and 1/3 (distance 1/3 from the
    # labels); prevalence 1/2 in both folds needs sizes 4 and 2 (distance 2/3 * size_weight from the sizes).
    df = pd.DataFrame({"image": list("abcdef"), "y": [1, 1, 1, 0, 0, 0]})
    res = split_table(df, folds=2, image="image", labels=["y"], size_weight=size_weight)
    sizes = np.bincount(res.fold)
    prevalence = prevalence_table(df[["y"]].to_numpy(), res.fold, 2)[1][:, 0]
    got = sorted(zip(sizes.tolist(), prevalence.tolist(), strict=True), reverse=True)
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected])


def test_parse_holdout() -> None:
    np.testing.assert_allclose(parse_holdout("0.2"), [0.8, 0.2])
    np.testing.assert_allclose(parse_holdout("0.2,0.1"), [0.7, 0.2, 0.1])
    for bad in ("0", "1.2", "0.6,0.5", "a", "0.1,0.1,0.1"):
        with pytest.raises(UsageError):
            parse_holdout(bad)


def test_prevalence_and_deviation_match_plain_loops() -> None:
    rng = np.random.default_rng(3)
    values = (rng.random((50, 3)) < [0.5, 0.2, 0.1]).astype(float)
    fold = rng.integers(0, 4, 50)
    overall, per_fold = prevalence_table(values, fold, 4)
    worst_abs = worst_rel = 0.0
    for j in range(3):
        p = sum(values[i, j] for i in range(50)) / 50
        assert overall[j] == pytest.approx(p)
        for k in range(4):
            rows = [i for i in range(50) if fold[i] == k]
            q = sum(values[i, j] for i in rows) / len(rows)
            assert per_fold[k, j] == pytest.approx(q)
            worst_abs = max(worst_abs, abs(q - p))
            worst_rel = max(worst_rel, abs(q - p) / p)
    assert max_deviation(values, fold, 4) == pytest.approx((worst_abs, worst_rel))


def test_leakage_certificate_counts_a_bad_assignment() -> None:
    groups = ["a", "a", "b", "b", "c", None]
    clusters = [None, "x", "x", None, "y", "y"]
    fold = np.array([0, 1, 1, 1, 0, 0])
    # group a spans folds 0/1; b and c do not; cluster x is in fold 1 only, y in fold 0 only; fold 2 is empty.
    assert leakage_certificate(fold, 3, groups, clusters) == {
        "groups_shared": 1,
        "duplicate_clusters_split": 0,
        "empty_folds": 1,
    }
    fold2 = np.array([0, 0, 1, 1, 0, 1])
    assert leakage_certificate(fold2, 2, groups, clusters) == {
        "groups_shared": 0,
        "duplicate_clusters_split": 2,
        "empty_folds": 0,
    }


def test_expand_separated() -> None:
    got = expand_separated(pd.Series(["Mass|Effusion", "No Finding", None, "Effusion"]))
    assert list(got.columns) == ["Effusion", "Mass", "No Finding"]
    assert got.to_numpy().tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_local_search_never_worsens_the_greedy_split() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 8, 300)
    counts = rng.binomial(sizes[:, None], [0.4, 0.2, 0.1, 0.05, 0.02])
    _, stats = assign_units(counts, sizes, np.full(4, 0.25), passes=20)
    assert stats["final"] <= stats["greedy"]


# ---------------------------------------------------------------- duplicates and the group conflict


def test_duplicate_cluster_spanning_two_patients_merges_them() -> None:
    df = pd.DataFrame(
        {
            "image": ["p1a.png", "p1b.png", "p2a.png", "p3a.png", "p4a.png", "p5a.png"],
            "patient_id": ["P1", "P1", "P2", "P3", "P4", "P5"],
            "y": [1, 0, 1, 0, 1, 0],
        }
    )
    # Audit paths carry a folder; matching falls back to the file name.
    dups = pd.DataFrame(
        {
            "image": ["train/p1b.png", "train/p2a.png", "train/p4a.png", "train/p5a.png", "train/ghost.png"],
            "cluster": [7, 7, 9, 9, 11],
        }
    )
    res = split_table(df, folds=2, image="image", group="patient_id", labels=["y"], duplicates=dups)
    assert res.units.merged_units == 2  # {P1, P2} and {P4, P5}
    assert res.units.conflicting_clusters == 2
    assert res.units.count == 3
    assert res.unmatched_duplicates == 1
    fold = dict(zip(df["image"], res.fold, strict=True))
    assert fold["p1a.png"] == fold["p1b.png"] == fold["p2a.png"]
    assert fold["p4a.png"] == fold["p5a.png"]
    assert res.certificate == {
        "groups_shared": 0,
        "duplicate_clusters_split": 0,
        "empty_folds": 0,
        "duplicates_unplaced": 0,  # the ghost is a cluster of one
    }


def test_build_units_from_identical_images() -> None:
    units = build_units(["b", "a", "b", "c"], groups=None, clusters=None)
    assert units.count == 3
    assert units.of_row.tolist() == [1, 0, 1, 2]  # numbered by sorted image key


def test_more_folds_than_units_is_reported() -> None:
    df = pd.DataFrame({"image": list("abcdef"), "patient_id": list("aabbcc"), "y": [1, 0, 1, 0, 1, 0]})
    res = split_table(df, folds=5, image="image", group="patient_id", labels=["y"])
    assert res.certificate["empty_folds"] == 2
    assert not res.ok


def test_duplicates_table_needs_its_columns() -> None:
    df = pd.DataFrame({"image": ["a", "b"], "y": [0, 1]})
    with pytest.raises(DataError, match="cluster"):
        split_table(df, folds=2, image="image", labels=["y"], duplicates=pd.DataFrame({"image": ["a"]}))


# ---------------------------------------------------------------- properties on random tables


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_tables_keep_groups_whole_and_stay_balanced(seed: int) -> None:
    from sklearn.model_selection import GroupKFold

    df = _random_table(seed=seed)
    labels = ["L0", "L1", "L2", "L3"]
    res = split_table(df, folds=5, image="image", group="patient_id", labels=labels, strata=["site"], seed=seed)
    assert len(res.fold) == len(df) and set(res.fold.tolist()) == set(range(5))
    assert (_folds_of(df, res.fold, "patient_id") == 1).all()
    assert res.ok
    # Fold sizes stay within one patient (at most 5 images) of the target.
    assert np.abs(np.bincount(res.fold) - len(df) / 5).max() <= 5
    # Better balanced than scikit-learn's group-only split, the baseline a user would reach for.
    base = np.empty(len(df), dtype=int)
    for k, (_, val) in enumerate(GroupKFold(5).split(df, groups=df["patient_id"])):
        base[val] = k
    ours = max_deviation(res.labels.values, res.fold, 5)[0]
    theirs = max_deviation(res.labels.values, base, 5)[0]
    assert ours < theirs


def test_seed_determinism_and_shuffle_stability() -> None:
    df = _random_table(seed=5)
    kw = {"folds": 4, "image": "image", "group": "patient_id", "labels": ["L0", "L1", "L2"]}
    a = split_table(df, seed=7, **kw).fold
    b = split_table(df, seed=7, **kw).fold
    assert np.array_equal(a, b)
    other = split_table(df, seed=8, **kw).fold
    assert not np.array_equal(a, other)
    shuffled = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
    c = split_table(shuffled, seed=7, **kw).fold
    assert dict(zip(df["image"], a, strict=True)) == dict(zip(shuffled["image"], c, strict=True))
    # The same holds with duplicate clusters, listed in another order too.
    dups = pd.DataFrame({"image": df["image"].iloc[::7].to_numpy(), "cluster": np.arange(len(df))[::7] % 5})
    d1 = split_table(df, seed=7, duplicates=dups, **kw)
    d2 = split_table(shuffled, seed=7, duplicates=dups.iloc[::-1], **kw)
    assert d1.units.merged_units > 0 and d1.ok
    assert dict(zip(df["image"], d1.fold, strict=True)) == dict(zip(shuffled["image"], d2.fold, strict=True))


def test_rsna_long_detection() -> None:
    rows = [
        (f"ID_{i:09x}_{s}", int(i % 3 == 0))
        for i in range(4)
        for s in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
    ]
    long = pd.DataFrame(rows, columns=["ID", "Label"])
    assert looks_like_rsna_long(long)
    assert not looks_like_rsna_long(pd.DataFrame({"ID": ["a"], "Label": [1]}))


# ---------------------------------------------------------------- CLI


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_folds_default_output_and_certificate(tmp_path: Path) -> None:
    df = _random_table(seed=11)
    table = tmp_path / "train.csv"
    df.to_csv(table, index=False)
    before = _sha(table)
    result = runner.invoke(app, ["split", str(table), "--n-folds", "3", "--strata", "site", "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert _sha(table) == before  # input untouched
    written = tmp_path / "train.folds.csv"
    assert rep["output"] == str(written)
    got = pd.read_csv(written)
    assert list(got.columns) == [*df.columns, "fold"]
    assert (got.groupby("patient_id")["fold"].nunique() == 1).all()
    assert rep["group_column"] == "patient_id"
    assert rep["certificate"]["groups_shared"] == 0 and rep["certificate"]["duplicate_clusters_split"] == 0
    assert [f["rows"] for f in rep["folds"]] == np.bincount(got["fold"]).tolist()
    assert {lab["name"] for lab in rep["labels"]} == {"L0", "L1", "L2", "L3", "site=a", "site=b", "site=c"}
    assert rep["max_abs_dev"] == pytest.approx(max(lab["max_abs_dev"] for lab in rep["labels"]))
    assert "group column: 'patient_id'" in result.stderr


def test_cli_table_report_and_labels_from(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = np.array(["No Finding", "Effusion", "Mass|Effusion", "Hernia"])
    df = pd.DataFrame(
        {
            "Image Index": [f"{i:08d}_000.png" for i in range(80)],
            "Finding Labels": names[rng.integers(0, 4, 80)],
            "Patient ID": rng.integers(0, 30, 80),
        }
    )
    table = tmp_path / "Data_Entry.csv"
    df.to_csv(table, index=False)
    out = tmp_path / "out" / "folds.csv"
    result = runner.invoke(app, ["split", str(table), "-k", "4", "--labels-from", "Finding Labels", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "groups shared between folds: 0" in result.stdout
    assert "duplicate clusters split:    0" in result.stdout
    for label in ("Effusion", "Hernia", "Mass", "No Finding"):
        assert label in result.stdout
    got = pd.read_csv(out)
    assert (got.groupby("Patient ID")["fold"].nunique() == 1).all()
    assert "expanded into 4 labels" in result.stderr


def test_cli_holdout_with_duplicates_reports_merges(tmp_path: Path) -> None:
    df = _random_table(n_patients=40, seed=4)
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    first = df.groupby("patient_id")["image"].first()
    dups = pd.DataFrame({"image": [first.iloc[0], first.iloc[1], first.iloc[2]], "cluster": ["c1", "c1", "c2"]})
    dup_path = tmp_path / "duplicates.csv"
    dups.to_csv(dup_path, index=False)
    result = runner.invoke(app, ["split", str(table), "--holdout", "0.25", "--duplicates", str(dup_path), "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert rep["mode"] == "holdout" and rep["fold_column"] == "split"
    assert rep["certificate"]["merged_units"] == 1
    assert rep["certificate"]["conflicting_clusters"] == 1
    got = pd.read_csv(tmp_path / "t.split.csv")
    assert set(got["split"]) == {"train", "val"}
    p0, p1 = first.index[:2]
    assert got.loc[got["patient_id"].isin([p0, p1]), "split"].nunique() == 1
    assert "merge several" in result.stderr


def test_cli_impossible_split_exits_1_without_output(tmp_path: Path) -> None:
    table = tmp_path / "small.csv"
    pd.DataFrame({"image": list("abcd"), "patient_id": list("aabb"), "y": [1, 0, 1, 0]}).to_csv(table, index=False)
    result = runner.invoke(app, ["split", str(table), "--n-folds", "3"])
    assert result.exit_code == 1
    assert "empty folds" in result.stdout
    assert "no file written" in result.stdout
    assert not (tmp_path / "small.folds.csv").exists()


def test_cli_rsna_long_is_converted(tmp_path: Path) -> None:
    subtypes = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
    rows = [(f"ID_{i:09x}_{s}", int(i % 4 == 0)) for i in range(20) for s in subtypes]
    table = tmp_path / "stage_2_train.csv"
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(table, index=False)
    result = runner.invoke(app, ["split", str(table), "-k", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert rep["rsna_long_converted"] and rep["rows"] == 20
    got = pd.read_csv(tmp_path / "stage_2_train.folds.csv")
    assert list(got.columns) == ["image", *subtypes, "fold"]
    # 5 positive images (i % 4 == 0) among 20: exactly one per fold.
    assert got.loc[got["any"] == 1, "fold"].value_counts().tolist() == [1] * 5


def test_cli_errors_name_the_file(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"image": ["a", "b"], "y": [0, 1]}).to_csv(table, index=False)
    result = runner.invoke(app, ["split", str(table), "--label-cols", "Y"])
    assert result.exit_code == 2
    assert "label column 'Y'" in result.stderr and "did you mean 'y'" in result.stderr
    bad = tmp_path / "dups.csv"
    pd.DataFrame({"path": ["a"]}).to_csv(bad, index=False)
    result = runner.invoke(app, ["split", str(table), "-k", "2", "--duplicates", str(bad)])
    assert result.exit_code == 2
    assert "no 'image' column" in result.stderr
    result = runner.invoke(app, ["split", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "missing.csv" in result.stderr
    assert not list(tmp_path.glob("*.folds.csv"))


def test_cli_out_never_replaces_the_input(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    df = pd.DataFrame({"image": [f"i{i}" for i in range(10)], "y": [0, 1] * 5})
    df.to_csv(table, index=False)
    before = table.read_bytes()
    result = runner.invoke(app, ["split", str(table), "-k", "2", "--out", str(table)])
    assert result.exit_code == 2
    assert "would overwrite the input" in result.stderr and "t.csv" in result.stderr
    assert "Traceback" not in result.stderr
    assert table.read_bytes() == before
    assert not (tmp_path / "t.folds.csv").exists()


def test_cli_n_folds_and_label_cols_flags(tmp_path: Path) -> None:
    # The same flag means the same thing in every command: --label-cols are columns, -k/--n-folds a number
    # (--labels and --folds are tables in `medkit train`).
    table = tmp_path / "t.csv"
    df = pd.DataFrame(
        {
            "image": [f"i{i}" for i in range(12)],
            "a": [1, 0, 0] * 4,
            "b": [0, 1, 1, 0] * 3,
            "c": [1] * 6 + [0] * 6,
        }
    )
    df.to_csv(table, index=False)
    result = runner.invoke(app, ["split", str(table), "-k", "3", "--label-cols", "a,b", "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert rep["label_columns"] == ["a", "b"] and [lab["name"] for lab in rep["labels"]] == ["a", "b"]
    assert [f["rows"] for f in rep["folds"]] == [4, 4, 4]
    assert pd.read_csv(tmp_path / "t.folds.csv")["fold"].nunique() == 3
    result = runner.invoke(app, ["split", str(table), "--n-folds", "3", "--label-cols", "auto", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label_columns"] == ["a", "b", "c"]

    for old in (["--folds", "5"], ["--labels", "a,b"]):
        result = runner.invoke(app, ["split", str(table), *old])
        assert result.exit_code == 2
        assert f"No such option: {old[0]}" in result.stderr
        assert "--n-folds" in result.stderr if old[0] == "--folds" else "--label-cols" in result.stderr
        assert result.stdout == ""

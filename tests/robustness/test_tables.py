"""Robustness of medkit on tables: ids that are not file names, header spaces, names that are not UTF-8, duplicate
ids, inputs that would be overwritten, audits that matched nothing (issue 17 items 1-5, 10, 11, 19).

Every case builds its own files in ``tmp_path`` and checks the exit code, the message, that no traceback is
printed, that no input file changes and that no table row is lost; each one failed before the fix it checks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medkit._names import escape_name, unescape_name
from medkit.cli.main import app
from medkit.data.table import FileIndex, resolve_paths
from medkit.errors import DataError

runner = CliRunner()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(root: Path, names: list[str], seed: int = 0) -> None:
    """Small distinct random PNGs (no two alike, none blank)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (16, 16), dtype=np.uint8))


def _padded_set(tmp_path: Path, n: int = 20) -> tuple[Path, Path]:
    """Files 000.png..(n-1) and a table of integer ids 0..n-1 (odd ids positive), as in a public head-CT set."""
    root = tmp_path / "data"
    _images(root, [f"{i:03d}.png" for i in range(n)])
    table = tmp_path / "labels.csv"
    pd.DataFrame({"id": range(n), "hemorrhage": [i % 2 for i in range(n)]}).to_csv(table, index=False)
    return root, table


def _findings(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "findings.csv", keep_default_na=False)


# ------------------------------------------------------------------------------------------ the join rules
@pytest.mark.parametrize(
    ("value", "expected", "rule"),
    [
        ("train/007.png", "train/007.png", "path"),
        ("./train/007.png", "train/007.png", "path"),
        ("007.png", "train/007.png", "name"),
        ("007", "train/007.png", "stem"),
        ("train/007", "train/007.png", "stem"),
        ("7", "train/007.png", "zero-padded stem"),
        (7.0, "train/007.png", "zero-padded stem"),  # an id column read as float
        ("ID_12", "ID_0012.dcm", "zero-padded stem"),
        ("007.jpg", "train/007.png", "stem, other extension"),
        ("ID_0012.png", "ID_0012.dcm", "stem, other extension"),
        ("8", None, None),
        ("", None, None),
    ],
)
def test_file_index_rules(value: object, expected: str | None, rule: str | None) -> None:
    names = ["train/007.png", "ID_0012.dcm", "other/x.png"]
    m = FileIndex(names).match(value)
    assert (names[m.index] if m.index is not None else None) == expected
    assert m.rule == rule


def test_ambiguous_match_is_an_error_naming_both_files(tmp_path: Path) -> None:
    _images(tmp_path / "data", ["train/a.png", "test/a.png", "b.png"])
    df = pd.DataFrame({"image": ["a.png", "b.png"]})
    with pytest.raises(DataError, match=r"row 2 \('image' = a.png\) matches 2 files: test/a.png and train/a.png"):
        resolve_paths(df, tmp_path / "data", "image")
    # The audit reports it as a failing finding instead of guessing.
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    res = runner.invoke(app, ["audit", str(tmp_path / "data"), "--labels", str(table), "--workers", "0", "--json"])
    assert res.exit_code == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"]["ambiguous_file"] == 1 and "missing_file" not in doc["counts"]


# ------------------------------------------------------------------------------------------ 1: zero-padded ids
def test_integer_ids_match_zero_padded_files_and_no_row_is_lost(tmp_path: Path) -> None:
    root, table = _padded_set(tmp_path)
    before = _sha(table)
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(root), "--labels", str(table), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.stderr
    assert "image id 0 -> 000.png (zero-padded stem; 20 rows of 'id' matched this way)" in res.stderr
    assert "Traceback" not in res.stderr
    assert set(_findings(out)["kind"]) == set()  # every row found its file, every file its row
    clean = pd.read_csv(out / "labels_clean.csv")
    assert len(clean) == 20 and clean["hemorrhage"].sum() == 10  # before: 99 rows, every positive dropped
    assert _sha(table) == before
    # train's path to the files uses the same rules
    assert resolve_paths(pd.read_csv(table), root, "id", quiet=True)[7] == root / "007.png"


def test_rows_matching_no_file_fail_the_audit_and_stay_in_the_clean_table(tmp_path: Path) -> None:
    root, _ = _padded_set(tmp_path, n=6)
    table = tmp_path / "t.csv"
    pd.DataFrame({"image": ["000.png", "001.png", "x1", "x2"], "y": [0, 1, 1, 0]}).to_csv(table, index=False)
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(root), "--labels", str(table), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 1  # missing_file is in the default --fail-on
    assert "missing_file" in res.stdout and "Traceback" not in res.stderr
    clean = pd.read_csv(out / "labels_clean.csv", keep_default_na=False)
    removed = pd.read_csv(out / "labels_removed.csv")
    assert len(clean) + len(removed) == 4 and len(clean) == 4
    assert clean.set_index("image")["audit_issue"].to_dict() == {
        "000.png": "",
        "001.png": "",
        "x1": "missing_file",
        "x2": "missing_file",
    }


# ------------------------------------------------------------------------------------------ 2: split --duplicates
def _dups(tmp_path: Path, rows: list[tuple[str, int]]) -> Path:
    path = tmp_path / "duplicates.csv"
    pd.DataFrame(rows, columns=["image", "cluster"]).assign(
        cluster_size=lambda d: d.groupby("cluster")["image"].transform("size")
    ).to_csv(path, index=False)
    return path


def test_split_keeps_a_cluster_whole_when_names_need_the_join_rules(tmp_path: Path) -> None:
    _, table = _padded_set(tmp_path, n=40)
    dups = _dups(tmp_path, [("011.png", 5), ("031.png", 5), ("012.png", 6)])
    out = tmp_path / "folds.csv"
    res = runner.invoke(app, ["split", str(table), "--duplicates", str(dups), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    assert "image id 11 -> 011.png (zero-padded stem" in res.stderr
    folds = pd.read_csv(out).set_index("id")["fold"]
    assert folds[11] == folds[31]  # before: 0 clusters split was printed while 011 and 061 lay in two folds
    cert = json.loads(res.stdout)["certificate"]
    assert cert["duplicate_clusters_split"] == 0 and cert["unmatched_duplicates"] == 0


def test_split_fails_when_a_cluster_names_an_image_not_in_the_table(tmp_path: Path) -> None:
    _, table = _padded_set(tmp_path, n=40)
    dups = _dups(tmp_path, [("011.png", 5), ("099.png", 5)])  # no row 99
    out = tmp_path / "folds.csv"
    res = runner.invoke(app, ["split", str(table), "--duplicates", str(dups), "--out", str(out)])
    assert res.exit_code == 1
    assert "099.png" in res.stderr and "--partial-duplicates" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    res = runner.invoke(
        app, ["split", str(table), "--duplicates", str(dups), "--out", str(out), "--partial-duplicates"]
    )
    assert res.exit_code == 0, res.stderr
    assert len(pd.read_csv(out)) == 40


def test_split_certificate_is_computed_on_the_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.split._make as make

    _, table = _padded_set(tmp_path, n=40)
    dups = _dups(tmp_path, [("011.png", 5), ("031.png", 5)])
    real = make._write_folds

    def corrupt(df: pd.DataFrame, result: object, target: Path, fold_col: str) -> Path:
        path = real(df, result, target, fold_col)
        written = pd.read_csv(path)
        row = written.index[written["id"] == 31][0]
        written.loc[row, "fold"] = (written.loc[row, "fold"] + 1) % 5  # what lands on disk differs from the plan
        written.to_csv(path, index=False)
        return path

    monkeypatch.setattr(make, "_write_folds", corrupt)
    out = tmp_path / "folds.csv"
    res = runner.invoke(app, ["split", str(table), "--duplicates", str(dups), "--out", str(out), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["certificate"]["duplicate_clusters_split"] == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------ 3: header spaces
def test_header_spaces_are_dropped_with_a_note(tmp_path: Path) -> None:
    root, _ = _padded_set(tmp_path, n=6)
    table = tmp_path / "t.csv"
    table.write_text("id, hemorrhage\n" + "".join(f"{i}, {i % 2}\n" for i in range(6)))
    before = _sha(table)
    res = runner.invoke(
        app, ["split", str(table), "-k", "2", "--label-cols", "hemorrhage", "--out", str(tmp_path / "f.csv")]
    )
    assert res.exit_code == 0, res.stderr
    assert "surrounding spaces dropped from column names: ' hemorrhage'" in res.stderr
    assert list(pd.read_csv(tmp_path / "f.csv").columns) == ["id", "hemorrhage", "fold"]
    res = runner.invoke(
        app, ["audit", str(root), "--labels", str(table), "--label-cols", "hemorrhage", "--workers", "0"]
    )
    assert res.exit_code == 0, res.stderr
    assert _sha(table) == before


def test_audit_column_errors_come_before_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.audit.run as run

    root, table = _padded_set(tmp_path, n=4)

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the images were scanned before the column was checked")

    monkeypatch.setattr(run, "scan_plan", no_scan)
    res = runner.invoke(app, ["audit", str(root), "--labels", str(table), "--label-cols", "hemorhage"])
    assert res.exit_code == 2
    assert "label column 'hemorhage' is not in the table (did you mean 'hemorrhage'?)" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------ 4: non-UTF-8 names
def test_escape_round_trips() -> None:
    for name in ["a.png", "caf\udce9.png", "back\\slash.png", "lit\\xe9.png", "\udcff\\\udc80", "dir/x;y.png"]:
        text = escape_name(name)
        text.encode("utf-8")  # always writable
        assert unescape_name(text) == name
    assert escape_name("caf\udce9.png") == "caf\\xe9.png"


def test_a_latin1_file_name_is_audited_and_written_escaped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _images(root, ["a.png", "b.png"])
    raw = os.path.join(os.fsencode(root), b"caf\xe9.png")
    try:
        with open(raw, "wb") as fh:
            fh.write((root / "b.png").read_bytes()[:0] or cv2.imencode(".png", np.eye(16, dtype=np.uint8) * 200)[1])
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(root), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.stderr  # before: exit 2, "internal error: UnicodeEncodeError"
    assert "Traceback" not in res.stderr
    findings = _findings(out)
    row = findings[findings["kind"] == "undecodable_name"].iloc[0]
    assert json.loads(row["files"]) == ["caf\\xe9.png"]
    from medkit.audit.outputs import decode_files

    (name,) = decode_files(row["files"])
    assert os.path.isfile(os.path.join(os.fsencode(root), os.fsencode(name)))  # the escape is lossless
    dup = pd.read_csv(out / "duplicates.csv")
    assert "caf\\xe9.png" in dup["image"].tolist() and len(dup) == 3
    # the escaped name written by the audit finds the file again (split, train)
    (path,) = resolve_paths(pd.DataFrame({"image": ["caf\\xe9.png"]}), root, "image", quiet=True)
    assert path is not None and os.fsencode(path) == raw
    (out / "findings.csv").read_bytes().decode("utf-8")


# ------------------------------------------------------------------------------------------ 5 and 19: duplicate ids
def test_duplicate_ids_are_findings_and_conflicts_fail(tmp_path: Path) -> None:
    root, _ = _padded_set(tmp_path, n=10)
    table = tmp_path / "t.csv"
    pd.DataFrame({"id": [5, 5, 7, 7, 8], "hemorrhage": [0, 1, 1, 1, 0]}).to_csv(table, index=False)
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["audit", str(root), "--labels", str(table), "--out", str(out), "--workers", "0", "--json"]
    )
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["counts"]["duplicate_id_conflict"] == 1 and doc["counts"]["duplicate_id"] == 1
    conflict = next(f for f in doc["findings"] if f["kind"] == "duplicate_id_conflict")
    assert conflict["files"] == ["005.png"] and conflict["severity"] == "error"
    clean = pd.read_csv(out / "labels_clean.csv")
    removed = pd.read_csv(out / "labels_removed.csv")
    assert len(clean) + len(removed) == 5  # no row lost: what is not kept is listed with its reason
    assert sorted(clean["id"]) == [7, 8]
    assert sorted(removed["audit_reason"]) == ["duplicate_id", "duplicate_id_conflict", "duplicate_id_conflict"]


def test_split_and_train_warn_on_ids_with_opposite_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medkit.data.dataset import _warn_conflicting_ids
    from medkit.data.table import detect_spec, duplicate_id_conflicts

    df = pd.DataFrame({"image": ["a", "a", "b", "b", "c", "d"], "tumour": [0, 1, 1, 1, 0, 1]})
    assert duplicate_id_conflicts(df, "image", ["tumour"]) == [("a", [0, 1])]
    table = tmp_path / "t.csv"
    df.to_csv(table, index=False)
    res = runner.invoke(app, ["split", str(table), "-k", "2", "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.stderr
    assert "1 id is listed more than once with different labels (e.g. 'a': table rows 2, 3: tumour 0 / 1)" in res.stderr
    _warn_conflicting_ids(df, detect_spec(df), table)
    assert "different labels" in capsys.readouterr().err


def test_findings_files_round_trip_names_with_separators(tmp_path: Path) -> None:
    from medkit.audit.outputs import decode_files

    root = tmp_path / "data"
    _images(root, ["a;b.png", "c,d.png"])
    (root / "e.png").write_bytes((root / "a;b.png").read_bytes())  # an exact duplicate of a;b.png
    out = tmp_path / "out"
    res = runner.invoke(app, ["audit", str(root), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.stderr
    findings = _findings(out)
    cell = findings[findings["kind"] == "exact_duplicate"]["files"].iloc[0]
    assert sorted(decode_files(cell)) == ["a;b.png", "e.png"]  # before: "a;b.png;e.png", three names


# ------------------------------------------------------------------------------------------ 10: inputs never outputs
def test_audit_refuses_to_overwrite_its_label_table(tmp_path: Path) -> None:
    root, table = _padded_set(tmp_path, n=6)
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "labels_clean.csv"
    inside.write_bytes(table.read_bytes())
    before = _sha(inside)
    res = runner.invoke(app, ["audit", str(root), "--labels", str(inside), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 2
    assert "--out would overwrite the input" in res.stderr and "labels_clean.csv" in res.stderr
    assert "Traceback" not in res.stderr
    assert _sha(inside) == before and not (out / "findings.csv").exists()


def test_ensemble_and_submit_refuse_to_overwrite_their_inputs(tmp_path: Path) -> None:
    # ensemble already refused (medkit.ensemble._run._check_outputs); submit and predict now do too.
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for k, p in enumerate((a, b)):
        pd.DataFrame({"image": ["x", "y"], "y_prob": [0.1 + k / 10, 0.8]}).to_csv(p, index=False)
    before = _sha(a)
    res = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(a)])
    assert res.exit_code == 2 and "would overwrite" in res.stderr and "Traceback" not in res.stderr
    assert _sha(a) == before
    res = runner.invoke(app, ["submit", str(a), "-c", "siim-isic", "--out", str(a), "--dry-run"])
    assert res.exit_code == 2 and "would overwrite the input" in res.stderr, res.stderr
    assert _sha(a) == before


def test_predict_refuses_to_overwrite_its_table_before_loading_a_run(tmp_path: Path) -> None:
    root, table = _padded_set(tmp_path, n=3)
    before = _sha(table)
    res = runner.invoke(
        app, ["predict", str(tmp_path / "no-run"), "--data", str(root), "--labels", str(table), "--out", str(table)]
    )
    assert res.exit_code == 2 and "--out would overwrite the input" in res.stderr, res.stderr
    assert _sha(table) == before


# ------------------------------------------------------------------------------------- 11: audits that match nothing
def test_an_empty_folder_fails_the_audit(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["audit", str(tmp_path / "empty"), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["counts"] == {"no_images": 1}


def test_a_table_that_matches_nothing_fails_the_audit(tmp_path: Path) -> None:
    root, _ = _padded_set(tmp_path, n=4)
    table = tmp_path / "t.csv"
    pd.DataFrame({"image": ["p.png", "q.png"], "y": [0, 1]}).to_csv(table, index=False)
    res = runner.invoke(app, ["audit", str(root), "--labels", str(table), "--workers", "0", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["counts"]["missing_file"] == 2


# ------------------------------------------------------------------------------------------ issue 16 and MedMNIST
def test_split_says_a_label_column_is_constant(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"image": [f"i{i}" for i in range(8)], "tumour": [0] * 8}).to_csv(table, index=False)
    res = runner.invoke(app, ["split", str(table), "-k", "2", "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.stderr
    assert "label column 'tumour' is constant (0 in all 8 rows)" in res.stderr
    assert "no label columns found" not in res.stderr


def test_audit_footer_names_where_splits_came_from(tmp_path: Path) -> None:
    root, _ = _padded_set(tmp_path, n=3)
    res = runner.invoke(app, ["audit", str(root), "--workers", "0"])
    assert res.exit_code == 0, res.stderr
    assert "split from nothing" not in res.stdout and "no splits or folds" in res.stdout


def test_medmnist_archive_with_an_empty_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (6, 1)),
        val_images=np.zeros((0, 28, 28), np.uint8),
        val_labels=np.zeros((0, 1), np.int64),
        test_images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 2, (3, 1)),
    )
    res = runner.invoke(app, ["audit", str(path), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.stderr  # before: "cannot reshape array of size 0 into shape (0,newaxis)"
    assert json.loads(res.stdout)["files"] == 9
    from medkit.data.dataset import _medmnist
    from medkit.registries import TASKS

    with pytest.raises(DataError, match="the val split holds no image"):
        _medmnist(TASKS.create("scan"), path)


def test_audit_then_split_of_its_clean_table_with_exact_duplicates_and_blank_images(tmp_path: Path) -> None:
    """The README's path: the clean table leaves out second copies and blank images; split must not ask for them."""
    root, table = _padded_set(tmp_path, n=40)
    img = cv2.imread(str(root / "003.png"), cv2.IMREAD_UNCHANGED)
    for name in ("040.png", "041.png"):  # exact copies of 003 with rows of their own
        assert cv2.imwrite(str(root / name), img)
    for name in ("042.png", "043.png", "044.png"):  # blank images: one exact cluster
        assert cv2.imwrite(str(root / name), np.zeros((16, 16), np.uint8))
    pd.DataFrame({"id": range(45), "hemorrhage": [i % 2 for i in range(45)]}).to_csv(table, index=False)
    audit = tmp_path / "audit"
    res = runner.invoke(app, ["audit", str(root), "--labels", str(table), "--out", str(audit), "--fail-on", "none"])
    assert res.exit_code == 0, res.output
    dups = pd.read_csv(audit / "duplicates.csv", keep_default_na=False).set_index("image")
    assert dups.loc["041.png", "audit_reason"] == "exact_duplicate" and dups.loc["003.png", "audit_reason"] == ""
    assert dups.loc["043.png", "audit_reason"] == "blank"
    clean = pd.read_csv(audit / "labels_clean.csv")
    assert len(clean) == 45 - 2 - 3
    out = tmp_path / "folds.csv"
    res = runner.invoke(
        app, ["split", str(audit / "labels_clean.csv"), "--duplicates", str(audit / "duplicates.csv"),
              "--out", str(out), "--json"]
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr  # before: "5 image(s) of duplicate clusters match no row", exit 1
    assert "left out of the clean table" in res.stderr
    cert = json.loads(res.stdout)["certificate"]
    assert cert["duplicate_clusters_split"] == 0 and cert["duplicates_unplaced"] == 0
    assert len(pd.read_csv(out)) == 40


def test_split_group_none_does_not_ask_for_a_group_column(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"image": [f"i{i}" for i in range(8)], "tumour": [0, 1] * 4}).to_csv(table, index=False)
    res = runner.invoke(app, ["split", str(table), "-k", "2", "--group", "none", "--out", str(tmp_path / "f.csv")])
    assert res.exit_code == 0, res.stderr
    assert "no group column" not in res.stderr  # the user switched grouping off on purpose
    res = runner.invoke(app, ["split", str(table), "-k", "2", "--out", str(tmp_path / "g.csv")])
    assert "no group column" in res.stderr  # and is still told when nothing was said


def test_train_names_a_label_column_taken_for_a_coordinate(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _images(root, [f"{i:03d}.png" for i in range(8)])
    table = tmp_path / "labels.csv"
    pd.DataFrame({"image": [f"{i:03d}.png" for i in range(8)], "y": [0, 1] * 4}).to_csv(table, index=False)
    args = ["train", "binary", "--data", str(root), "--labels", str(table), "--epochs", "1", "--dry-run"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "column(s) y taken by name for covariates" in res.stderr and "--label-cols y" in res.stderr

"""`medkit audit`: every planted problem is found, clean images raise nothing, outputs follow the contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from _factories import write_dicom as make_dicom
from _factories import write_medmnist as medmnist_npz
from typer.testing import CliRunner

import medkit.audit as A
from medkit.audit.phash import clusters, hamming, near_pairs, phash64
from medkit.cli.main import app

# ---------------------------------------------------------------------------------------------- synthetic data


def natural(seed: int, size: tuple[int, int] = (96, 96), depth: int = 255, dtype: type = np.uint8) -> np.ndarray:
    """Smoothed noise plus random shapes, stretched over the full range: looks like nothing else in the set."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 4 + seed % 3)
    for _ in range(4):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(6, 25)), float(rng.normal(0, 2)), -1)
        else:
            cv2.rectangle(
                img, c, (c[0] + int(rng.integers(8, 30)), c[1] + int(rng.integers(8, 30))), float(rng.normal(0, 2)), -1
            )
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * depth).astype(dtype)


def write_dicom(
    path: Path,
    hu: np.ndarray | None,
    *,
    z: float | None = None,
    instance: int = 1,
    series: str = "1.2.3",
    modality: str = "CT",
    bits_stored: int = 16,
    signed: bool = True,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
    window: tuple[str, str] | None = ("40", "80"),
    stored: np.ndarray | None = None,
) -> Path:
    """A small uncompressed DICOM in HU; ``hu=None`` and ``stored=None`` write one without pixel data."""
    if stored is None and hu is not None:
        stored = np.round(hu - intercept)
    return make_dicom(
        path,
        stored,
        z=z,
        instance=instance,
        series=series,
        modality=modality,
        bits_stored=bits_stored,
        signed=signed,
        intercept=intercept,
        photometric=photometric,
        window=window,
        patient="P",
        pixel_spacing=None,
    )


def ct_slice(seed: int, n: int = 64) -> np.ndarray:
    """A body-like CT slice in HU: a soft-tissue ellipse of random shape with bone and fat blobs, in air."""
    rng = np.random.default_rng(seed)
    hu = np.full((n, n), -1000.0, np.float32)
    axes = (int(rng.integers(14, 28)), int(rng.integers(10, 22)))
    centre = (n // 2 + int(rng.integers(-6, 7)), n // 2 + int(rng.integers(-6, 7)))
    cv2.ellipse(hu, centre, axes, float(rng.uniform(0, 180)), 0, 360, 40.0, -1)
    for _ in range(5):
        cv2.circle(
            hu,
            (int(rng.integers(16, 48)), int(rng.integers(16, 48))),
            int(rng.integers(2, 8)),
            float(rng.choice([-100.0, 700.0, 1200.0])),
            -1,
        )
    return hu + rng.normal(0, 8, hu.shape).astype(np.float32)


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder with one of each planted problem, a label table and the list of clean files."""
    root = tmp_path_factory.mktemp("audit") / "data"
    clean: list[str] = []
    for k in range(8):
        rel = f"{'train' if k < 5 else 'test'}/clean{k}.png"
        write_png(root / rel, natural(k))
        clean.append(rel)
    # 12-bit data in 16-bit containers, judged on their real depth (neither dark nor blank).
    for k in range(3):
        write_png(root / f"train/x16_{k}.png", natural(100 + k, depth=4095, dtype=np.uint16))
        clean.append(f"train/x16_{k}.png")
    import tifffile

    tifffile.imwrite(root / "train/t16_0.tif", natural(110, depth=4095, dtype=np.uint16))
    clean.append("train/t16_0.tif")
    # Blank: black and near-constant, 8 and 16 bit; dark 8 and 16 bit; low information.
    write_png(root / "train/black8_a.png", np.zeros((96, 96), np.uint8))
    write_png(root / "test/black8_b.png", np.zeros((96, 96), np.uint8))
    rng = np.random.default_rng(7)
    write_png(root / "train/flat8.png", np.clip(128 + rng.normal(0, 0.5, (96, 96)), 0, 255).astype(np.uint8))
    write_png(root / "train/black16.png", np.zeros((96, 96), np.uint16))
    tifffile.imwrite(root / "train/flat16.tif", (2000 + rng.normal(0, 3, (96, 96))).astype(np.uint16))
    write_png(root / "train/dark8.png", (natural(200).astype(np.float32) * 0.15).astype(np.uint8))
    write_png(root / "train/dark16.png", (natural(201).astype(np.float32) * 1.2).astype(np.uint16))
    mask = np.zeros((96, 96), np.uint8)
    cv2.circle(mask, (40, 50), 25, 255, -1)
    write_png(root / "train/mask.png", mask)
    # Duplicates: the same pixels as PNG and NPY; a resized, JPEG re-compressed copy; a copy across splits.
    write_png(root / "train/dupA.png", natural(300))
    np.save(root / "train/dupA_copy.npy", natural(300))
    write_png(root / "train/nearB.png", natural(301, size=(120, 120)))
    small = cv2.resize(natural(301, size=(120, 120)), (84, 84), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    (root / "train/nearB_small.jpg").write_bytes(buf.tobytes())
    write_png(root / "train/leakC.png", natural(302))
    write_png(root / "test/leakC_again.png", natural(302))
    # Unreadable: zero bytes, truncated PNG, DICOM without pixel data.
    (root / "train/empty.png").write_bytes(b"")
    whole = cv2.imencode(".png", natural(400))[1].tobytes()
    (root / "train/truncated.png").write_bytes(whole[: len(whole) // 2])
    write_dicom(root / "ct/nopixels.dcm", None, series="9.9")
    # Geometry: a tiny image, a long strip, a colour photo among grey images.
    write_png(root / "train/tiny.png", natural(500, size=(12, 12)))
    write_png(root / "train/strip.png", natural(501, size=(60, 240)))
    colour = np.dstack([natural(502), natural(503), natural(504)])
    write_png(root / "train/colour.png", colour)
    # DICOM: a clean series, a series with a missing slice, one with uneven spacing, and header problems.
    for k in range(5):
        write_dicom(root / f"ct/s1_{k}.dcm", ct_slice(k), z=2.5 * k, instance=k + 1, series="1.1")
        clean.append(f"ct/s1_{k}.dcm")
    for k, z in enumerate([0.0, 2.5, 5.0, 10.0, 12.5]):
        write_dicom(root / f"ct/s2_{k}.dcm", ct_slice(10 + k), z=z, instance=k + 1, series="1.2")
    for k, z in enumerate([0.0, 2.5, 5.0, 6.1, 8.6]):
        write_dicom(root / f"ct/s3_{k}.dcm", ct_slice(20 + k), z=z, instance=k + 1, series="1.3")
    wrapped = np.mod(np.round(ct_slice(30)), 4096)  # HU kept modulo 4096, intercept 0: the 12-bit defect
    write_dicom(
        root / "ct/defect12.dcm", None, stored=wrapped, series="2.1", bits_stored=12, signed=False, intercept=0.0
    )
    cr = natural(31, depth=4095, dtype=np.uint16)
    write_dicom(
        root / "ct/mono1.dcm",
        None,
        stored=cr,
        series="2.2",
        modality="CR",
        bits_stored=12,
        signed=False,
        intercept=0.0,
        photometric="MONOCHROME1",
        window=("2048", "4096"),
    )
    write_dicom(root / "ct/nowindow.dcm", ct_slice(32), series="2.3", window=None)
    write_dicom(root / "ct/badwindow.dcm", ct_slice(33), series="2.4", window=("40", "-5"))
    too_big = np.round(ct_slice(34) + 1024) + 3000  # values above 4095 with BitsStored 12
    write_dicom(root / "ct/bits.dcm", None, stored=too_big, series="2.5", bits_stored=12, signed=False)
    write_dicom(root / "ct/air.dcm", np.random.default_rng(1).normal(-1000, 5, (64, 64)), series="2.6")
    write_dicom(root / "ct/padding.dcm", np.full((64, 64), -2048.0), series="2.7", intercept=-2048.0)
    # Label table: patient 7 in train and test, a missing file, a duplicate id, NaN and non-binary labels,
    # label conflicts on the exact copies and on the two black images; clean7 has no row.
    rows = []
    for k, rel in enumerate(clean[:6]):
        rows.append({"image": rel, "a": k % 2, "b": 0, "c": "0", "patient_id": f"p{k}"})
    rows[0]["a"] = np.nan
    rows[1].update(b=2, c="?")
    rows += [
        {"image": "train/dupA.png", "a": 1, "b": 0, "c": "0", "patient_id": "p20"},
        {"image": "train/dupA_copy.npy", "a": 0, "b": 0, "c": "0", "patient_id": "p21"},
        {"image": "train/black8_a.png", "a": 0, "b": 0, "c": "1", "patient_id": "p22"},
        {"image": "test/black8_b.png", "a": 1, "b": 0, "c": "0", "patient_id": "p23"},
        {"image": "train/ghost.png", "a": 0, "b": 0, "c": "0", "patient_id": "p24"},
        {"image": "train/nearB.png", "a": 0, "b": 0, "c": "0", "patient_id": "p25"},
        {"image": "train/nearB_small.jpg", "a": 0, "b": 0, "c": "0", "patient_id": "p26"},
        {"image": "train/leakC.png", "a": 0, "b": 1, "c": "0", "patient_id": "p27"},
        {"image": "test/leakC_again.png", "a": 0, "b": 1, "c": "0", "patient_id": "p28"},
        {"image": "train/clean3.png", "a": 1, "b": 1, "c": "0", "patient_id": "p3"},
        {"image": "test/clean6.png", "a": 0, "b": 0, "c": "0", "patient_id": "p3"},
        {"image": "train/empty.png", "a": 0, "b": 0, "c": "0", "patient_id": "p29"},
    ]
    table = root.parent / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return {"root": root, "table": table, "clean": clean}


def by_kind(report: A.AuditReport) -> dict[str, list[A.Finding]]:
    out: dict[str, list[A.Finding]] = {}
    for f in report.findings:
        out.setdefault(f.kind, []).append(f)
    return out


def files_of(findings: list[A.Finding]) -> set[str]:
    return {x for f in findings for x in f.files}


@pytest.fixture(scope="module")
def report(dataset: dict) -> A.AuditReport:
    return A.run_audit(dataset["root"], labels=dataset["table"], workers=0)


# ---------------------------------------------------------------------------------------------- findings


def test_intensity_findings(report: A.AuditReport) -> None:
    k = by_kind(report)
    assert files_of(k["blank"]) == {
        "train/black8_a.png",
        "test/black8_b.png",
        "train/flat8.png",
        "train/black16.png",
        "train/flat16.tif",
        "ct/air.dcm",
        "ct/padding.dcm",
    }
    assert files_of(k["dark"]) == {"train/dark8.png", "train/dark16.png"}
    assert files_of(k["low_information"]) == {"train/mask.png"}


def test_unreadable_listed_and_rest_audited(report: A.AuditReport) -> None:
    k = by_kind(report)
    assert files_of(k["unreadable"]) == {"train/empty.png", "train/truncated.png", "ct/nopixels.dcm"}
    details = {f.files[0]: f.detail for f in k["unreadable"]}
    assert "0 bytes" in details["train/empty.png"] or "empty" in details["train/empty.png"]
    assert "pixel data" in details["ct/nopixels.dcm"]
    assert sum(1 for r in report.records if r["ok"]) == len(report.files) - 3


def test_duplicates_grouped(report: A.AuditReport) -> None:
    k = by_kind(report)
    exact = {frozenset(f.files) for f in k["exact_duplicate"]}
    assert frozenset({"train/dupA.png", "train/dupA_copy.npy"}) in exact
    assert frozenset({"train/leakC.png", "test/leakC_again.png"}) in exact
    # Same pixel values whatever the container: the 16-bit black PNG joins the 8-bit ones.
    assert frozenset({"train/black8_a.png", "test/black8_b.png", "train/black16.png"}) in exact
    near = {frozenset(f.files) for f in k["near_duplicate"]}
    assert near == {frozenset({"train/nearB.png", "train/nearB_small.jpg"})}
    idx = {f: i for i, f in enumerate(report.files)}
    assert report.cluster[idx["train/nearB.png"]] == report.cluster[idx["train/nearB_small.jpg"]]
    assert report.exact_cluster[idx["train/nearB.png"]] != report.exact_cluster[idx["train/nearB_small.jpg"]]


def test_no_false_alarms_on_clean_images(report: A.AuditReport, dataset: dict) -> None:
    image_kinds = {
        "blank",
        "dark",
        "low_information",
        "exact_duplicate",
        "near_duplicate",
        "odd_size",
        "odd_aspect",
        "mixed_channels",
        "unreadable",
        "dicom_rescale_12bit",
        "dicom_monochrome1",
        "dicom_window",
        "dicom_bits_stored",
        "dicom_slice_spacing",
        "dicom_missing_slices",
    }
    flagged = files_of([f for f in report.findings if f.kind in image_kinds])
    assert flagged.isdisjoint(dataset["clean"]), flagged & set(dataset["clean"])


def test_label_conflicts(report: A.AuditReport) -> None:
    conflicts = {frozenset(f.files) for f in by_kind(report)["label_conflict"]}
    assert conflicts == {
        frozenset({"train/dupA.png", "train/dupA_copy.npy"}),
        frozenset({"train/black8_a.png", "test/black8_b.png"}),
    }


def test_leakage_patient_and_duplicates(report: A.AuditReport) -> None:
    leaks = by_kind(report)["leakage"]
    assert report.split_source == "folder names"
    patient = [f for f in leaks if "patient_id p3 " in f.detail]
    assert len(patient) == 1 and set(patient[0].files) == {"train/clean3.png", "test/clean6.png"}
    spans = {frozenset(f.files) for f in leaks if "duplicate cluster" in f.detail}
    assert spans == {
        frozenset({"train/leakC.png", "test/leakC_again.png"}),
        frozenset({"train/black8_a.png", "test/black8_b.png", "train/black16.png"}),
    }
    assert len(leaks) == 3


def test_label_table_problems(report: A.AuditReport, dataset: dict) -> None:
    k = by_kind(report)
    assert files_of(k["missing_file"]) == {"train/ghost.png"}
    unlabeled = files_of(k["unlabeled_file"])
    assert "test/clean7.png" in unlabeled and "train/clean3.png" not in unlabeled
    assert files_of(k["duplicate_id_conflict"]) == {"train/clean3.png"}  # listed twice, with other labels
    assert {(f.files[0], f.detail.split("'")[1]) for f in k["missing_label"]} == {("train/clean0.png", "a")}
    bad = {(f.files[0], f.detail.split("'")[1]) for f in k["non_binary_label"]}
    assert bad == {("train/clean1.png", "b"), ("train/clean1.png", "c")}
    # Prevalence and pos_weight against a plain count of the table.
    df = pd.read_csv(dataset["table"])
    stats = {s["label"]: s for s in report.label_stats}
    assert set(stats) == {"a", "b", "c"}
    for col in ("a", "b"):
        v = [x for x in df[col].tolist() if x in (0, 1)]
        pos, neg = v.count(1), v.count(0)
        assert (stats[col]["positives"], stats[col]["negatives"]) == (pos, neg)
        assert stats[col]["pos_weight"] == pytest.approx(neg / pos)
        assert stats[col]["prevalence"] == pytest.approx(pos / (pos + neg))
    assert stats["c"]["positives"] == 1 and stats["c"]["negatives"] == len(df) - 2


def test_dicom_header_findings(report: A.AuditReport) -> None:
    k = by_kind(report)
    assert files_of(k["dicom_rescale_12bit"]) == {"ct/defect12.dcm"}
    assert files_of(k["dicom_monochrome1"]) == {"ct/mono1.dcm"}
    assert files_of(k["dicom_window"]) == {"ct/nowindow.dcm", "ct/badwindow.dcm"}
    assert files_of(k["dicom_bits_stored"]) == {"ct/bits.dcm"}
    assert [len(f.files) for f in k["dicom_missing_slices"]] == [5]
    assert "1 slice(s) missing" in k["dicom_missing_slices"][0].detail
    assert files_of(k["dicom_missing_slices"]) == {f"ct/s2_{i}.dcm" for i in range(5)}
    assert files_of(k["dicom_slice_spacing"]) == {"ct/s3_2.dcm", "ct/s3_3.dcm"}  # 5.0 -> 6.1 mm
    assert files_of(k["dicom_mixed_modality"]) == {"ct/mono1.dcm"}


def test_geometry_findings(report: A.AuditReport) -> None:
    k = by_kind(report)
    assert "train/tiny.png" in files_of(k["odd_size"])
    assert files_of(k["odd_aspect"]) == {"train/strip.png"}
    assert files_of(k["mixed_channels"]) == {"train/colour.png"}


def test_split_column_and_fold_column(tmp_path: Path) -> None:
    for k in range(4):
        write_png(tmp_path / "img" / f"{k}.png", natural(600 + k))
    pd.DataFrame(
        {
            "image": [f"{k}.png" for k in range(4)],
            "y": [0, 1, 0, 1],
            "patient_id": ["a", "a", "b", "c"],
            "split": ["train", "test", "train", "train"],
            "fold": [0, 0, 1, 2],
        }
    ).to_csv(tmp_path / "t.csv", index=False)
    rep = A.run_audit(tmp_path / "img", labels=tmp_path / "t.csv", workers=0)
    leaks = by_kind(rep)["leakage"]
    assert [f.detail for f in leaks] == ["patient_id a is in 2 splits: test (1), train (1)"]
    pd.DataFrame(
        {
            "image": [f"{k}.png" for k in range(4)],
            "y": [0, 1, 0, 1],
            "patient_id": ["a", "b", "b", "c"],
            "fold": [0, 0, 1, 2],
        }
    ).to_csv(tmp_path / "f.csv", index=False)
    leaks = by_kind(A.run_audit(tmp_path / "img", labels=tmp_path / "f.csv", workers=0))["leakage"]
    assert [f.detail for f in leaks] == ["patient_id b is in 2 folds: 0 (1), 1 (1)"]


def test_pool_matches_in_process(dataset: dict, report: A.AuditReport) -> None:
    pooled = A.run_audit(dataset["root"], labels=dataset["table"], workers=2)
    key = [(f.kind, f.files, f.detail) for f in report.findings]
    assert [(f.kind, f.files, f.detail) for f in pooled.findings] == key
    assert np.array_equal(pooled.cluster, report.cluster)


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.uint16, np.bool_, np.float32, np.int16],
)
def test_level_stats_match_plain_numpy(dtype: type) -> None:
    from medkit.audit._scan import _level_stats

    rng = np.random.default_rng(3)
    if dtype is np.bool_:
        x = rng.random((37, 41)) < 0.3
    elif dtype is np.float32:
        x = rng.normal(5.0, 2.0, (37, 41)).astype(np.float32)
    elif dtype is np.int16:
        x = rng.integers(-1000, 1500, (37, 41)).astype(np.int16)
    else:
        x = rng.integers(3, 200 if dtype is np.uint8 else 4000, (37, 41)).astype(dtype)
    s = _level_stats(x)
    v = x.astype(np.float64).ravel()
    assert s["min"] == v.min() and s["max"] == v.max()  # exact whatever the binning
    if dtype in (np.uint8, np.uint16, np.bool_):  # exact histogram: statistics equal the plain ones
        assert s["p01"] == np.percentile(v, 1, method="inverted_cdf")
        assert s["p99"] == np.percentile(v, 99, method="inverted_cdf")
        assert s["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert s["std"] == pytest.approx(v.std(), rel=1e-12)
        assert s["mode_frac"] == np.unique(v, return_counts=True)[1].max() / v.size
    else:  # 4096 levels between min and max: within one level
        step = (v.max() - v.min()) / 4095
        assert abs(s["p99"] - np.percentile(v, 99, method="inverted_cdf")) <= step
        assert s["mean"] == pytest.approx(v.mean(), abs=step)
    # Entropy over 256 bins spanning the image's own range, by a plain loop over the values.
    span = v.max() - v.min()
    levels = np.floor((v - v.min()) / (span / 4095)) if dtype in (np.float32, np.int16) else v - v.min()
    top = levels.max() + 1
    bins = (levels * 256 // top).astype(int) if top > 256 else levels.astype(int)
    p = np.bincount(bins) / v.size
    p = p[p > 0]
    assert s["entropy"] == pytest.approx(-(p * np.log2(p)).sum(), abs=0.05 if dtype is np.float32 else 1e-9)


def test_summary_of_a_png_or_jpeg_equals_the_reader_path(tmp_path: Path) -> None:
    """The worker decodes PNG/JPEG itself; its summary must be the one of what `read_image` returns."""
    from medkit.audit._scan import summarize_array, summarize_file
    from medkit.io.readers import read_image

    g = natural(11, (40, 56))
    images = {
        "grey.png": g,
        "colour.png": np.dstack([g, 255 - g, g // 2]),
        "colour_alpha.png": np.dstack([g, 255 - g, g // 2, g]),
        "grey16.png": g.astype(np.uint16) * 16,
        "colour.jpg": np.dstack([g, 255 - g, g // 2]),
    }
    for name, img in images.items():
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / "tiff_inside.png").write_bytes(cv2.imencode(".tiff", g)[1].tobytes())
    (tmp_path / "cut.png").write_bytes((tmp_path / "grey.png").read_bytes()[:60])
    for name in [*images, "tiff_inside.png"]:
        rec = summarize_file(str(tmp_path / name))
        assert rec["ok"], name
        want = summarize_array(read_image(tmp_path / name))
        assert {k: rec[k] for k in want} == want, name
    assert summarize_file(str(tmp_path / "colour.png"))["eff_channels"] == 3
    cut = summarize_file(str(tmp_path / "cut.png"))
    assert not cut["ok"] and "cut.png" in cut["error"] and "truncated" in cut["error"]


# ---------------------------------------------------------------------------------------------- hashing


def test_phash_survives_resize_and_jpeg_but_separates_images() -> None:
    for seed in range(10):
        img = natural(700 + seed, size=(128, 128))
        small = cv2.resize(img, (90, 90), interpolation=cv2.INTER_AREA)
        jpg = cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 0)
        assert hamming(phash64(img), phash64(jpg)) <= 6
        assert hamming(phash64(img), phash64(natural(800 + seed, size=(128, 128)))) > 10


def test_near_pairs_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, size=1500, dtype=np.uint64)
    flips = rng.integers(0, 64, size=(300, 5))
    for k in range(300):  # planted neighbours at distance 1..5, plus some identical hashes
        v = int(h[k])
        for b in flips[k, : k % 6]:
            v ^= 1 << int(b)
        h[1000 + k] = v
    h[1400:1410] = h[0]
    for t in (0, 3, 5, 8):
        i, j, d = near_pairs(h, t)
        all_i, all_j = np.triu_indices(len(h), 1)
        dist = hamming(h[all_i], h[all_j])
        expect = set(zip(all_i[dist <= t].tolist(), all_j[dist <= t].tolist(), strict=True))
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == expect
        assert len(i) == len(expect)
        assert np.array_equal(d, hamming(h[i], h[j]))


def test_near_pairs_star_mode_gives_same_clusters() -> None:
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    h[100:180] = h[0]  # a big run of identical hashes (blank images)
    h[200:260] = h[1] ^ np.uint64(0b101)  # a big run near another hash
    full = clusters(len(h), *near_pairs(h, 4)[:2])
    i, j, _ = near_pairs(h, 4, max_group=10)
    assert len(i) < 400  # 80 identical hashes are 79 edges, not 3160
    assert np.array_equal(clusters(len(h), i, j), full)


def test_clusters_are_connected_components() -> None:
    labels = clusters(7, [0, 1, 4], [1, 2, 5])
    assert labels.tolist() == [0, 0, 0, 1, 2, 2, 3]


# ---------------------------------------------------------------------------------------------- CLI


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_cli_outputs_and_exit_codes(dataset: dict, tmp_path: Path) -> None:
    before = _tree_digest(dataset["root"].parent)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(
        app, ["audit", str(dataset["root"]), "--labels", str(dataset["table"]), "--out", str(out), "--workers", "0"]
    )
    assert res.exit_code == 1, res.output
    assert "label_conflict" in res.stdout and "leakage" in res.stdout and "pos_weight" in res.stdout
    assert "audit:" in res.stderr and "wrote" in res.stderr
    assert _tree_digest(dataset["root"].parent) == before  # inputs untouched

    findings = pd.read_csv(out / "findings.csv")
    assert list(findings.columns) == ["kind", "severity", "files", "detail"]
    assert set(findings.kind) >= {
        "unreadable",
        "blank",
        "dark",
        "exact_duplicate",
        "near_duplicate",
        "label_conflict",
        "leakage",
        "missing_file",
        "dicom_rescale_12bit",
        "odd_aspect",
    }
    dup = pd.read_csv(out / "duplicates.csv")
    assert list(dup.columns[:2]) == ["image", "cluster"]
    c = dict(zip(dup.image, dup.cluster, strict=True))
    assert c["train/dupA.png"] == c["train/dupA_copy.npy"] and c["train/nearB.png"] == c["train/nearB_small.jpg"]
    assert c["train/dupA.png"] != c["train/nearB.png"]
    assert len(dup) == len(set(dup.image))

    clean = pd.read_csv(out / "labels_clean.csv", keep_default_na=False)
    removed = pd.read_csv(out / "labels_removed.csv")
    assert len(clean) + len(removed) == len(dataset["table"].read_text().splitlines()) - 1  # no row lost
    kept = set(clean.image)
    assert not kept & {"train/black8_a.png", "test/black8_b.png", "train/empty.png"}
    assert len(kept & {"train/dupA.png", "train/dupA_copy.npy"}) == 1
    assert {"train/clean0.png", "train/nearB.png"} <= kept
    # A row without its file stays, saying why; rows naming one image with two labels go, for a person to settle.
    assert clean.set_index("image")["audit_issue"]["train/ghost.png"] == "missing_file"
    assert (clean.image == "train/clean3.png").sum() == 0
    assert set(removed[removed.image == "train/clean3.png"]["audit_reason"]) == {"duplicate_id_conflict"}

    for kind in ("blank", "exact_duplicate", "near_duplicate", "dark", "unreadable"):
        sheet = cv2.imread(str(out / f"sheet_{kind}.png"), cv2.IMREAD_UNCHANGED)
        assert sheet is not None and sheet.shape[0] >= 128 and sheet.shape[1] >= 128 * 8
    assert not (out / "sheet_missing_file.png").exists()

    res = runner.invoke(
        app,
        ["audit", str(dataset["root"]), "--labels", str(dataset["table"]), "--json", "-j", "0", "--fail-on", "none"],
    )
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert (
        data["failed"] is False
        and data["counts"]["label_conflict"] == 2
        and data["files"] == len(A.list_images(dataset["root"]))
    )
    res = runner.invoke(app, ["audit", str(dataset["root"]), "-j", "0", "--fail-on", "odd_aspect", "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["fail_on"] == ["odd_aspect"]


def test_cli_clean_folder_exits_zero(tmp_path: Path) -> None:
    for k in range(6):
        write_png(tmp_path / "d" / f"{k}.png", natural(900 + k))
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "d"), "-j", "0", "--json", "--fail-on", "all"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"] == {}


def test_cli_bad_usage(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["audit", str(tmp_path), "--fail-on", "leakge"])
    assert res.exit_code == 2 and "did you mean 'leakage'" in res.stderr
    res = runner.invoke(app, ["audit", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.stderr


def test_image_column_that_names_the_files_is_chosen(tmp_path: Path) -> None:
    # NIH-style table: a bare file name (ambiguous: two folders hold x.png) and a relative path.
    write_png(tmp_path / "d" / "a" / "x.png", natural(950))
    write_png(tmp_path / "d" / "b" / "x.png", natural(951))
    pd.DataFrame({"image": ["x.png"], "path": ["b/x.png"], "y": [1]}).to_csv(tmp_path / "t.csv", index=False)
    rep = A.run_audit(tmp_path / "d", labels=tmp_path / "t.csv", workers=0)
    assert rep.image_col == "path" and rep.row_file == ["b/x.png"]
    assert files_of(by_kind(rep)["unlabeled_file"]) == {"a/x.png"}


def write_medmnist(path: Path) -> Path:
    """A MedMNIST-layout archive: 8/3/3 distinct 28 px images with planted problems.

    train/0 is black; test/0 is a copy of train/1 (leakage across splits); train/3 is a copy of train/2 with the
    other label (a label conflict); val/2 is train/4 one grey level brighter (a near duplicate across splits).
    """
    imgs = {  # equalised: at 28 px a random picture can come out dark, and only train/0 may be
        sp: np.stack([cv2.equalizeHist(natural(700 + 20 * k + i, (28, 28))) for i in range(n)])
        for k, (sp, n) in enumerate((("train", 8), ("val", 3), ("test", 3)))
    }
    labels = {sp: np.array([[i % 2] for i in range(len(v))], dtype=np.uint8) for sp, v in imgs.items()}
    imgs["train"][0] = 0
    imgs["test"][0] = imgs["train"][1]
    imgs["train"][3] = imgs["train"][2]
    labels["train"][2, 0], labels["train"][3, 0] = 0, 1
    labels["test"][0, 0] = labels["train"][1, 0]  # the leaked copy keeps its label: leakage, not a conflict
    imgs["val"][2] = np.clip(imgs["train"][4].astype(int) + 1, 0, 255).astype(np.uint8)
    return medmnist_npz(path, imgs, labels, compressed=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_medmnist_archive_is_audited_image_by_image(tmp_path: Path, workers: int) -> None:
    write_medmnist(tmp_path / "d" / "toy.npz")
    write_png(tmp_path / "d" / "extra.png", natural(990))
    np.savez(tmp_path / "d" / "single.npz", image=natural(991))  # not an archive of splits: one image
    rep = A.run_audit(tmp_path / "d", workers=workers)
    assert len(rep.files) == 8 + 3 + 3 + 2 and "toy.npz/train/0" in rep.files and "single.npz" in rep.files
    assert all(r["ok"] for r in rep.records)
    kinds = by_kind(rep)
    assert files_of(kinds["blank"]) == {"toy.npz/train/0"} and "dark" not in kinds
    exact = {frozenset(f.files) for f in kinds["exact_duplicate"]}
    assert exact == {
        frozenset({"toy.npz/test/0", "toy.npz/train/1"}),
        frozenset({"toy.npz/train/2", "toy.npz/train/3"}),
    }
    assert [set(f.files) for f in kinds["label_conflict"]] == [{"toy.npz/train/2", "toy.npz/train/3"}]
    assert rep.label_cols == ("label",)
    leaks = {frozenset(f.files) for f in kinds["leakage"]}
    assert leaks == {frozenset({"toy.npz/test/0", "toy.npz/train/1"}), frozenset({"toy.npz/train/4", "toy.npz/val/2"})}
    assert rep.split_source == "folder names"


def test_cli_audits_one_archive_file_with_sheets(tmp_path: Path) -> None:
    path = write_medmnist(tmp_path / "toy.npz")
    res = CliRunner().invoke(app, ["audit", str(path), "-j", "0", "--json", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output  # leakage and a label conflict are in the default --fail-on
    doc = json.loads(res.stdout)
    assert doc["files"] == 14 and doc["counts"]["leakage"] == 2 and doc["counts"]["label_conflict"] == 1
    sheet = cv2.imread(str(tmp_path / "out" / "sheet_leakage.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet is not None and sheet.std() > 10  # real thumbnails, not the crossed-out "unreadable" tile
    dup = pd.read_csv(tmp_path / "out" / "duplicates.csv")
    pair = dup.set_index("image").loc[["toy.npz/train/1", "toy.npz/test/0"], "exact_cluster"]
    assert pair.nunique() == 1


def test_cli_fail_on_default_is_the_library_default() -> None:
    import inspect

    from medkit.cli.audit import audit

    default = inspect.signature(audit).parameters["fail_on"].default
    assert A.parse_kinds(default) == A.DEFAULT_FAIL_ON

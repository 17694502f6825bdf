"""CT series from DICOM geometry and from tables: grouping, slice order, fallbacks, gaps, neighbour windows."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medkit.data.series import SeriesIndex, neighbour_rows, series_from_dicom, series_from_table
from medkit.data.table import TableSpec
from medkit.errors import DataError, UsageError


def _slice(
    path: Path,
    z: float,
    instance: int | None,
    series: str = "1.2.3.1",
    tilt_deg: float = 0.0,
    geometry: bool = True,
) -> Path:
    """A 4x4 CT slice at table position z; a tilted gantry tilts the image plane about x (the table still moves
    along z, so the slices are ``dz * cos(tilt)`` apart along their normal)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "P" + series[-1]
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    if instance is not None:
        ds.InstanceNumber = instance
    if geometry:
        t = np.deg2rad(tilt_deg)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t))]
        ds.ImagePositionPatient = [-100.0, -100.0, float(z)]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _names(index: SeriesIndex, truth: dict[str, int]) -> list[list[int]]:
    return [[truth[Path(index.paths[r]).name] for r in seq] for seq in index.sequences()]


def test_dicom_order_shuffled_names_tilt_reversed_instances(tmp_path: Path) -> None:
    """Geometry decides even when file names are random and InstanceNumbers run backwards; two series apart."""
    rng = random.Random(0)
    truth: dict[str, int] = {}
    files = []
    for s, tilt in (("1.2.3.1", 0.0), ("1.2.3.2", 20.0)):
        for k in range(7):
            name = f"{rng.getrandbits(40):010x}.dcm"
            truth[name] = k
            files.append(_slice(tmp_path / name, z=2.5 * k, instance=7 - k, series=s, tilt_deg=tilt))
    rng.shuffle(files)
    index = series_from_dicom(files)
    assert index.method == "position"
    assert index.methods == {"1.2.3.1": "position", "1.2.3.2": "position"}
    assert _names(index, truth) == [list(range(7)), list(range(7))]
    assert index.findings == []  # the tilted series keeps a regular spacing along its normal
    tilted = index.series == "1.2.3.2"
    spacing = np.diff(np.sort(index.order[tilted]))
    np.testing.assert_allclose(spacing, 2.5 * np.cos(np.deg2rad(20.0)), rtol=1e-6)
    assert set(index.patient.tolist()) == {"P1", "P2"} and set(index.study.tolist()) == {"1.2.3"}


def test_dicom_gap_and_duplicate_are_reported(tmp_path: Path) -> None:
    zs = [0.0, 2.5, 5.0, 10.0, 12.5, 12.5]  # 7.5 missing, 12.5 twice
    files = [_slice(tmp_path / f"s{i}.dcm", z, instance=i + 1) for i, z in enumerate(zs)]
    index = series_from_dicom(files[::-1])
    kinds = sorted(f.kind for f in index.findings)
    assert kinds == ["duplicate", "gap"]
    assert "1 missing" in index.gaps[0].detail
    assert index.mixed_spacing == []


def test_dicom_mixed_spacing(tmp_path: Path) -> None:
    zs = [0.0, 2.5, 5.0, 7.5, 10.5, 13.5]  # 2.5 mm, then 3 mm
    files = [_slice(tmp_path / f"s{i}.dcm", z, instance=i + 1) for i, z in enumerate(zs)]
    assert [f.kind for f in series_from_dicom(files).findings] == ["mixed_spacing"]


def test_dicom_fallbacks_instance_then_file_name(tmp_path: Path) -> None:
    a = [_slice(tmp_path / "a" / f"x{9 - k}.dcm", 0.0, instance=k + 1, geometry=False) for k in range(5)]
    index = series_from_dicom(a[::-1])
    assert index.method == "instance"
    assert [Path(index.paths[r]).name for r in index.sequences()[0]] == [f"x{9 - k}.dcm" for k in range(5)]
    assert [f.kind for f in index.findings] == ["fallback"]
    # no geometry and no InstanceNumber: natural file-name order (img2 before img10)
    b = [
        _slice(tmp_path / "b" / f"img{k}.dcm", 0.0, instance=None, series="1.2.3.9", geometry=False) for k in (10, 2, 1)
    ]
    index = series_from_dicom(b)
    assert index.method == "filename"
    assert [Path(index.paths[r]).name for r in index.sequences()[0]] == ["img1.dcm", "img2.dcm", "img10.dcm"]


def test_series_from_table_and_missing_slice() -> None:
    df = pd.DataFrame(
        {"image": list("abcdefg"), "series_id": ["s1"] * 4 + ["s2"] * 3, "slice_index": [3, 0, 1, 2, 5, 1, 2]}
    )
    index = series_from_table(df, TableSpec("image", series="series_id", order="slice_index"))
    assert index.method == "table"
    assert [s.tolist() for s in index.sequences()] == [[1, 2, 3, 0], [5, 6, 4]]
    assert [(f.series, f.kind) for f in index.findings] == [("s2", "gap")]  # 3 and 4 missing in s2
    assert index.rank().tolist() == [3, 0, 1, 2, 2, 0, 1]


def test_series_from_table_errors() -> None:
    df = pd.DataFrame({"image": ["a", "b"], "series_id": ["s", "s"], "slice_index": [1, "x"]})
    with pytest.raises(DataError, match="slice_index"):
        series_from_table(df, TableSpec("image", series="series_id", order="slice_index"))
    with pytest.raises(DataError, match="no series column"):
        series_from_table(df, TableSpec("image"))


def test_neighbours_window_by_hand() -> None:
    # series a in rows 0,2,4 (order 0,1,2), series b in rows 1,3 (order 1,0)
    index = SeriesIndex(series=np.array(list("ababa")), order=np.array([0.0, 1, 1, 0, 2]), method="table")
    assert index.neighbours(3).tolist() == [[0, 0, 2], [3, 1, 1], [0, 2, 4], [3, 3, 1], [2, 4, 4]]
    assert index.neighbours(5)[2].tolist() == [0, 0, 2, 4, 4]
    assert index.neighbours(1).tolist() == [[0], [1], [2], [3], [4]]
    with pytest.raises(UsageError):
        neighbour_rows(index.sequences(), 5, 4)


def test_rsna_long_labels_read_as_one_row_per_image() -> None:
    from medkit.data.series import from_long_labels

    subtypes = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    long = pd.DataFrame(
        {"ID": [f"ID_{i}_{s}" for i in ("0a1", "0b2") for s in subtypes], "Label": [0, 1, 0, 0, 0, 1] + [0] * 6}
    )
    wide = from_long_labels(long, "stage_2_train.csv")
    assert wide["image"].tolist() == ["ID_0a1", "ID_0b2"]
    assert wide[subtypes].to_numpy().tolist() == [[0, 1, 0, 0, 0, 1], [0] * 6]
    table = pd.DataFrame({"image": ["a"], "any": [1]})
    assert from_long_labels(table) is table

"""DICOM: HU rescale, windows, MONOCHROME1, the 12-bit intercept defect, codecs, headers, the fast path, CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pydicom
import pytest
from _factories import write_dicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import DataError, UnknownNameError
from medkit.io import dicom as D
from medkit.io.readers import ImageReadError, read_image


def _window_ref(x: float, c: float, w: float) -> int:
    """Plain-Python reference of the documented window formula."""
    lo, hi = c - w / 2, c + w / 2
    v = min(max(x, lo), hi)
    return int(np.floor(255 * (v - lo) / w + 0.5))


# ---------------------------------------------------------------------------------------------- windows
def test_window_presets_are_the_standard_values():
    assert D.WINDOWS["brain"] == (40, 80)
    assert D.WINDOWS["subdural"] == (80, 200)
    assert D.WINDOWS["soft_tissue"] == (40, 380)
    assert D.WINDOWS["bone"] == (600, 2800)
    assert D.WINDOWS["lung"] == (-600, 1500)
    assert D.WINDOWS["mediastinum"] == (50, 350)
    assert D.WINDOWS["stroke"] == (40, 40)


def test_window_hand_computed_values():
    hu = np.array([-1024, 0, 20, 40, 60, 80, 1000], dtype=np.float32)
    # brain 40/80: 0..80 HU -> 0..255; 20 -> 63.75 -> 64, 40 -> 127.5 -> 128, 60 -> 191.25 -> 191
    assert D.window(hu, 40, 80).tolist() == [0, 0, 64, 128, 191, 255, 255]
    # subdural 80/200: -20..180; 0 HU -> 25.5 -> 26; 40 -> 76.5 -> 77
    assert D.window(hu, 80, 200).tolist() == [0, 26, 51, 77, 102, 128, 255]
    # soft tissue 40/380: -150..230; 0 HU -> 150*255/380 = 100.66 -> 101
    assert D.window(hu, 40, 380)[1] == 101
    assert D.window(hu, 40, 80).dtype == np.uint8


def test_window_matches_plain_loop_reference():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 3000, size=500).astype(np.float32)
    for name, (c, w) in D.WINDOWS.items():
        ref = [_window_ref(float(v), c, w) for v in hu]
        got = D.window(hu, c, w)
        assert np.abs(got.astype(int) - np.array(ref)).max() <= 1, name  # float32 vs float64 at .5 boundaries
        assert (got == np.array(ref)).mean() > 0.99, name


def test_window_rejects_zero_width():
    with pytest.raises(ValueError, match="width"):
        D.window(np.zeros(3), 40, 0)


def test_multi_window_stacks_channels():
    hu = np.array([[0, 40], [80, -1000]], dtype=np.float32)
    out = D.multi_window(hu, ["brain", "subdural", "soft_tissue"])
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], D.window(hu, 40, 80))
    assert np.array_equal(out[..., 1], D.window(hu, 80, 200))
    assert np.array_equal(out[..., 2], D.window(hu, 40, 380))


def test_parse_windows_accepts_literals_and_suggests():
    assert D.parse_windows("brain, 40/80 ,dicom") == ["brain", "40/80", "dicom"]
    assert D.resolve_window("-600/1500") == (-600.0, 1500.0)
    assert D.resolve_window([50, 350]) == (50.0, 350.0)
    with pytest.raises(UnknownNameError, match="did you mean 'subdural'"):
        D.parse_windows("brain,subdurral")


# ---------------------------------------------------------------------------------------------- HU
def test_ct_rescale_to_hu(tmp_path):
    stored = np.array([[0, 1024], [1064, 2024]], dtype=np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1, intercept=-1024)
    hu = read_image(path)
    assert hu.dtype == np.float32 and hu.shape == (2, 2)
    assert hu.tolist() == [[-1024, 0], [40, 1000]]


def test_ct_rescale_slope_and_signed(tmp_path):
    stored = np.array([[-2000, -1], [0, 500]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", stored, slope=0.5, intercept=10, bits_stored=16, signed=True)
    assert read_image(path).tolist() == [[-990, 9.5], [10, 260]]


def test_dicom_window_from_file_multivalued(tmp_path):
    stored = np.array([[1024, 1074]], dtype=np.uint16)  # 0 and 50 HU
    path = write_dicom(tmp_path / "w.dcm", stored, window=([50, 400], [100, 2000]))
    assert D.dicom_header(path)["WindowCenter"] == 50.0
    assert D.dicom_header(path)["WindowWidth"] == 100.0
    out = D.dicom_windows(path, ["dicom"])
    # 50/100: 0..100 HU; 0 HU -> 0, 50 HU -> 127.5 -> 128
    assert out[..., 0].tolist() == [[0, 128]]


def test_dicom_window_missing_tags_is_a_clear_error(tmp_path):
    path = write_dicom(tmp_path / "now.dcm", np.zeros((2, 2), np.uint16))
    with pytest.raises(DataError, match="no WindowCenter"):
        D.dicom_windows(path, ["dicom"])


def test_monochrome1_inverted(tmp_path):
    stored = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "cr.dcm", stored, slope=None, intercept=None, photometric="MONOCHROME1", modality="CR"
    )
    # 12-bit stored range 0..4095, no rescale: inverted value is 4095 - x
    assert read_image(path).tolist() == [[4095, 3995], [95, 0]]
    assert D.read_dicom(path, invert_monochrome1=False).tolist() == stored.tolist()
    # the window applies to the stored values, then the display inverts: 255 - window(x)
    out = D.dicom_windows(path, [(2048, 4096)])[..., 0]
    expected = 255 - D.window(stored.astype(np.float32), 2048, 4096)
    assert np.array_equal(out, expected)


def test_monochrome1_file_window_matches_viewer(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, size=(20, 20)).astype(np.uint16)
    path = write_dicom(
        tmp_path / "m1.dcm", stored, slope=None, intercept=None, photometric="MONOCHROME1", window=(1500, 1001)
    )
    ds = pydicom.dcmread(path)
    viewer = 255 - D.window(stored.astype(np.float32), 1500, 1001)  # window the stored values, then invert
    assert np.array_equal(D.dicom_windows(path, ["dicom"])[..., 0], viewer)
    # read_image gives inverted values; multi_window mirrors the file's window to match
    mirrored = D.multi_window(read_image(path), ["dicom"], ds)[..., 0]
    assert np.abs(mirrored.astype(int) - viewer).max() <= 1
    assert (mirrored == viewer).mean() > 0.99


def test_radiograph_without_rescale_keeps_stored_values(tmp_path):
    stored = np.array([[5, 30000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "dx.dcm", stored, slope=None, intercept=None, modality="DX", bits_stored=15)
    assert read_image(path).tolist() == [[5, 30000]]
    out = D.dicom_windows(path, ["minmax"])[..., 0]
    assert out.tolist() == [[0, 255]]


def test_intercept_defect_corrected(tmp_path):
    # HU kept modulo 4096 with intercept 0: -1000 HU is stored as 3096, -1 HU as 4095.
    hu_true = np.array([[-1000, -1], [0, 40]], dtype=np.float32)
    stored = np.mod(hu_true.astype(np.int64), 4096).astype(np.uint16)
    assert stored.tolist() == [[3096, 4095], [0, 40]]
    path = write_dicom(tmp_path / "bad.dcm", stored, slope=1, intercept=0, bits_stored=12)
    ds = pydicom.dcmread(path)
    assert D.has_intercept_defect(ds)
    assert read_image(path).tolist() == hu_true.tolist()
    assert D.read_dicom(path, fix_intercept=False).tolist() == [[3096, 4095], [0, 40]]
    # the fast path folds the same correction into its table
    assert np.array_equal(D.dicom_windows(path, ["brain"])[..., 0], D.window(hu_true, 40, 80))
    # an MR with the same bit layout is not a CT: its values are left alone
    mr = write_dicom(tmp_path / "mr.dcm", stored, slope=1, intercept=0, bits_stored=12, modality="MR")
    assert not D.has_intercept_defect(pydicom.dcmread(mr))
    assert read_image(mr).tolist() == [[3096, 4095], [0, 40]]
    # no RescaleIntercept at all: nothing to correct
    bare = write_dicom(tmp_path / "bare.dcm", stored, slope=None, intercept=None, bits_stored=12)
    assert not D.has_intercept_defect(pydicom.dcmread(bare))
    assert read_image(bare).tolist() == [[3096, 4095], [0, 40]]
    # a healthy file (intercept -1024) is left alone
    ok = write_dicom(tmp_path / "ok.dcm", stored, slope=1, intercept=-1024)
    assert not D.has_intercept_defect(pydicom.dcmread(ok))
    assert read_image(ok)[0, 0] == 3096 - 1024


@pytest.mark.parametrize(
    "kw",
    [
        dict(bits_stored=12, signed=False, slope=1, intercept=-1024),
        dict(bits_stored=16, signed=True, slope=1, intercept=0),
        dict(bits_stored=16, signed=False, slope=0.25, intercept=-1000.5),
        dict(bits_stored=12, signed=False, slope=1, intercept=0),  # the intercept defect
    ],
)
def test_fast_path_equals_float_path(tmp_path, kw):
    rng = np.random.default_rng(1)
    if kw["signed"]:
        stored = rng.integers(-2048, 3000, size=(16, 16)).astype(np.int16)
    else:
        stored = rng.integers(0, 1 << kw["bits_stored"], size=(16, 16)).astype(np.uint16)
    path = write_dicom(tmp_path / "f.dcm", stored, **kw)
    names = ["brain", "subdural", "soft_tissue", "bone"]
    fast = D.dicom_windows(path, names)
    slow = D.multi_window(D.read_dicom(path), names)
    assert fast.shape == (16, 16, 4)
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_fast_path_any_number_of_windows(tmp_path, n):
    # 1, 2, 3-4 and 5+ windows use differently packed tables
    rng = np.random.default_rng(n)
    stored = rng.integers(0, 4096, size=(9, 7)).astype(np.uint16)
    path = write_dicom(tmp_path / "n.dcm", stored, window=(30, 350))
    names = ["brain", "dicom", "soft_tissue", "bone", "lung"][:n]
    fast = D.dicom_windows(path, names)
    assert fast.shape == (9, 7, n) and fast.flags.c_contiguous
    hu = stored.astype(np.float32) - 1024
    for k, (c, w) in enumerate([(40, 80), (30, 350), (40, 380), (600, 2800), (-600, 1500)][:n]):
        assert np.array_equal(fast[..., k], D.window(hu, c, w)), k


@pytest.mark.parametrize("vr", ["OW", "US"])
def test_voi_lut_sequence_for_dicom_window(tmp_path, vr):
    stored = np.array([[0, 10], [255, 300]], dtype=np.uint16)
    path = write_dicom(tmp_path / "voi.dcm", stored, slope=None, intercept=None, modality="CR")
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    table = [255 - i for i in range(256)]
    item.add_new(0x00283006, vr, np.array(table, "<u2").tobytes() if vr == "OW" else table)  # LUTData
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    # entries past the table clamp to its last value: LUTData[min(x, 255)] = 255 - min(x, 255)
    assert D.dicom_windows(path, ["dicom"])[..., 0].tolist() == [[255, 245], [0, 0]]
    assert D.multi_window(read_image(path), ["dicom"], ds=pydicom.dcmread(path))[..., 0].tolist() == [
        [255, 245],
        [0, 0],
    ]


def test_fast_path_ignores_bits_above_bits_stored(tmp_path):
    # Bits above BitsStored may carry overlays; they must not change the value.
    stored = np.array([[0x1000 | 1024, 1024]], dtype=np.uint16)
    path = write_dicom(tmp_path / "hb.dcm", stored, bits_stored=12, intercept=-1024)
    out = D.dicom_windows(path, ["brain"])[..., 0]
    assert out[0, 0] == out[0, 1] == D.window(np.float32([0.0]), 40, 80)[0]


def test_multiframe(tmp_path):
    stored = np.stack([np.full((3, 4), v, np.uint16) for v in (1024, 1064, 1104)])
    path = write_dicom(tmp_path / "mf.dcm", stored, frames=3)
    vol = read_image(path)
    assert vol.shape == (3, 3, 4)
    assert vol[:, 0, 0].tolist() == [0, 40, 80]
    assert read_image(path, frame=1).shape == (3, 4)
    assert D.dicom_windows(path, ["brain"]).shape == (3, 3, 4, 1)
    three = D.dicom_windows(path)  # the packed 3-window table on a stack
    assert three.shape == (3, 3, 4, 3)
    for k in range(3):
        assert np.array_equal(three[k], D.multi_window(vol[k], ["brain", "subdural", "soft_tissue"]))
    with pytest.raises(ImageReadError, match="frame 5"):
        read_image(path, frame=5)


# ---------------------------------------------------------------------------------------------- codecs
def test_rle_compressed_is_decoded(tmp_path):
    from pydicom.uid import RLELossless

    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    path = write_dicom(tmp_path / "plain.dcm", stored, intercept=-1024)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm")
    hu = read_image(tmp_path / "rle.dcm")
    assert np.array_equal(hu, stored.astype(np.float32) - 1024)
    assert np.array_equal(D.dicom_windows(tmp_path / "rle.dcm"), D.dicom_windows(path))


def test_jpegls_decoded_or_clear_install_hint(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    stored = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60).astype(np.uint16)
    path = write_dicom(tmp_path / "plain.dcm", stored, intercept=-1024)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([bytes(imagecodecs.jpegls_encode(stored))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.save_as(tmp_path / "jls.dcm")
    before = hashlib.sha256((tmp_path / "jls.dcm").read_bytes()).hexdigest()
    try:
        hu = read_image(tmp_path / "jls.dcm")
    except ImageReadError as exc:  # no JPEG-LS decoder installed
        assert "jls.dcm" in exc.message and "JPEG-LS" in exc.message
        assert 'pip install "medkit[dicom-codecs]"' in exc.hint
    else:
        assert np.array_equal(hu, stored.astype(np.float32) - 1024)
    assert hashlib.sha256((tmp_path / "jls.dcm").read_bytes()).hexdigest() == before


# ---------------------------------------------------------------------------------------------- bad files
def test_truncated_and_empty_dicom(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.uint16))
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 3000])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.dcm.*0 bytes"):
        read_image(tmp_path / "empty.dcm")
    # the header is still readable without the pixels
    assert D.dicom_header(tmp_path / "cut.dcm")["Rows"] == 64


def test_dicom_without_suffix_or_preamble(tmp_path):
    path = write_dicom(tmp_path / "noext", np.full((2, 2), 1064, np.uint16))
    assert read_image(path).tolist() == [[40, 40], [40, 40]]
    bare = write_dicom(tmp_path / "bare.dcm", np.full((2, 2), 1064, np.uint16), preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert read_image(bare)[0, 0] == 40


# ---------------------------------------------------------------------------------------------- headers
def test_dicom_header_fields(tmp_path):
    path = write_dicom(tmp_path / "h.dcm", np.zeros((3, 5), np.uint16), z=-12.5, instance=7, window=(40, 80))
    h = D.dicom_header(path)
    assert set(h) == set(D.HEADER_FIELDS)
    assert h["ImagePositionPatient"] == (-10.5, 20.25, -12.5)
    assert h["PixelSpacing"] == (0.5, 0.75)
    assert h["InstanceNumber"] == 7 and h["Rows"] == 3 and h["Columns"] == 5
    assert h["RescaleIntercept"] == -1024.0 and h["BitsStored"] == 12 and h["PixelRepresentation"] == 0
    assert h["Modality"] == "CT" and h["PatientID"] == "P1" and h["WindowCenter"] == 40.0
    assert h["TransferSyntaxUID"] == ExplicitVRLittleEndian


@pytest.mark.parametrize("workers", [0, 2])
def test_dicom_headers_table(tmp_path, monkeypatch, workers):
    import concurrent.futures

    used = []

    class Pool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *a, **kw):
            used.append(kw.get("max_workers"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Pool)
    n = 70  # the pool is used from 64 files
    paths = [
        write_dicom(tmp_path / f"{i:03d}.dcm", np.zeros((2, 2), np.uint16), z=float(i), instance=i, patient=f"P{i % 3}")
        for i in range(n)
    ]
    table = D.dicom_headers(paths, workers=workers)
    assert used == ([2] if workers else [])
    assert len(table) == n
    assert table["path"].tolist() == [str(p) for p in paths]
    assert table["ImagePositionPatient_z"].tolist() == [float(i) for i in range(n)]
    assert table["PixelSpacing_col"].tolist() == [0.75] * n
    assert table["PatientID"].tolist() == [f"P{i % 3}" for i in range(n)]
    assert "ImagePositionPatient" not in table.columns


def test_dicom_headers_errors(tmp_path):
    good = write_dicom(tmp_path / "g.dcm", np.zeros((2, 2), np.uint16))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"")
    with pytest.raises(ImageReadError, match="bad.dcm"):
        D.dicom_headers([good, bad], workers=0)
    table = D.dicom_headers([good, bad], workers=0, errors="record")
    assert table["error"].isna().tolist() == [True, False]
    assert table["Rows"].tolist()[0] == 2


# ---------------------------------------------------------------------------------------------- CLI
def test_inspect_cli_dicom_json(tmp_path):
    stored = np.array([[1024, 1064], [1104, 0]], dtype=np.uint16)  # 0, 40, 80, -1024 HU
    path = write_dicom(tmp_path / "ct.dcm", stored)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["reader"] == "dicom" and row["dtype"] == "float32" and row["shape"] == [2, 2]
    assert row["min"] == -1024 and row["max"] == 80
    assert row["windows"]["brain"] == [0, 255]
    assert row["windows"]["subdural"] == [0, _window_ref(80, 80, 200)]
    assert row["header"]["Modality"] == "CT"


def test_inspect_cli_window_option_and_table(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", np.array([[1024, 1064]], dtype=np.uint16))
    result = CliRunner().invoke(app, ["inspect", str(path), "--window", "bone,0/100"])
    assert result.exit_code == 0, result.stderr
    assert "bone=[" in result.stdout and "0/100=[" in result.stdout
    assert "DICOM header" in result.stdout
    # the file has no window of its own: 'dicom' is skipped with a note, the file still counts as read
    own = CliRunner().invoke(app, ["inspect", str(path), "--window", "dicom,brain", "--json"])
    assert own.exit_code == 0, own.stderr
    (row,) = json.loads(own.stdout)
    assert list(row["windows"]) == ["brain"] and "'dicom' window skipped" in row["note"]
    bad = CliRunner().invoke(app, ["inspect", str(path), "--window", "brian"])
    assert bad.exit_code == 2
    assert "did you mean 'brain'" in bad.stderr


def test_inspect_cli_unreadable_exit_1(tmp_path):
    good = write_dicom(tmp_path / "ok.dcm", np.zeros((2, 2), np.uint16))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good.read_bytes()[:200])
    result = CliRunner().invoke(app, ["inspect", str(good), str(cut), "--json"])
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert "error" not in rows[0]
    assert "cut.dcm" in rows[1]["error"]

"""medkit.io.inspect: `describe` as a library call (the `medkit inspect` CLI only prints its results)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import tifffile
from _factories import write_dicom
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.io.inspect import CT_WINDOWS, ArrayInfo, FileInfo, SplitInfo, Unreadable, describe, describe_files


def test_describe_png(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), (np.arange(6, dtype=np.uint16).reshape(2, 3) * 10000).astype(np.uint16))
    info = describe(path)
    assert info == FileInfo(file=str(path), reader="png", shape=(2, 3), dtype="uint16", min=0, max=50000)
    assert info.to_dict() == {"file": str(path), "reader": "png", "shape": [2, 3], "dtype": "uint16", "min": 0,
                              "max": 50000}  # fmt: skip


def test_describe_rgb_grey_content(tmp_path):
    grey = np.dstack([np.arange(4, dtype=np.uint8).reshape(2, 2)] * 3)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    cv2.imwrite(str(tmp_path / "c.png"), grey + np.array([0, 1, 0], np.uint8))
    assert describe(tmp_path / "g.png").gray_in_rgb is True
    assert describe(tmp_path / "c.png").gray_in_rgb is False


def test_describe_archives_and_tiff_pages(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.full((4, 28, 28), 7, np.uint8), train_labels=np.array([0, 1, 1, 0]))
    np.savez(tmp_path / "two.npz", image=np.zeros((3, 4), np.uint8), mask=np.zeros((3, 4), bool))
    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:
        tw.write(np.zeros((4, 5), np.uint8))
        tw.write(np.zeros((2, 3), np.uint8))
    mm = describe(tmp_path / "m.npz")
    assert mm.medmnist == {"train": SplitInfo(images=(4, 28, 28), labels=(4, 1), classes=2)}
    assert (mm.shape, mm.dtype, mm.min, mm.max) == ((4, 28, 28), "uint8", 7, 7)
    two = describe(tmp_path / "two.npz")
    assert two.arrays == {"image": ArrayInfo((3, 4), "uint8"), "mask": ArrayInfo((3, 4), "bool")}
    assert two.shape is None and two.to_dict()["arrays"]["mask"] == {"shape": [3, 4], "dtype": "bool"}
    tif = describe(tmp_path / "p.tif")
    assert tif.pages == [ArrayInfo((4, 5), "uint8"), ArrayInfo((2, 3), "uint8")] and tif.shape == (4, 5)


def test_describe_dicom_windows(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", np.array([[1024, 1064], [1104, 0]], dtype=np.uint16))  # 0, 40, 80, -1024
    info = describe(ct)
    assert (info.min, info.max, info.dtype) == (-1024, 80, "float32")
    assert tuple(info.windows) == CT_WINDOWS and info.windows["brain"] == (0, 255)
    assert info.header["Modality"] == "CT" and info.note is None
    own = describe(ct, ["dicom", "brain"])  # no window in the file: 'dicom' is skipped with a note
    assert list(own.windows) == ["brain"] and "'dicom' window skipped" in own.note
    mr = write_dicom(tmp_path / "mr.dcm", np.array([[10, 500]], np.uint16), modality="MR", window=(300, 600))
    assert list(describe(mr).windows) == ["dicom"]


def test_describe_files_keeps_going_past_unreadable(tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((2, 2), np.uint8))
    (tmp_path / "empty.png").write_bytes(b"")
    got = list(describe_files([tmp_path / "empty.png", tmp_path / "missing.png", tmp_path / "ok.png"]))
    assert isinstance(got[0], Unreadable) and "empty.png: empty file" in got[0].error and got[0].hint
    assert isinstance(got[1], Unreadable) and "missing.png: no such file" in got[1].error
    assert isinstance(got[2], FileInfo) and got[2].reader == "png"
    assert set(got[0].to_dict()) == {"file", "error", "hint"}


def test_cli_json_is_the_library_result(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", np.array([[1024, 1064]], dtype=np.uint16))
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated")
    files = [ct, tmp_path / "cut.npz"]
    result = CliRunner().invoke(app, ["inspect", *map(str, files), "--json"])
    assert result.exit_code == 1
    expected = json.loads(json.dumps([r.to_dict() for r in describe_files(files)]))
    assert json.loads(result.stdout) == expected

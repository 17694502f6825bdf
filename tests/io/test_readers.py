"""Image readers: PNG/JPEG/TIFF/NPY/NPZ layouts and dtypes, detection by suffix and content, bad files, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from _factories import write_dicom, write_medmnist
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import DataError, UnknownNameError, UsageError
from medkit.io.readers import ImageReadError, detect_reader, load_medmnist, read_image, tiff_pages
from medkit.registries import READERS


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- registry
def test_registry_entries_carry_suffixes_and_magic():
    assert {"png", "jpeg", "tiff", "npy", "npz", "dicom"} <= set(READERS.names())
    for name in READERS.names():
        flags = READERS.get(name).flags
        assert flags["suffixes"] and all(s.startswith(".") for s in flags["suffixes"]), name
        assert flags["magic"], name
    assert ".svs" in READERS.get("tiff").flags["suffixes"]
    assert (128, b"DICM") in READERS.get("dicom").flags["magic"]


def test_unknown_reader_name_suggests(tmp_path):
    path = _png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(UnknownNameError, match="did you mean 'png'"):
        read_image(path, reader="pgn")


# ---------------------------------------------------------------------------------------------- PNG / JPEG
def test_png_8bit_gray(tmp_path):
    img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(_png(tmp_path / "g.png", img))
    assert out.dtype == np.uint8 and out.shape == (3, 4)
    assert np.array_equal(out, img)


def test_png_16bit_gray_keeps_dtype(tmp_path):
    img = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    out = read_image(_png(tmp_path / "g16.png", img))
    assert out.dtype == np.uint16
    assert np.array_equal(out, img)
    assert out.max() == 55000


def test_png_colour_is_rgb(tmp_path):
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    bgr[..., 0] = 10
    out = read_image(_png(tmp_path / "c.png", bgr))
    assert out.shape == (2, 3, 3)
    assert (out[..., 0] == 200).all() and (out[..., 2] == 10).all()


def test_png_16bit_rgba(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint16)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 1000, 60000, 65535
    out = read_image(_png(tmp_path / "c16.png", bgra))
    assert out.dtype == np.uint16 and out.shape == (2, 2, 4)
    assert out[0, 0].tolist() == [60000, 0, 1000, 65535]


def test_jpeg_gray_and_colour(tmp_path):
    gray = np.full((16, 16), 120, np.uint8)
    assert cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 120) <= 2
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 250  # red
    assert cv2.imwrite(str(tmp_path / "c.jpeg"), bgr)
    rgb = read_image(tmp_path / "c.jpeg")
    assert rgb.shape == (16, 16, 3)
    assert rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50


# ---------------------------------------------------------------------------------------------- TIFF
def test_tiff_16bit(tmp_path):
    img = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.uint16 and np.array_equal(out, img)


def test_tiff_multipage_stack_and_page(tmp_path):
    pages = np.stack([np.full((4, 5), v, np.uint16) for v in (1, 2, 3)])
    with tifffile.TiffWriter(tmp_path / "m.tiff") as tw:
        for p in pages:
            tw.write(p)
    out = read_image(tmp_path / "m.tiff")
    assert out.shape == (3, 4, 5) and np.array_equal(out, pages)
    assert read_image(tmp_path / "m.tiff", page=2).tolist() == pages[2].tolist()
    assert [s for s, _ in tiff_pages(tmp_path / "m.tiff")] == [(4, 5)] * 3
    with pytest.raises(ImageReadError, match="page 7"):
        read_image(tmp_path / "m.tiff", page=7)


def test_tiff_rgb_planar_is_channels_last(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 77
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    out = read_image(tmp_path / "p.tif")
    assert out.shape == (6, 7, 3) and (out[..., 1] == 77).all() and (out[..., 0] == 0).all()


def test_pixel_limit_refuses_big_slide_level(tmp_path):
    big = np.zeros((300, 400, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "slide.svs") as tw:
        tw.write(big, tile=(64, 64))
        tw.write(big[::4, ::4])
    with pytest.raises(ImageReadError, match="slide.svs") as info:
        read_image(tmp_path / "slide.svs", max_pixels=50_000)
    assert "medkit tile" in info.value.hint
    assert read_image(tmp_path / "slide.svs", page=1, max_pixels=50_000).shape == (75, 100, 3)
    # the PNG size is checked from its header, before decoding
    png = _png(tmp_path / "big.png", np.zeros((300, 400), np.uint8))
    with pytest.raises(ImageReadError, match="120,000"):
        read_image(png, max_pixels=50_000)
    # None lifts the limit
    assert read_image(tmp_path / "slide.svs", max_pixels=None).shape == (300, 400, 3)


def test_unknown_reader_option_is_a_usage_error(tmp_path):
    png = _png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(UsageError, match="reader 'png' does not take"):
        read_image(png, frame=3)


# ---------------------------------------------------------------------------------------------- numpy
def test_npy_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    np.save(tmp_path / "a.npy", arr)
    out = read_image(tmp_path / "a.npy")
    assert out.dtype == np.float32 and np.array_equal(out, arr)


def test_npy_refuses_pickles(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="o.npy"):
        read_image(tmp_path / "o.npy")


def _medmnist(path: Path, n: dict[str, int], labels_k: int = 1, rgb: bool = False) -> dict:
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for split, count in n.items():
        shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
        images[split] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels[split] = rng.integers(0, 2, (count, labels_k)).astype(np.uint8)
    write_medmnist(path, images, labels, compressed=True)
    data = {**{f"{s}_images": v for s, v in images.items()}, **{f"{s}_labels": v for s, v in labels.items()}}
    return data


def test_load_medmnist(tmp_path):
    data = _medmnist(tmp_path / "m.npz", {"train": 10, "val": 3, "test": 4}, labels_k=1)
    out = load_medmnist(tmp_path / "m.npz")
    assert list(out) == ["train", "val", "test"]
    x, y = out["val"]
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28) and y.shape == (3, 1)
    assert np.array_equal(x, data["val_images"]) and np.array_equal(y, data["val_labels"])
    multi = _medmnist(tmp_path / "ml.npz", {"train": 5}, labels_k=14, rgb=True)
    x, y = load_medmnist(tmp_path / "ml.npz")["train"]
    assert x.shape == (5, 28, 28, 3) and y.shape == (5, 14)
    assert np.array_equal(y, multi["train_labels"])


def test_load_medmnist_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((3, 2, 2), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(ImageReadError, match="3 images but train_labels has 2"):
        load_medmnist(tmp_path / "bad.npz")
    np.savez(tmp_path / "half.npz", train_images=np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(ImageReadError, match="has train_images but not train_labels"):
        load_medmnist(tmp_path / "half.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ImageReadError, match="not a MedMNIST"):
        load_medmnist(tmp_path / "other.npz")


def test_npz_read_image_key_and_index(tmp_path):
    data = _medmnist(tmp_path / "m.npz", {"train": 4, "test": 2})
    with pytest.raises(ImageReadError, match="several arrays") as info:
        read_image(tmp_path / "m.npz")
    assert "load_medmnist" in info.value.hint
    one = read_image(tmp_path / "m.npz", key="test_images", index=1)
    assert one.shape == (28, 28) and np.array_equal(one, data["test_images"][1])
    np.savez(tmp_path / "single.npz", np.ones((2, 3), np.uint16))
    assert read_image(tmp_path / "single.npz").tolist() == [[1, 1, 1], [1, 1, 1]]


# ---------------------------------------------------------------------------------------------- detection
def _dicom_bytes(tmp_path: Path) -> bytes:
    path = write_dicom(tmp_path / "tmp.dcm", np.full((2, 2), 1024, np.uint16), pixel_spacing=None)
    return path.read_bytes()


def test_detection_by_content_without_suffix(tmp_path):
    _png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((2, 2), np.uint16))
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.int16))
    np.savez(tmp_path / "x.npz", np.zeros((2, 2)))
    sources = {"png": "x.png", "jpeg": "x.jpg", "tiff": "x.tif", "npy": "x.npy", "npz": "x.npz"}
    for name, src in sources.items():
        blob = tmp_path / f"blob_{name}"
        blob.write_bytes((tmp_path / src).read_bytes())
        assert detect_reader(blob) == name
        assert read_image(blob).shape[:2] in ((2, 2), (8, 8))
    blob = tmp_path / "IM000001"
    blob.write_bytes(_dicom_bytes(tmp_path))
    assert detect_reader(blob) == "dicom"
    assert read_image(blob).tolist() == [[0, 0], [0, 0]]


def test_unsupported_content(tmp_path):
    (tmp_path / "notes").write_text("hello, not an image")
    with pytest.raises(ImageReadError, match="notes: unsupported image format") as info:
        read_image(tmp_path / "notes")
    assert "reader=" in info.value.hint
    assert isinstance(info.value, DataError)


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.tif", "a.npy", "a.npz", "a.dcm", "noext"])
def test_zero_byte_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ImageReadError, match=f"{name}: empty file"):
        read_image(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_truncated_files_named_and_untouched(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    _png(tmp_path / "full.png", img)
    tifffile.imwrite(tmp_path / "full.tif", img.astype(np.uint16))
    np.save(tmp_path / "full.npy", img)
    cv2.imwrite(str(tmp_path / "full.jpg"), img)
    for src in ("full.png", "full.tif", "full.npy", "full.jpg"):
        data = (tmp_path / src).read_bytes()
        cut = tmp_path / src.replace("full", "cut")
        cut.write_bytes(data[: len(data) // 3])
        before = _sha(cut)
        with pytest.raises(ImageReadError, match=cut.name):
            read_image(cut)
        assert _sha(cut) == before


# ---------------------------------------------------------------------------------------------- CLI
def test_inspect_cli_png_json(tmp_path):
    img = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 10000).astype(np.uint16)
    path = _png(tmp_path / "a.png", img)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row == {"file": str(path), "reader": "png", "shape": [2, 3], "dtype": "uint16", "min": 0, "max": 50000}
    gray = _png(tmp_path / "g.png", np.dstack([img.astype(np.uint8)] * 3))
    colour = _png(tmp_path / "c.png", np.dstack([img.astype(np.uint8), img.astype(np.uint8) + 1, img.astype(np.uint8)]))
    rows = json.loads(CliRunner().invoke(app, ["inspect", str(gray), str(colour), "--json"]).stdout)
    assert [r["gray_in_rgb"] for r in rows] == [True, False]


def test_inspect_cli_table_medmnist_and_tiff(tmp_path):
    _medmnist(tmp_path / "m.npz", {"train": 4, "val": 2})
    with tifffile.TiffWriter(tmp_path / "m.tif") as tw:
        tw.write(np.zeros((4, 5), np.uint8))
        tw.write(np.zeros((2, 3), np.uint8))
    np.savez(tmp_path / "two.npz", image=np.zeros((3, 4), np.uint8), mask=np.zeros((3, 4), bool))
    files = [str(tmp_path / n) for n in ("m.npz", "m.tif", "two.npz")]
    result = CliRunner().invoke(app, ["inspect", *files])
    assert result.exit_code == 0, result.stderr
    assert "arrays: image 3x4 uint8, mask 3x4 bool" in result.stdout
    assert "MedMNIST" in result.stdout and "train 4x28x28" in result.stdout
    assert "pages: 4x5 uint8, 2x3 uint8" in result.stdout


def test_inspect_cli_reports_unreadable(tmp_path):
    good = _png(tmp_path / "good.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "empty.png").write_bytes(b"")
    np.savez(tmp_path / "full.npz", a=np.zeros(100), b=np.ones(100))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:300])
    files = [str(good), str(tmp_path / "empty.png"), str(tmp_path / "cut.npz")]
    result = CliRunner().invoke(app, ["inspect", *files])
    assert result.exit_code == 1
    assert "good.png" in result.stdout and "unreadable" in result.stdout
    assert "empty.png: empty file" in result.stderr
    assert "cut.npz: cannot read as .npz" in result.stderr

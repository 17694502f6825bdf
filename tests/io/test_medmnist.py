"""medkit.io.medmnist: the image side read from the npy header, and the re-exports of medkit.io.readers."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from medkit.io import medmnist, readers


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 28, 28), 28), ((3, 64, 64, 3), 64), ((2, 224, 224), 224), ((4, 28, 32), None), ((4, 28), None)],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_medmnist_image_size_from_header(tmp_path, shape, expected, compressed):
    path = tmp_path / "m.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, train_images=np.zeros(shape, np.uint8), train_labels=np.zeros((shape[0], 1), np.uint8))
    assert medmnist.medmnist_image_size(path) == expected


def test_medmnist_image_size_reads_a_version_2_header(tmp_path):
    path = tmp_path / "v2.npz"
    with zipfile.ZipFile(path, "w") as zf, zf.open("train_images.npy", "w") as fh:
        np.lib.format.write_array(fh, np.zeros((2, 128, 128), np.uint8), version=(2, 0))
    assert medmnist.medmnist_image_size(path) == 128


def test_medmnist_image_size_none_without_train_images(tmp_path):
    np.savez(tmp_path / "val.npz", val_images=np.zeros((2, 28, 28), np.uint8), val_labels=np.zeros((2, 1)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    assert medmnist.medmnist_image_size(tmp_path / "val.npz") is None
    assert medmnist.medmnist_image_size(tmp_path / "junk.npz") is None
    assert medmnist.medmnist_image_size(tmp_path / "missing.npz") is None


def test_medmnist_size_agrees_with_load(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, train_images=np.ones((3, 64, 64), np.uint8), train_labels=np.array([0, 1, 2]))
    data = medmnist.load_medmnist(path)
    assert data["train"][0].shape[1] == medmnist.medmnist_image_size(path) == 64
    assert data["train"][1].shape == (3, 1)


def test_readers_reexports_medmnist():
    assert readers.load_medmnist is medmnist.load_medmnist
    assert readers.medmnist_image_size is medmnist.medmnist_image_size

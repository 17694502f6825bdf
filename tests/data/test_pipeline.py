"""Preprocess, the sources, ImageDataset, batched augmentation, DICOM windows and masks.

The DataLoader, the batch order and the feeders over these datasets are tested in tests/engine/test_feed.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _factories import write_dicom

from medkit.data.loader import ImageDataset
from medkit.data.pipeline import ArraySource, FileSource, Preprocess, to_uint8
from medkit.errors import DataError, UsageError


def test_to_uint8_minmax_against_hand_computed_values() -> None:
    img = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    # (v - 1000) * 255 / 2000, rounded: 0, 63.75 -> 64, 127.5 -> 128 (round half to even), 255
    np.testing.assert_array_equal(to_uint8(img), [[0, 64], [128, 255]])
    assert to_uint8(np.full((3, 3), 42, dtype=np.uint16)).max() == 0  # constant image
    u8 = np.array([[3, 200]], dtype=np.uint8)
    assert to_uint8(u8) is u8


def test_to_uint8_percentile_clips_outliers() -> None:
    img = np.arange(1000, dtype=np.float32).reshape(20, 50)
    img[0, 0] = 1e6  # one hot pixel
    out = to_uint8(img, "percentile", (1.0, 99.0))
    lo, hi = np.percentile(img, [1.0, 99.0])
    expected = np.clip(np.rint((img - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    # min-max would squash everything to ~0 because of the hot pixel
    assert to_uint8(img).mean() < 1 < out.mean()


def test_preprocess_channels_resize_and_margin() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)
    pre = Preprocess(size=(10, 20), margin=3, channels=3)
    out = pre.from_array(gray)
    assert out.shape == (16, 26, 3) and out.dtype == np.uint8
    expected = cv2.resize(gray, (26, 16), interpolation=cv2.INTER_AREA)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)
    # enlarging uses linear interpolation
    up = Preprocess(size=80, channels=1).from_array(gray)
    np.testing.assert_array_equal(up[:, :, 0], cv2.resize(gray, (80, 80), interpolation=cv2.INTER_LINEAR))

    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    one = Preprocess(size=8, channels=1).from_array(rgb)
    np.testing.assert_array_equal(one[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(Preprocess(size=8).from_array(rgba), rgb)


@pytest.mark.parametrize("interpolation", ["auto", "area", "linear", "nearest", "cubic"])
def test_gray_to_three_channels_gives_the_pixels_of_repeating_before_the_resize(interpolation: str) -> None:
    """The gray channel is resized once and then repeated: the pixels must be those of resizing all three."""
    flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}
    rng = np.random.default_rng(5)
    for h, w, size in ((97, 131, 40), (64, 64, 32), (30, 45, 60), (413, 262, (224, 399))):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 2)
        pre = Preprocess(size=size, margin=2, channels=3, interpolation=interpolation)
        oh, ow = pre.out_hw
        name = interpolation if interpolation != "auto" else ("area" if oh <= h and ow <= w else "linear")
        want = cv2.resize(np.repeat(img[:, :, None], 3, axis=2), (ow, oh), interpolation=flags[name])
        np.testing.assert_array_equal(pre.from_array(img), want)


def test_preprocess_is_picklable_and_validates() -> None:
    pre = Preprocess(size=64, margin=4, windows=("brain", "subdural", "soft_tissue"))
    again = pickle.loads(pickle.dumps(pre))
    assert again == pre and again.key() == pre.key()
    assert again.out_shape == (72, 72, 3)
    with pytest.raises(UsageError, match="channels"):
        Preprocess(channels=2)
    with pytest.raises(UsageError, match="bit_depth"):
        Preprocess(bit_depth="gamma")
    with pytest.raises(DataError, match="Hounsfield"):
        pre.from_array(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="shape"):
        Preprocess().from_array(np.zeros((2, 2, 2, 2)))


def test_preprocess_reads_16bit_png(tmp_path: Path) -> None:
    img = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 7 % 60000 + 1000).astype(np.uint16)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img)
    out = Preprocess(size=32, channels=1)(path)
    expected = cv2.resize(to_uint8(img), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[:, :, 0], expected)


def test_preprocess_unreadable_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        Preprocess(size=8)(bad)


def test_array_and_file_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    raw = ArraySource(imgs)
    assert len(raw) == 5 and raw.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(raw[2][:, :, 0], imgs[2])
    np.testing.assert_array_equal(raw.get_batch([4, 1])[:, :, :, 0], imgs[[4, 1]])
    pre = Preprocess(size=14, channels=3)
    sized = ArraySource(imgs, pre)
    assert sized.shape == (5, 14, 14, 3)
    np.testing.assert_array_equal(sized[3], pre.from_array(imgs[3]))
    with pytest.raises(DataError, match="uint8"):
        ArraySource(imgs.astype(np.float32))

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), imgs[i])
    files = FileSource(paths, pre)
    np.testing.assert_array_equal(files.get_batch([0, 2]), np.stack([pre(paths[0]), pre(paths[2])]))


def _dataset(n: int = 20, k: int = 3, indices: list[int] | None = None) -> ImageDataset:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (n, 6, 5, 2), dtype=np.uint8)
    targets = rng.random((n, k)).astype(np.float32)
    return ImageDataset(ArraySource(imgs), targets, indices)


def test_dataset_items_and_batches() -> None:
    ds = _dataset(indices=[7, 3, 11])
    assert len(ds) == 3
    item = ds[1]
    assert item["index"] == 3
    assert item["image"].shape == (2, 6, 5) and item["image"].dtype == torch.uint8
    np.testing.assert_array_equal(item["image"].numpy(), ds.source[3].transpose(2, 0, 1))
    torch.testing.assert_close(item["target"], torch.from_numpy(ds.targets[3]))
    batch = ds.__getitems__([2, 0])
    assert batch["index"].tolist() == [11, 7]
    assert batch["image"].shape == (2, 2, 6, 5)
    assert torch.equal(batch["image"][0], ds[2]["image"])
    labels = ImageDataset(ArraySource(np.zeros((4, 3, 3), np.uint8)), np.array([0, 2, 1, 1]))
    assert labels[1]["target"].dtype == torch.long
    no_targets = ImageDataset(ArraySource(np.zeros((4, 3, 3), np.uint8)), None)
    assert no_targets.__getitems__([0, 1])["target"].shape == (2, 0)
    with pytest.raises(DataError, match="targets"):
        ImageDataset(ArraySource(np.zeros((4, 3, 3), np.uint8)), np.zeros(3))
    with pytest.raises(DataError, match="out of range"):
        ImageDataset(ArraySource(np.zeros((4, 3, 3), np.uint8)), None, [0, 4])


@pytest.mark.gpu
def test_batch_augment_gpu_matches_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from medkit.data.augment import AugmentConfig, BatchAugment

    # TF32 convolutions (the blur) round to 10-bit mantissas; parity is about the random parameters, not that.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = AugmentConfig(hflip=0.5, affine_p=0.8, rotate=20, scale=(0.9, 1.1), brightness=0.2, blur_p=0.5, cutout=1)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(cfg, size=28)
    cpu = aug(x, torch.Generator().manual_seed(1))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------------------------- DICOM windows
def _ct_dicom(path: Path, hu: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    return write_dicom(
        path,
        hu + 1024,
        bits_stored=16,
        signed=True,
        photometric=photometric,
        window=(40, 80),
        z=None,
        pixel_spacing=None,
    )


WINDOWS = ("brain", "subdural", "soft_tissue", "dicom")


@pytest.mark.parametrize("size", [40, 24])
def test_dicom_windows_fast_path_equals_the_float_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    import medkit.io.dicom as dicom
    from medkit.io.readers import read_image

    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 2000, (40, 40)).astype(np.int16)
    hu[:5] = np.arange(-20, 180, 1)[:40]  # every HU of the brain window's ramp, so rounding is exercised
    path = _ct_dicom(tmp_path / "ct.dcm", hu)
    calls: list[str] = []
    real = dicom.dicom_windows

    def spy(p, names, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(str(p))
        return real(p, names, **kw)

    monkeypatch.setattr(dicom, "dicom_windows", spy)
    pre = Preprocess(size=size, windows=WINDOWS)
    fast = pre(path)
    assert calls == [str(path)]
    import pydicom

    # the path used before: float Hounsfield units, then multi_window, then resize
    old = pre.from_array(read_image(path), ds=pydicom.dcmread(path, stop_before_pixels=True))
    assert fast.shape == (size, size, 4) and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, old)
    brain = dicom.window(hu.astype(np.float32), 40, 80)
    if size == 40:
        np.testing.assert_array_equal(fast[..., 0], brain)  # no resize: the brain window itself


def test_dicom_windows_monochrome1_are_windowed_before_the_inversion(tmp_path: Path) -> None:
    import medkit.io.dicom as dicom

    hu = np.linspace(-100, 200, 32 * 32).reshape(32, 32).astype(np.int16)
    path = _ct_dicom(tmp_path / "m1.dcm", hu, photometric="MONOCHROME1")
    out = Preprocess(size=32, windows=("brain", "subdural"))(path)
    # what a viewer shows for MONOCHROME1: the window on the stored values, displayed inverted
    for k, (c, w) in enumerate([(40, 80), (80, 200)]):
        np.testing.assert_array_equal(out[..., k], 255 - dicom.window(hu.astype(np.float32), c, w))


def test_windows_on_png_still_take_the_array_path(tmp_path: Path) -> None:
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = Preprocess(size=8, windows=((30.0, 20.0),))(tmp_path / "a.png")
    from medkit.io.dicom import window

    np.testing.assert_array_equal(out[..., 0], window(img.astype(np.float32), 30.0, 20.0))


# ---------------------------------------------------------------------------------------------------- image + mask
def test_mask_becomes_the_last_channel_resized_by_nearest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    labels = np.repeat(np.repeat(rng.integers(0, 6, (6, 6), dtype=np.uint8), 5, 0), 5, 1)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.png"), img)
    rgb_mask = np.stack([labels, np.zeros_like(labels), np.zeros_like(labels)], -1)  # PANDA: label in red
    cv2.imwrite(str(tmp_path / "a_mask.png"), cv2.cvtColor(rgb_mask, cv2.COLOR_RGB2BGR))
    pre = Preprocess(size=20, channels=3, masks={str(tmp_path / "a.png"): str(tmp_path / "a_mask.png")})
    plain = Preprocess(size=20, channels=3)
    assert pre.out_shape == (20, 20, 4) and pre.image_channels == 3
    out = pre(tmp_path / "a.png")
    np.testing.assert_array_equal(out[..., :3], plain(tmp_path / "a.png"))
    np.testing.assert_array_equal(out[..., 3], cv2.resize(labels, (20, 20), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(out[..., 3])) <= set(np.unique(labels))
    assert (pre(tmp_path / "b.png")[..., 3] == 0).all()  # no mask for b: a zero channel
    assert (pre.from_array(img)[..., 3] == 0).all()

    again = pickle.loads(pickle.dumps(pre))
    assert again == pre and again.key() == pre.key()
    np.testing.assert_array_equal(again(tmp_path / "a.png"), out)
    params = pre.params()
    assert params["masks"]["pairs"] == 1 and "masks" not in plain.params()
    key = pre.key()
    cv2.imwrite(str(tmp_path / "a_mask.png"), np.zeros((30, 30), np.uint8))
    assert pre.key() != key  # a changed mask file must not reuse a cache


def test_batch_augment_moves_the_mask_channel_with_the_image() -> None:
    from medkit.data.augment import AugmentConfig, BatchAugment

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, (4, 1, 16, 16), dtype=np.uint8)
    # channel 3 (the mask) is channel 0 of the image: identical per-sample transforms keep them identical
    x = torch.from_numpy(np.concatenate([labels, labels * 10, labels * 20, labels], axis=1))
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, normalize="none")
    g = torch.Generator().manual_seed(0)
    y = BatchAugment(cfg)(x, generator=g)
    assert torch.equal(y[:, 3], y[:, 0])
    assert set(torch.unique(torch.round(y[:, 3] * 255)).tolist()) <= set(range(6))  # flips copy labels exactly
    rot = BatchAugment(AugmentConfig(affine_p=1.0, rotate=20.0, normalize="none"))(x, generator=g)
    assert torch.allclose(rot[:, 3], rot[:, 0])  # bilinear warps blend labels at edges, but in step with the image

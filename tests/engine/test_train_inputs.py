"""`medkit train` inputs: MedMNIST native size, one DataLoader per run, image + mask (4 channels) from `medkit tile`.

Kept apart from test_train.py so each file stays fast on a shared CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from _factories import synthetic_medmnist
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()
TINY = ["--model", "cnn_small", "--batch-size", "8", "--device", "cpu", "--workers", "0"]


def _npz(path: Path, size: int = 28, n: tuple[int, int, int] = (24, 8, 8)) -> Path:
    return synthetic_medmnist(path, n, size, learnable=False)


def _train(*args: str | Path) -> object:
    return runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)


# ---------------------------------------------------------------------------------------------------- MedMNIST size
def test_npz_without_img_size_trains_at_its_native_size(tmp_path: Path) -> None:
    data = _npz(tmp_path / "tiny.npz", size=28)
    res = _train("binary", "--data", data, *TINY, "--dry-run", "--out", tmp_path / "native")
    assert res.exit_code == 0, res.stderr
    assert "--img-size not given: using the 28 px images of tiny.npz" in res.stderr
    record = json.loads((tmp_path / "native" / "run.json").read_text())
    assert record["img_size"] == 28 and record["config"]["task"]["img_size"] == 28

    res = _train("binary", "--data", data, *TINY, "--img-size", "32", "--dry-run", "--out", tmp_path / "given")
    assert res.exit_code == 0, res.stderr
    assert "--img-size not given" not in res.stderr
    assert json.loads((tmp_path / "given" / "run.json").read_text())["img_size"] == 32


# ---------------------------------------------------------------------------------------------------- loader
def test_the_loaders_are_built_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.engine.feed as feed
    from medkit.engine.fit import TrainConfig, fit
    from medkit.registries import TASKS

    built: list[int] = []
    real = feed.make_loader

    def counting(split, order, workers=0, pin_memory=False):  # noqa: ANN001, ANN202
        built.append(len(split))
        return real(split, order, workers, pin_memory)

    monkeypatch.setattr(feed, "make_loader", counting)
    task = TASKS.create("binary", model="cnn_small", img_size=28, epochs=3, batch_size=8, augment={"hflip": 0.5})
    data = str(_npz(tmp_path / "t.npz"))
    res = fit(TrainConfig(task=task, data=data, out=str(tmp_path / "run"), workers=0, feed="workers"))
    assert res.epochs_done == 3 and len(res.history) == 3 and res.feed == "workers"
    assert built == [24, 8, 8]  # train and validation once for three epochs, then the test split


def test_held_rows_are_loaded_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training, validation and test feeders share one copy of the images (no DataLoader at all)."""
    import medkit.engine.feed as feed
    import medkit.engine.feeders as feeders
    from medkit.engine.fit import TrainConfig, fit
    from medkit.registries import TASKS

    loads: list[int] = []
    real_load = feeders._load

    def counting(source, stored, runtime, on_device):  # noqa: ANN001, ANN202
        loads.append(len(stored))
        return real_load(source, stored, runtime, on_device)

    monkeypatch.setattr(feeders, "_load", counting)
    monkeypatch.setattr(feed, "make_loader", lambda *a, **k: pytest.fail("no DataLoader with --feed pinned"))
    task = TASKS.create("binary", model="cnn_small", img_size=28, epochs=2, batch_size=8)
    res = fit(TrainConfig(task=task, data=str(_npz(tmp_path / "t.npz")), out=str(tmp_path / "run"), feed="pinned"))
    assert res.epochs_done == 2 and res.feed == "pinned" and res.test["n"] == 8
    assert loads == [40]  # train 24 + val 8 + test 8 rows, held once before the first feeder was made
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["runtime"]["feed"] == "pinned" and "as requested" in record["runtime"]["feed_reason"]


# ---------------------------------------------------------------------------------------------------- image + mask
def _slide_and_mask(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White slide with dark tissue blocks, and a PANDA-layout mask (label in the red channel) of those blocks."""
    rng = np.random.default_rng(seed)
    img = rng.integers(235, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    for k, (y, x) in enumerate([(0, 0), (32, 64), (64, 32), (96, 96)]):
        img[y : y + 32, x : x + 32] = 60 + 30 * k
        label[y : y + 32, x : x + 32] = 1 + (k + seed) % 5
    mask = np.stack([label, np.zeros_like(label), np.zeros_like(label)], axis=-1)
    return img, mask


def _tiled_slides(tmp_path: Path, n_slides: int = 5) -> Path:
    slides, masks = tmp_path / "slides", tmp_path / "masks"
    slides.mkdir()
    masks.mkdir()
    rows = []
    for i in range(n_slides):
        img, mask = _slide_and_mask(128, 128, i)
        tifffile.imwrite(slides / f"s{i}.tiff", img, tile=(32, 32))
        tifffile.imwrite(masks / f"s{i}_mask.tiff", mask, tile=(32, 32))
        rows.append({"image_id": f"s{i}", "isup_grade": i % 6, "data_provider": "radboud"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "tiles"
    res = runner.invoke(
        app,
        ["tile", str(slides), "--masks", str(masks), "--labels", str(tmp_path / "train.csv"), "--n", "4"]
        + ["--size", "32", "--mosaic", "2x2", "--workers", "1", "--out", str(out)],
    )
    assert res.exit_code == 0, res.stderr
    return out


def test_tile_with_masks_then_train_wsi_on_image_plus_mask(tmp_path: Path) -> None:
    from medkit.data.dataset import build_data
    from medkit.registries import TASKS

    out = _tiled_slides(tmp_path)
    table = pd.read_csv(out / "tiles.csv")
    assert table["mask"].tolist() == [f"mosaics/s{i}_mask.png" for i in range(5)]

    res = _train(
        "wsi", "--data", out, "--labels", out / "tiles.csv", *TINY, "--img-size", "48", "--dry-run", "--json",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "each image's mask is stacked as the last input channel" in res.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["in_chans"] == 4 and record["mask_col"] == "mask"
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    first_conv = next(v for k, v in state["model"].items() if v.ndim == 4)
    assert first_conv.shape[1] == 4

    # the 4th channel holds the mosaic's labels, resized by nearest neighbour (no blended labels)
    task = TASKS.create("wsi", img_size=48)
    data = build_data(task, out, out / "tiles.csv")
    assert data.in_chans == 4 and data.mask_col == "mask"
    batch = data.train.source.get_batch(np.arange(len(table)))
    for j, rel in enumerate(table["mask"]):
        mosaic_mask = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        want = cv2.resize(mosaic_mask, (48, 48), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(batch[j, :, :, 3], want)
        assert set(np.unique(batch[j, :, :, 3])) <= set(np.unique(mosaic_mask))
        image = cv2.cvtColor(cv2.imread(str(out / table["image"][j])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(batch[j, :, :, :3], cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA))
    assert batch[..., 3].max() > 0

    # the cache stores the mask channel too, and a changed mask file gives a new cache
    cached = build_data(task, out, out / "tiles.csv", cache_dir=tmp_path / "cache", cache_workers=0)
    np.testing.assert_array_equal(cached.train.source.get_batch(np.arange(len(table))), batch)
    cv2.imwrite(str(out / table["mask"][0]), np.zeros((64, 64), np.uint8))
    again = build_data(task, out, out / "tiles.csv", cache_dir=tmp_path / "cache", cache_workers=0)
    assert again.train.source.directory != cached.train.source.directory
    assert again.train.source.get_batch([0])[0, :, :, 3].max() == 0

    # --mask-col none trains on the image alone
    res = _train(
        "wsi", "--data", out, "--labels", out / "tiles.csv", *TINY, "--img-size", "48", "--dry-run",
        "--mask-col", "none", "--out", tmp_path / "nomask",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "nomask" / "run.json").read_text())["in_chans"] == 3


def test_mask_column_errors_name_the_problem(tmp_path: Path) -> None:
    out = _tiled_slides(tmp_path, n_slides=3)
    common = ["wsi", "--data", out, "--labels", out / "tiles.csv", *TINY, "--img-size", "48", "--dry-run"]
    res = _train(*common, "--mask-col", "labelmap", "--out", tmp_path / "a")
    assert res.exit_code == 2
    assert "--mask-col labelmap: no such column" in res.stderr

    (out / "mosaics" / "s1_mask.png").unlink()
    res = _train(*common, "--out", tmp_path / "b")
    assert res.exit_code == 2
    assert "1 mask file(s) of column 'mask' not found" in res.stderr and "s1_mask.png" in res.stderr


def test_mask_channel_is_normalised_to_its_label_values() -> None:
    from types import SimpleNamespace as Namespace

    from medkit.data.augment import AugmentConfig, BatchAugment
    from medkit.data.dataset import channel_mean_std
    from medkit.registries import TASKS

    def _mean_std(task, data):  # noqa: ANN001, ANN202
        return channel_mean_std(task.mean, task.std, data.in_chans, data.mask_col is not None)

    task = TASKS.create("wsi")
    mean, std = _mean_std(task, Namespace(in_chans=4, mask_col="mask"))
    assert mean == [0.485, 0.456, 0.406, 0.0] and std[:3] == [0.229, 0.224, 0.225]
    x = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
    x[0, 3] = torch.tensor([[0, 1], [3, 5]], dtype=torch.uint8)
    y = BatchAugment(AugmentConfig(mean=tuple(mean), std=tuple(std)))(x, train=False)
    assert torch.allclose(y[0, 3], torch.tensor([[0.0, 1.0], [3.0, 5.0]]), atol=1e-5)
    assert torch.allclose(y[0, 0], torch.full((2, 2), -0.485 / 0.229))
    gray = TASKS.create("binary")  # one mean value for a gray image + mask
    assert _mean_std(gray, Namespace(in_chans=2, mask_col="mask")) == ([0.5, 0.0], [0.5, 1 / 255])
    assert _mean_std(task, Namespace(in_chans=3, mask_col=None)) == (list(task.mean), list(task.std))

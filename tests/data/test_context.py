"""2.5D input (`medkit.data.context`): stacks checked pixel by pixel against hand-built expectations, the channel
order of both modes, one augmentation per stack, the cache holding each slice once, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _ct_factory import make_ct_dataset

from medkit.data.augment import AugmentConfig, BatchAugment
from medkit.data.context import ContextPlan, StackSource, stack_source
from medkit.data.pipeline import ArraySource
from medkit.data.series import series_from_table
from medkit.data.table import detect_spec
from medkit.errors import UsageError

# Two series in a shuffled table: series A has slices 0..3, series B slices 0..2 (row -> (series, slice)).
TABLE = pd.DataFrame(
    {
        "image": [f"i{r}.png" for r in range(7)],
        "series_id": ["A", "B", "A", "B", "A", "A", "B"],
        "slice_index": [2, 1, 0, 0, 3, 1, 2],
        "any": [0, 1, 0, 0, 1, 0, 1],
    }
)
# The stacks of every row, worked out by hand from the table: A in slice order is rows 2, 5, 0, 4; B is 3, 1, 6.
WINDOWS = {
    3: [[5, 0, 4], [3, 1, 6], [2, 2, 5], [3, 3, 1], [0, 4, 4], [2, 5, 0], [1, 6, 6]],
    5: [[2, 5, 0, 4, 4], [3, 3, 1, 6, 6], [2, 2, 2, 5, 0], [3, 3, 3, 1, 6], [5, 0, 4, 4, 4], [2, 2, 5, 0, 4],
        [3, 1, 6, 6, 6]],
}  # fmt: skip


def _slices(n: int = 7, h: int = 4, w: int = 5, c: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _stacks(k: int, mode: str, images: np.ndarray) -> StackSource:
    index = series_from_table(TABLE, detect_spec(TABLE))
    return stack_source(ArraySource(images), index, ContextPlan(k, mode, images.shape[-1]))


def test_channel_plans_by_hand() -> None:
    every = ContextPlan(3, "all", 3)
    assert every.in_chans == 9
    assert every.pairs == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2))
    middle = ContextPlan(5, "middle", 3)
    assert middle.in_chans == 3 + 5 - 1
    # the centre slice's three windows first, then the neighbours in slice order, in the first (brain) window
    assert middle.pairs == ((2, 0), (2, 1), (2, 2), (0, 0), (1, 0), (3, 0), (4, 0))
    assert middle.select.tolist() == [6, 7, 8, 0, 3, 9, 12]
    assert middle.centre == (0, 1, 2) and every.centre == (3, 4, 5)  # the slice itself, in its three windows
    mean, std = middle.mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert mean == [0.485, 0.456, 0.406, 0.485, 0.485, 0.485, 0.485]
    assert std == [0.229, 0.224, 0.225, 0.229, 0.229, 0.229, 0.229]
    assert ContextPlan(3, "all", 1).mean_std((0.5,), (0.25,)) == ([0.5] * 3, [0.25] * 3)
    assert ContextPlan(1, "all", 3).in_chans == 3


@pytest.mark.parametrize(("k", "mode"), [(4, "all"), (0, "all"), (-3, "all"), (3, "mid")])
def test_bad_context_is_refused(k: int, mode: str) -> None:
    with pytest.raises(UsageError, match="odd|did you mean 'middle'"):
        ContextPlan(k, mode, 3)


@pytest.mark.parametrize("k", [3, 5])
def test_windows_by_hand_edges_repeated_and_series_apart(k: int) -> None:
    source = _stacks(k, "all", _slices())
    assert source.window.tolist() == WINDOWS[k]
    series = TABLE["series_id"].to_numpy()
    for row, window in enumerate(source.window):
        assert set(series[window]) == {series[row]}  # the two series never mix
        assert window[k // 2] == row  # the slice itself in the middle


@pytest.mark.parametrize("k", [3, 5])
def test_all_mode_pixel_by_pixel(k: int) -> None:
    images = _slices()
    source = _stacks(k, "all", images)
    rows = [2, 6, 0, 1, 4]
    got = source.get_batch(rows)
    assert got.shape == (5, 4, 5, 3 * k) and got.dtype == np.uint8
    for b, row in enumerate(rows):
        for j, slice_row in enumerate(WINDOWS[k][row]):
            for c in range(3):
                np.testing.assert_array_equal(got[b, :, :, 3 * j + c], images[slice_row, :, :, c])
    np.testing.assert_array_equal(source[4], got[4])


@pytest.mark.parametrize("k", [3, 5])
def test_middle_mode_pixel_by_pixel(k: int) -> None:
    images = _slices()
    source = _stacks(k, "middle", images)
    rows = [0, 2, 6]
    got = source.get_batch(rows)
    assert got.shape == (3, 4, 5, 3 + k - 1)
    for b, row in enumerate(rows):
        window = WINDOWS[k][row]
        want = [images[row, :, :, c] for c in range(3)]  # the slice itself, every window
        want += [images[window[j], :, :, 0] for j in range(k) if j != k // 2]  # neighbours, first window
        np.testing.assert_array_equal(got[b], np.stack(want, axis=-1))


@pytest.mark.parametrize("mode", ["all", "middle"])
def test_assemble_on_torch_tensors_matches_numpy(mode: str) -> None:
    """The feeders that hold slices in memory assemble stacks from a tensor: the same pixels as get_batch."""
    images = _slices()
    source = _stacks(5, mode, images)
    rows = np.array([3, 0, 5])
    got = source.assemble(torch.from_numpy(images[source.base_rows(rows)]))
    np.testing.assert_array_equal(got.numpy(), source.get_batch(rows))
    out = np.zeros(source.shape[1:], np.uint8)[None].repeat(3, 0)
    assert source.get_batch(rows, out=out) is out and np.array_equal(out, got.numpy())


def _augment(x: torch.Tensor, config: AugmentConfig, seed: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(seed)
    return BatchAugment(config)(x, generator=g, train=True)


@pytest.mark.parametrize(
    "augment",
    [
        {"hflip": 1.0},  # always flipped: the exact gather path
        {"hflip": 0.5, "vflip": 0.5, "affine_p": 1.0, "rotate": 20.0, "scale": (0.8, 1.2), "translate": 0.1},
        {"hflip": 0.5, "blur_p": 1.0, "brightness": 0.2, "cutout": 2},
    ],
)
def test_augmentation_is_drawn_once_per_stack(augment: dict) -> None:
    """A stack augmented as one image equals its slices augmented one by one with the same draw: every slice of a
    stack is flipped, warped, blurred and cut out identically."""
    images = np.random.default_rng(3).integers(0, 256, (7, 12, 12, 3), dtype=np.uint8)
    source = _stacks(3, "all", images)
    rows = [0, 2, 6, 1]
    x = torch.from_numpy(source.get_batch(rows)).permute(0, 3, 1, 2)
    config = AugmentConfig(**augment, mean=(0.0,), std=(1.0,))
    stack = _augment(x, config, seed=11)
    for j in range(3):
        one = _augment(x[:, 3 * j : 3 * j + 3], config, seed=11)  # the same per-sample draw
        torch.testing.assert_close(stack[:, 3 * j : 3 * j + 3], one, atol=1e-6, rtol=0)
    if augment == {"hflip": 1.0}:  # and by hand: the flipped stack is the stack of flipped slices
        torch.testing.assert_close(stack, x.flip(-1).float() / 255)


def test_brightness_and_contrast_treat_a_stack_as_one_image() -> None:
    """Photometric changes on a stack: one brightness and one contrast factor per stack, so identical slices stay
    identical (contrast is taken around the stack's mean)."""
    images = np.random.default_rng(4).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    images[[2, 5]] = images[0]  # the stack of row 2 at K = 3 is rows 2, 2, 5: three identical slices
    source = _stacks(3, "all", images)
    x = torch.from_numpy(source.get_batch([2])).permute(0, 3, 1, 2)
    y = _augment(x, AugmentConfig(brightness=0.3, contrast=0.3, mean=(0.0,), std=(1.0,)), seed=5)
    torch.testing.assert_close(y[:, 0:3], y[:, 3:6])
    torch.testing.assert_close(y[:, 0:3], y[:, 6:9])


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ct")
    table = make_ct_dataset(root / "data", n_series=3, n_slices=5, size=12, seed=4)
    shuffled = pd.read_csv(table).sample(frac=1.0, random_state=0)  # slices listed out of order
    shuffled.to_csv(root / "shuffled.csv", index=False)
    return root / "data", root / "shuffled.csv"


@pytest.mark.parametrize("mode", ["all", "middle"])
def test_build_data_gathers_stacks_from_a_cache_of_single_slices(
    ct: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    from medkit.data.cache import UInt8Cache
    from medkit.data.dataset import build_data
    from medkit.data.pipeline import FileSource
    from medkit.registries import TASKS

    root, table = ct
    task = TASKS.create("ct", img_size=12, context=3, context_mode=mode)
    data = build_data(task, root, table, cache_dir=tmp_path / "cache", seed=0)
    source = data.train.source
    assert isinstance(source, StackSource) and isinstance(source.base, UInt8Cache)
    assert data.in_chans == (9 if mode == "all" else 5) and data.context.in_chans == data.in_chans
    assert source.base.array.shape == (15, 12, 12, 3)  # every slice once, no neighbour copies
    assert data.val.source is source
    # the stacks by hand, from the table: the slices of each row's series in slice_index order, ends repeated
    df = pd.read_csv(table)
    slices = FileSource([root / p for p in df["image"]], data.preprocess)
    for row in range(len(df)):
        mine = df[df["series_id"] == df["series_id"][row]].sort_values("slice_index")
        pos = mine.index.get_loc(row)
        ring = [mine.index[min(max(pos + d, 0), len(mine) - 1)] for d in (-1, 0, 1)]
        if mode == "all":
            want = np.concatenate([slices[r] for r in ring], axis=-1)
        else:
            want = np.concatenate([slices[row], slices[ring[0]][..., :1], slices[ring[2]][..., :1]], axis=-1)
        np.testing.assert_array_equal(source[row], want)


def test_a_table_without_series_is_refused_before_anything_is_read(ct: tuple[Path, Path], tmp_path: Path) -> None:
    from medkit.data.dataset import build_data
    from medkit.registries import TASKS

    root, table = ct
    pd.read_csv(table).drop(columns=["series_id", "slice_index"]).to_csv(tmp_path / "flat.csv", index=False)
    task = TASKS.create("ct", img_size=12, context=3)
    with pytest.raises(UsageError, match="--context 3 needs the CT series") as err:
        build_data(task, root, tmp_path / "flat.csv", cache_dir=tmp_path / "cache")
    assert "series_id" in err.value.hint and not (tmp_path / "cache").exists()


def test_an_archive_has_no_series(tmp_path: Path) -> None:
    from _factories import synthetic_medmnist

    from medkit.data.dataset import build_data
    from medkit.registries import TASKS

    path = synthetic_medmnist(tmp_path / "breast.npz", counts=(4, 2, 2))
    with pytest.raises(UsageError, match="--context 3 stacks neighbouring CT slices; breast.npz holds no series"):
        build_data(TASKS.create("binary", context=3), path)

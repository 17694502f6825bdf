"""Feeding the model: batch order over a split, the one DataLoader, the feeders, loader workers and the profiler."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pytest
import torch

from medkit.data.dataset import Split
from medkit.data.pipeline import ArraySource
from medkit.engine.feed import Batch, EpochBatches, Feeder, LoaderFeeder, make_feeder, make_loader
from medkit.engine.profile import Profiler
from medkit.engine.runtime import Runtime, loader_workers
from medkit.errors import UsageError


def _split(n: int = 20, k: int = 3, rows: Sequence[int] | None = None) -> Split:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (n, 6, 5, 2), dtype=np.uint8)
    targets = rng.random((n, k)).astype(np.float32)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    return Split(ArraySource(images), rows, targets, [f"img{i}" for i in rows])


def _loader(
    split: Split, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0, train: bool = True
) -> torch.utils.data.DataLoader:
    return make_loader(split, EpochBatches(len(split), batch_size, shuffle, seed, train=train), workers)


def _order(loader: Iterable[dict[str, torch.Tensor]]) -> list[int]:
    return [i for b in loader for i in b["index"].tolist()]


def _image(split: Split, row: int) -> torch.Tensor:
    return torch.from_numpy(split.source[row]).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------- the loader
def test_loader_batches_and_shuffle_determinism() -> None:
    split = _split(n=20)
    batches = list(_loader(split, 6, True, seed=5))
    assert [len(b["index"]) for b in batches] == [6, 6, 6, 2]
    b0 = batches[0]
    assert b0["image"].dtype == torch.uint8 and b0["image"].shape == (6, 2, 6, 5)
    assert b0["target"].shape == (6, 3) and b0["index"].dtype == torch.long
    for j, i in enumerate(b0["index"].tolist()):
        assert torch.equal(b0["image"][j], _image(split, i))
        torch.testing.assert_close(b0["target"][j], torch.from_numpy(split.all_targets[i]))
    first = _order(_loader(split, 6, True, seed=5))
    assert sorted(first) == list(range(20))
    assert first == _order(_loader(split, 6, True, seed=5))
    assert first != _order(_loader(split, 6, True, seed=6))
    assert _order(_loader(split, 6, False, seed=5)) == list(range(20))


def test_loader_index_is_the_row_of_the_source() -> None:
    split = _split(n=20, rows=[7, 3, 11, 0, 19])
    batches = list(_loader(split, 2, False, train=False))
    assert _order(batches) == [7, 3, 11, 0, 19]
    assert torch.equal(batches[1]["image"][1], _image(split, 0))
    assert split.positions(batches[1]["index"].numpy()).tolist() == [2, 3]


def test_training_drops_only_a_one_image_trailing_batch() -> None:
    split = _split(n=19)
    assert [len(b["index"]) for b in _loader(split, 6, True, seed=5)] == [6, 6, 6]
    kept = list(_loader(split, 6, True, seed=5, train=False))
    assert [len(b["index"]) for b in kept] == [6, 6, 6, 1]
    assert sorted(_order(kept)) == list(range(19))
    # a two-image tail trains (batch norm copes); only one image is dropped
    assert [len(b["index"]) for b in _loader(_split(n=20), 6, True, seed=5)] == [6, 6, 6, 2]


def test_loader_with_a_worker_gives_the_same_order_and_pixels() -> None:
    split = _split(n=12)
    a = list(_loader(split, 4, True, seed=9, workers=0))
    b = list(_loader(split, 4, True, seed=9, workers=1))
    assert [x["index"].tolist() for x in a] == [x["index"].tolist() for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x["target"], y["target"]) for x, y in zip(a, b, strict=True))


def test_bad_arguments_and_worker_counts() -> None:
    with pytest.raises(UsageError, match="batch size"):
        EpochBatches(20, 0, True)
    with pytest.raises(UsageError, match="batch size"):
        EpochBatches(20, 1, True, world_size=2)
    assert loader_workers(None, "cpu") == 0  # on a CPU the model needs every core
    assert 0 <= loader_workers(None, "cuda") <= 8
    assert loader_workers(None, "cuda", cap=1) <= 1
    assert loader_workers(3, "cpu") == 3 and loader_workers(0, "cuda") == 0  # an explicit value is kept
    assert loader_workers(-2, "cuda") == 0


# ---------------------------------------------------------------------------------------------------- DDP order
def test_ranks_split_every_epoch_like_a_distributed_sampler() -> None:
    from torch.utils.data.distributed import DistributedSampler

    n, world, batch = 11, 2, 4
    split = _split(n=n)
    ranks = [EpochBatches(n, batch, True, seed=3, world_size=world, rank=r) for r in range(world)]
    loaders = [make_loader(split, order) for order in ranks]
    # DistributedSampler needs no process group when it is told the world size and the rank.
    samplers = [DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=3) for r in range(world)]
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for order, loader, sampler in zip(ranks, loaders, samplers, strict=True):
            order.set_epoch(epoch)
            sampler.set_epoch(epoch)
            assert [len(b) for b in order.batches()] == [batch // world] * 3  # the same step count on every rank
            rows = _order(loader)
            assert rows == list(sampler)  # the same permutation, padding and slice as DistributedSampler
            per_rank.append(rows)
        assert set(per_rank[0]) | set(per_rank[1]) == set(range(n))  # every row of the epoch is seen
        assert len(per_rank[0]) + len(per_rank[1]) == 12  # padded by one repeated row, as DistributedSampler does
        epochs.append(per_rank)
    assert epochs[0][0] != epochs[1][0] and epochs[0][1] != epochs[1][1]  # set_epoch changes the order


# ---------------------------------------------------------------------------------------------------- feeders
def test_cpu_feeder_gives_the_loaders_batches_channels_last() -> None:
    split = _split(n=8)
    host = [Batch.from_dict(d) for d in make_loader(split, EpochBatches(8, 4, False, train=False))]
    rt = Runtime(torch.device("cpu"), channels_last=True)
    feeder = LoaderFeeder(split, EpochBatches(8, 4, False, train=False), rt)
    assert isinstance(feeder, Feeder) and len(feeder) == 2
    fetched = list(feeder)
    assert len(fetched) == 2
    for h, f in zip(host, fetched, strict=True):
        assert isinstance(f, Batch) and len(f) == 4
        assert torch.equal(h.image, f.image) and torch.equal(h.target, f.target) and torch.equal(h.index, f.index)
    assert fetched[0].image.is_contiguous(memory_format=torch.channels_last)


def test_make_feeder_shuffles_for_training_and_resumes_mid_epoch() -> None:
    split = _split(n=20)
    rt = Runtime(torch.device("cpu"))
    train = make_feeder(split, 6, rt, train=True, seed=5)
    epoch0 = [b.index.tolist() for b in train]
    assert epoch0 == [b.tolist() for b in EpochBatches(20, 6, True, 5)]
    train.set_epoch(1, skip=2)
    full = EpochBatches(20, 6, True, 5)
    full.set_epoch(1)
    assert len(train) == 2
    epoch1 = [b.index.tolist() for b in train]
    assert epoch1 == [b.tolist() for b in full.batches()[2:]] and epoch1 != epoch0[2:]
    val = make_feeder(split, 6, rt, train=False, seed=5)
    assert [len(b) for b in val] == [6, 6, 6, 2]
    assert [i for b in val for i in b.index.tolist()] == list(range(20))


@pytest.mark.gpu
@pytest.mark.parametrize("workers", [0, 1])
def test_cuda_feeder_matches_the_host_loader(workers: int) -> None:
    split = _split(n=10)
    rt = Runtime(torch.device("cuda"), channels_last=True, pin_memory=True, workers=workers)
    feeder = LoaderFeeder(split, EpochBatches(10, 4, True, seed=2), rt)
    host = EpochBatches(10, 4, True, seed=2)
    loader = make_loader(split, host)
    for epoch in (0, 1):  # the side stream is set up again for every epoch
        feeder.set_epoch(epoch)
        host.set_epoch(epoch)
        got = list(feeder)
        want = list(loader)
        assert len(got) == len(want) == 3
        for b, c in zip(got, want, strict=True):
            assert b.image.is_cuda and b.target.is_cuda and b.index.is_cuda
            assert b.image.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(b.image.cpu(), c["image"]) and torch.equal(b.target.cpu(), c["target"])
            assert torch.equal(b.index.cpu(), c["index"])


# ---------------------------------------------------------------------------------------------------- profiler
def test_profiler_summary() -> None:
    syncs: list[int] = []
    prof = Profiler(enabled=True, sync=lambda: syncs.append(1), skip=1)
    data = [Batch(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, 0), torch.arange(4)) for _ in range(5)]
    for batch in prof.iter(data):
        with prof.step(len(batch)):
            pass
    s = prof.summary()
    assert s["steps"] == 4
    assert s["data_wait_ms"] >= 0 and s["step_ms"] >= 0
    assert 0 <= s["wait_fraction"] <= 1
    total = sum(prof.data_s[1:]) + sum(prof.step_s[1:])
    assert s["img_per_s"] == pytest.approx(16 / total)
    assert len(syncs) >= 2 * 5  # the device is waited for before each batch and after each step
    off = Profiler(enabled=False, sync=lambda: syncs.append(1))
    before = len(syncs)
    assert len(list(off.iter(data))) == 5 and off.data_s == []
    assert len(syncs) == before  # off: no synchronisation slows training

"""The feeders without a DataLoader (`medkit.engine.feeders`): batch for batch the DataLoader path's, the choice by
size, the ring's hand-over between its thread and the training loop, DDP slices, and (on a GPU) the CUDA paths."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from medkit.data.cache import UInt8Cache
from medkit.data.dataset import Split
from medkit.data.pipeline import ArraySource, FileSource, Preprocess
from medkit.engine import feeders as F
from medkit.engine.ddp import DistInfo
from medkit.engine.feed import Batch, EpochBatches, Feeder, LoaderFeeder, make_feeder
from medkit.engine.runtime import Runtime
from medkit.errors import DataError, UsageError

GiB = 2**30
N = 15
PRE = Preprocess(size=6, margin=1, channels=3)


# ---------------------------------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def png_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """PNG files of mixed sizes and depths, listed out of sorted order and with one file twice, so the cache's
    stored rows differ from the source rows."""
    folder = tmp_path_factory.mktemp("png")
    rng = np.random.default_rng(0)
    files = []
    for i in range(N - 1):
        img = rng.integers(0, 256, (9 + i % 4, 11, 3) if i % 2 else (10, 8 + i % 3), dtype=np.uint8)
        path = folder / f"f{i:02d}.png"
        assert cv2.imwrite(str(path), img)
        files.append(path)
    return files[::-1] + [files[3]]


@pytest.fixture(scope="module")
def cache(png_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> UInt8Cache:
    built = UInt8Cache.build(png_paths, PRE, tmp_path_factory.mktemp("cache"), workers=0, progress=False)
    assert not np.array_equal(built.rows, np.arange(N))  # the stored order is not the source order
    return built


def _source(kind: str, cache: UInt8Cache) -> object:
    rng = np.random.default_rng(1)
    if kind == "memmap":
        return cache
    if kind == "array":
        return ArraySource(rng.integers(0, 256, (N, 7, 5, 2), dtype=np.uint8))
    return ArraySource(rng.integers(0, 4096, (N, 9, 9), dtype=np.uint16), Preprocess(size=6, channels=1))


def _split(source: object, target: str = "multilabel", rows: np.ndarray | None = None) -> Split:
    rng = np.random.default_rng(2)
    targets = rng.random((N, 3)) if target == "multilabel" else rng.integers(0, 4, N)
    rows = rng.permutation(N)[:11] if rows is None else rows
    return Split(source, rows, targets, [str(i) for i in rows])


def _cpu(channels_last: bool = False, dist: DistInfo | None = None) -> Runtime:
    return Runtime(torch.device("cpu"), channels_last=channels_last, dist=dist or DistInfo())


def _loader_batches(split: Split, order: EpochBatches, rt: Runtime) -> list[Batch]:
    """The reference: the DataLoader path (`LoaderFeeder`) over the same order."""
    return list(LoaderFeeder(split, order, rt))


def _assert_same(got: list[Batch], want: list[Batch]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        for a, b in ((g.image, w.image), (g.target, w.target), (g.index, w.index)):
            assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            assert torch.equal(a, b)
        assert g.image.stride() == w.image.stride()  # the same (channels-last) memory layout


# ---------------------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("feed", ["device", "pinned", "stream"])
@pytest.mark.parametrize("kind", ["memmap", "array", "computed"])
@pytest.mark.parametrize("target", ["multilabel", "multiclass"])
def test_feeders_give_the_dataloader_batches(feed: str, kind: str, target: str, cache: UInt8Cache) -> None:
    split = _split(_source(kind, cache), target)
    rt = _cpu(channels_last=kind == "array")
    feeder = make_feeder(split, 4, rt, train=True, seed=3, feed=feed)
    expected = {"device": F.DeviceFeeder, "pinned": F.RingFeeder, "stream": F.RingFeeder}[feed]
    assert isinstance(feeder, expected) and isinstance(feeder, Feeder)
    reference = EpochBatches(len(split), 4, True, 3)
    for epoch, skip in ((0, 0), (1, 1), (2, 2)):  # a resumed epoch skips the batches already done
        feeder.set_epoch(epoch, skip)
        reference.set_epoch(epoch, skip)
        assert len(feeder) == len(reference)
        _assert_same(list(feeder), _loader_batches(split, reference, rt))
    val = make_feeder(split, 4, rt, train=False, seed=3, feed=feed)
    _assert_same(list(val), _loader_batches(split, EpochBatches(len(split), 4, False, 3, train=False), rt))
    assert [i for b in val for i in b.index.tolist()] == split.rows.tolist()  # validation order: the split's


def test_auto_feeds_files_through_the_dataloader_only(png_paths: list[Path]) -> None:
    split = _split(FileSource(png_paths, PRE))
    assert isinstance(make_feeder(split, 4, _cpu(), train=True), LoaderFeeder)
    for feed in ("device", "pinned", "stream"):
        with pytest.raises(UsageError, match="--cache"):
            make_feeder(split, 4, _cpu(), train=True, feed=feed)
    with pytest.raises(UsageError, match="did you mean 'device'"):
        make_feeder(split, 4, _cpu(), train=True, feed="devise")


# ---------------------------------------------------------------------------------------------------- the choice
@pytest.mark.parametrize(
    ("requested", "kind", "device", "cache_gib", "free_gib", "ram_gib", "expected"),
    [
        ("auto", "memmap", "cuda", 5, 79, 200, "device"),
        ("auto", "memmap", "cuda", 39, 79, 200, "device"),  # 39 <= half of 79
        ("auto", "memmap", "cuda", 40, 79, 200, "pinned"),  # > half of the free GPU memory, fits in RAM
        ("auto", "memmap", "cuda", 101, 79, 200, "stream"),  # > half of the RAM too
        ("auto", "array", "cuda", 60, 79, 100, "stream"),  # pinning copies an array: it needs the RAM share
        ("auto", "array", "cuda", 45, 79, 100, "pinned"),
        ("auto", "computed", "cuda", 1, 79, 100, "device"),
        ("auto", "memmap", "cuda", 1, None, None, "stream"),  # nothing known: never hold
        ("auto", "memmap", "cpu", 9, None, 20, "device"),  # on a CPU the device memory is the RAM
        ("auto", "memmap", "cpu", 11, None, 20, "stream"),
        ("auto", "array", "cpu", 15, None, 20, "device"),  # the array itself, no copy
        ("auto", "memmap", "mps", 1, None, 20, "pinned"),  # no free-memory figure on MPS
        ("auto", "files", "cuda", 0, 79, 200, "workers"),
        ("device", "memmap", "cuda", 100, 79, 200, "device"),  # a named feed is taken as it is
        ("stream", "memmap", "cuda", 1, 79, 200, "stream"),
        ("workers", "array", "cpu", 1, None, 20, "workers"),
    ],
)
def test_choose_feed_by_size(
    requested: str,
    kind: str,
    device: str,
    cache_gib: float,
    free_gib: float | None,
    ram_gib: float | None,
    expected: str,
) -> None:
    free = None if free_gib is None else int(free_gib * GiB)
    ram = None if ram_gib is None else int(ram_gib * GiB)
    choice = F.choose_feed(requested, kind, device, int(cache_gib * GiB), free, ram)
    assert choice.name == expected
    assert str(choice).startswith(f"feed: {expected}, ") and choice.reason


def test_choose_feed_says_why() -> None:
    choice = F.choose_feed("auto", "memmap", "cuda", int(5.2 * GiB), 79 * GiB, 200 * GiB)
    assert str(choice) == "feed: device, cache 5.2 GiB of 79.0 GiB free on the GPU"
    pinned = F.choose_feed("auto", "memmap", "cuda", 60 * GiB, 79 * GiB, 200 * GiB)
    assert "60.0 GiB > 50% of 79.0 GiB free on the GPU" in pinned.reason and "200.0 GiB RAM" in pinned.reason
    assert "as requested (--feed stream)" in F.choose_feed("stream", "memmap", "cpu", 2**20, None, GiB).reason
    with pytest.raises(UsageError, match="unknown feed 'gpu'"):
        F.choose_feed("gpu", "memmap", "cuda", 0, 1, 1)


def test_plan_feed_decides_once_and_holds_the_rows_of_every_split(
    cache: UInt8Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []
    real = F._load
    monkeypatch.setattr(
        F, "_load", lambda src, stored, rt, dev: (loads.append(len(stored)), real(src, stored, rt, dev))[1]
    )
    train, val = _split(cache, rows=np.arange(0, 9)), _split(cache, rows=np.arange(9, 13))
    rt = _cpu()
    monkeypatch.setattr(F, "available_ram", lambda: 10 * GiB)
    choice = F.plan_feed([train, val, None], rt, "auto")
    assert choice.name == "device" and "the CPU is the device" in choice.reason
    # rows 0..12 of the source are 12 stored rows (the duplicated file is stored once)
    assert loads == [len(np.unique(cache.rows[:13]))]
    for split in (train, val):
        feeder = make_feeder(split, 4, rt, train=False, feed=choice.name)
        _assert_same(list(feeder), _loader_batches(split, EpochBatches(len(split), 4, False, train=False), rt))
    assert len(loads) == 1  # both feeders read the one held copy
    assert F.plan_feed([val], rt, "auto").name == "device"  # already held: stays there
    monkeypatch.setattr(F, "available_ram", lambda: 10)  # a few bytes of RAM: the cache is streamed
    assert F.plan_feed([train, val], _cpu(), "auto").name == "stream" and len(loads) == 1
    # 8 processes on one machine each hold their own host copy: each may take an eighth of the RAM
    need = len(np.unique(cache.rows[:13])) * int(np.prod(cache.shape[1:]))
    monkeypatch.setattr(F, "available_ram", lambda: 4 * need)
    assert F.plan_feed([train, val], _cpu(), "auto").name == "device"
    eight = _cpu(dist=DistInfo(world_size=16, rank=3, local_rank=3, local_world_size=8))
    assert F.plan_feed([train, val], eight, "auto").name == "stream"


def test_held_rows_grow_when_another_split_needs_more(cache: UInt8Cache) -> None:
    rt = _cpu()
    first, second = _split(cache, rows=np.array([4, 1, 2])), _split(cache, rows=np.array([12, 0, 14, 2]))
    make_feeder(first, 2, rt, train=False, feed="pinned")
    held = rt.held[cache]["host"]
    assert held.covers(cache.rows[[4, 1, 2]]) and not held.covers(cache.rows[[12]])
    feeder = make_feeder(second, 2, rt, train=False, feed="pinned")
    assert rt.held[cache]["host"].covers(cache.rows[[4, 1, 2, 12, 0, 14]])  # the union, held once
    _assert_same(list(feeder), _loader_batches(second, EpochBatches(4, 2, False, train=False), rt))


# ---------------------------------------------------------------------------------------------------- the ring
class _Watched(F.RingFeeder):
    """A ring whose buffers are watched: filling or copying a buffer in the wrong state fails the test."""

    def __init__(self, *args: object, fill_s: float = 0.0, copy_s: float = 0.0, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.fill_s, self.copy_s = fill_s, copy_s
        self.state: dict[int, str] = {}
        self.lock = threading.Lock()

    def _move(self, slot: object, want: str, new: str) -> None:
        with self.lock:
            have = self.state.get(id(slot), "free")
            if have != want:
                raise AssertionError(f"buffer {id(slot)} is {have}, expected {want}")
            self.state[id(slot)] = new

    def fill(self, slot: object, js: np.ndarray) -> None:
        self._move(slot, "free", "filling")
        slot.image.fill_(255)  # garbage first: a batch handed out before the fill ends would show it
        time.sleep(self.fill_s)
        super().fill(slot, js)
        self._move(slot, "filling", "ready")

    def copy_out(self, slot: object) -> Batch:
        self._move(slot, "ready", "copying")
        time.sleep(self.copy_s)  # the thread, if it got the buffer now, would overwrite it mid-copy
        batch = super().copy_out(slot)
        self._move(slot, "copying", "free")
        return batch


@pytest.mark.parametrize(("fill_s", "copy_s"), [(0.0, 0.01), (0.01, 0.0)], ids=["slow-consumer", "slow-producer"])
@pytest.mark.parametrize("feed", ["pinned", "stream"])
def test_the_ring_never_hands_out_a_buffer_in_use(fill_s: float, copy_s: float, feed: str, cache: UInt8Cache) -> None:
    split = _split(cache, rows=np.arange(N))
    rt = _cpu()
    gather = (
        F.HeldGather(split, F.hold_rows(rt, cache, cache.rows, False)) if feed == "pinned" else F.StreamGather(split)
    )
    order = EpochBatches(N, 2, True, seed=4)
    feeder = _Watched(split, order, rt, gather, depth=2, fill_s=fill_s, copy_s=copy_s)
    reference = EpochBatches(N, 2, True, seed=4)
    for epoch in (0, 1):
        feeder.set_epoch(epoch)
        reference.set_epoch(epoch)
        got = []
        for batch in feeder:
            time.sleep(copy_s)  # a slow training step too
            got.append(batch)
        _assert_same(got, _loader_batches(split, reference, rt))
    assert set(feeder.state.values()) == {"free"}


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "medkit-feed"]


def test_the_ring_thread_ends_with_an_early_stop_and_passes_errors_on(cache: UInt8Cache) -> None:
    split = _split(cache, rows=np.arange(N))
    feeder = make_feeder(split, 2, _cpu(), train=True, feed="stream")
    it = iter(feeder)
    first = next(it)
    assert len(first) == 2 and _feed_threads()
    it.close()  # the loop stopped after one batch (--dry-run, --max-steps)
    assert _feed_threads() == []

    class Broken(F.StreamGather):
        def __call__(self, slot: object, js: np.ndarray, rows: torch.Tensor) -> None:
            if 5 in js:
                raise DataError("cannot read row 5", hint="rebuild the cache")
            super().__call__(slot, js, rows)

    broken = F.RingFeeder(split, EpochBatches(N, 2, False, train=False), _cpu(), Broken(split))
    with pytest.raises(DataError, match="row 5"):
        list(broken)
    assert _feed_threads() == []


# ---------------------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("feed", ["device", "pinned", "stream", "workers"])
def test_each_rank_feeds_its_slice(feed: str, cache: UInt8Cache) -> None:
    split = _split(cache)
    seen: list[int] = []
    for rank in (0, 1):
        rt = _cpu(dist=DistInfo(world_size=2, rank=rank, local_rank=rank))
        feeder = make_feeder(split, 4, rt, train=True, seed=6, feed=feed)
        mine = EpochBatches(len(split), 4, True, seed=6, world_size=2, rank=rank)
        feeder.set_epoch(1)
        mine.set_epoch(1)
        got = list(feeder)
        assert [b.index.tolist() for b in got] == [split.rows[b].tolist() for b in mine.batches()]
        assert all(len(b) == 2 for b in got)  # half of each global batch of 4
        _assert_same(got, _loader_batches(split, mine, rt))
        seen += [i for b in got for i in b.index.tolist()]
    assert set(seen) == set(split.rows.tolist())


# ---------------------------------------------------------------------------------------------------- CUDA
def _cuda() -> Runtime:
    return Runtime(torch.device("cuda", 0), channels_last=True, pin_memory=True)


@pytest.mark.gpu
@pytest.mark.parametrize("feed", ["device", "pinned", "stream"])
def test_cuda_feeders_give_the_cpu_batches(feed: str, cache: UInt8Cache) -> None:
    split = _split(cache, rows=np.arange(N))
    gpu, cpu = _cuda(), _cpu(channels_last=True)
    feeder = make_feeder(split, 4, gpu, train=True, seed=8, feed=feed)
    reference = EpochBatches(N, 4, True, seed=8)
    if feed == "device":
        assert gpu.held[cache]["device"].images.is_cuda
    if feed == "pinned":
        assert gpu.held[cache]["host"].images.is_pinned()
    for epoch, skip in ((0, 0), (1, 2)):
        feeder.set_epoch(epoch, skip)
        reference.set_epoch(epoch, skip)
        got = list(feeder)
        torch.cuda.synchronize()
        want = _loader_batches(split, reference, cpu)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.image.is_cuda and g.image.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(g.image.cpu(), w.image) and torch.equal(g.target.cpu(), w.target)
            assert torch.equal(g.index.cpu(), w.index)


class _SlowCopies(_Watched):
    """Every copy out of the ring is queued behind a long kernel on the side stream, so it is still in flight when
    the buffer goes back to the thread: only waiting for the copy's event keeps the thread from overwriting it."""

    def copy_out(self, slot: object) -> Batch:
        with torch.cuda.stream(self.stream_for()):
            torch.cuda._sleep(5_000_000)
        return super().copy_out(slot)


@pytest.mark.gpu
def test_cuda_ring_never_overwrites_a_buffer_whose_copy_is_in_flight(cache: UInt8Cache) -> None:
    split = _split(cache, rows=np.arange(N))
    gpu = _cuda()
    for gather in (F.StreamGather(split), F.HeldGather(split, F.hold_rows(gpu, cache, cache.rows, on_device=False))):
        feeder = _SlowCopies(split, EpochBatches(N, 2, True, seed=9), gpu, gather, depth=2)
        assert all(s.image.is_pinned() for s in feeder._ring())
        got = [batch.image.clone() for batch in feeder]  # the thread writes 255 into a buffer before filling it
        torch.cuda.synchronize()
        want = _loader_batches(split, EpochBatches(N, 2, True, seed=9), _cpu())
        assert len(got) == len(want) and all(torch.equal(g.cpu(), w.image) for g, w in zip(got, want, strict=True))


@pytest.mark.gpu
def test_cuda_runtime_defaults_to_mixed_precision_and_cudnn_autotuning() -> None:
    from medkit.engine.runtime import GPU_LOSS_EVERY, resolve_runtime

    rt = resolve_runtime("cuda")
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert rt.amp_dtype == want and rt.channels_last and rt.pin_memory
    assert rt.cudnn_benchmark and torch.backends.cudnn.benchmark and rt.loss_every == GPU_LOSS_EVERY
    assert resolve_runtime("cuda", "off").amp_dtype is None
    assert not resolve_runtime("cuda", deterministic=True).cudnn_benchmark

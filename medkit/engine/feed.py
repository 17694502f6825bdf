"""Feeding the model: the batch order of every epoch, and feeders that hand out batches already on the device.

`EpochBatches` fixes the order of every epoch from ``seed + epoch`` alone, so a run resumed at batch k of an epoch
sees exactly the batches an uninterrupted run would, and under DDP every rank takes its own slice of the same
permutation.

A `Feeder` is what the training loop and `medkit.engine.predict.predict` iterate: ``set_epoch(epoch, skip)``,
then ``for batch in feeder`` yields `Batch` objects whose tensors are on the runtime's device. `LoaderFeeder` is
the DataLoader path (``--feed workers``): one DataLoader per split (built once, workers kept across epochs) over
`medkit.data.loader.ImageDataset`, uint8 batches pinned on CUDA and copied on a side stream while the previous
batch computes; it is the reference every other feeder matches batch for batch. The feeders that need no
DataLoader (the cache held in device memory, a pinned host tensor with a ring of buffers, rows streamed from the
memmap) and the choice between them by size are `medkit.engine.feeders`; `make_feeder` returns the chosen one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medkit.engine._worker_errors import GuardedDataset, guarded_collate, raise_if_failed
from medkit.errors import UsageError

__all__ = ["Batch", "EpochBatches", "Feeder", "LoaderFeeder", "make_loader", "make_feeder", "on_side_stream"]


@dataclass
class Batch:
    """One batch.

    Attributes:
        image: uint8 ``(B, C, H, W)`` (channels-last memory layout from the loader).
        target: ``(B, K)`` float 0/1 columns or ``(B,)`` long labels; ``(B, 0)`` when there are none.
        index: ``(B,)`` long: the row of each image in the full source (ELR, OOF positions).
    """

    image: Any
    target: Any
    index: Any

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: Any, channels_last: bool = False, copy: bool = False) -> Batch:
        """The batch on ``device`` (non-blocking copies: the source should be pinned); ``copy`` copies even when
        the tensors are already there (a batch that must not share memory with a buffer that is reused)."""
        import torch

        fmt = torch.channels_last if channels_last else torch.preserve_format
        return Batch(
            self.image.to(device, non_blocking=True, memory_format=fmt, copy=copy),
            self.target.to(device, non_blocking=True, copy=copy),
            self.index.to(device, non_blocking=True, copy=copy),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Batch:
        """From the ``{"image", "target", "index"}`` dict a DataLoader collates."""
        return cls(d["image"], d["target"], d["index"])


class EpochBatches:
    """Batch order of one epoch from ``seed + epoch``: resumable at any batch and split across DDP ranks.

    Like ``DistributedSampler`` the permutation is padded (repeating its start) to a multiple of
    ``world_size * batch_size`` rows when ``drop_last`` is False, and rank r takes every world_size-th batch row
    slice; evaluation de-duplicates the padded rows by index. A training epoch whose last batch would hold a
    single image drops it, since batch norm cannot train on one sample.

    Args:
        n: Number of rows.
        batch_size: Global batch size (split evenly across ranks).
        shuffle: Permute each epoch (training) or keep the order (evaluation).
        seed: Base seed; epoch e uses ``seed + e``.
        world_size: DDP processes.
        rank: This process.
        train: Training mode (drops a trailing one-image batch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        train: bool = True,
    ) -> None:
        if batch_size < world_size:
            raise UsageError(
                f"batch size {batch_size} is smaller than the {world_size} processes",
                hint="raise --batch-size to at least the number of processes",
            )
        self.n, self.shuffle, self.seed = int(n), shuffle, int(seed)
        self.world_size, self.rank, self.train = world_size, rank, train
        self.local_batch = batch_size // world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and how many of this rank's first batches to skip (resume)."""
        self.epoch, self.skip = int(epoch), int(skip_batches)

    def _global_order(self) -> np.ndarray:
        if self.shuffle:
            import torch

            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(self.n, generator=g).numpy()
        return np.arange(self.n)

    def batches(self) -> list[np.ndarray]:
        """This rank's batches (row positions 0..n-1) for the whole epoch, skipped ones included."""
        order = self._global_order()
        step = self.local_batch * self.world_size
        total = math.ceil(self.n / step) * step if self.n else 0
        if total > self.n:
            order = np.concatenate([order, np.resize(order, total - self.n)])
        out = []
        for start in range(0, total, step):
            chunk = order[start : start + step]
            mine = chunk[self.rank :: self.world_size]
            # The padded rows of the last global batch: in training keep only real rows on one process.
            if self.world_size == 1 and start + step > self.n:
                mine = chunk[: self.n - start]
            out.append(mine)
        if self.train and out and len(out[-1]) == 1 and self.n > 1:
            out = out[:-1]
        return out

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.skip)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches()[self.skip :])


@runtime_checkable
class Feeder(Protocol):
    """What the loop iterates: batches of one epoch, already on the device."""

    order: EpochBatches

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch (its permutation) and skip this many batches of it (resume)."""
        ...

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


def make_loader(split: Any, order: EpochBatches, workers: int = 0, pin_memory: bool = False) -> Any:
    """The one DataLoader medkit reads batches with; build it once per split and run.

    Each batch is read with one ``source.get_batch`` call (``ImageDataset.__getitems__``); ``index`` is the row
    in the full source (what ELR and the OOF table need; `Split.positions` maps it back). Every ``iter()`` of the
    loader asks ``order`` for its batches afresh, so ``order.set_epoch(e, skip)`` before iterating is all a new
    epoch needs, and with ``workers > 0`` the worker processes persist across epochs instead of being started
    again. The loader gets its own fixed generator: DataLoader draws a base seed for its workers on every
    ``iter()``, and drawing it from the global RNG would shift every later random number and break exact resume;
    the workers only decode (no randomness), so the batches do not depend on that seed.

    Args:
        split: A `medkit.data.dataset.Split` (source, rows, targets).
        order: The batch order.
        workers: DataLoader worker processes (0: read in this process).
        pin_memory: Pin batches in page-locked memory (CUDA).
    """
    import torch
    from torch.utils.data import DataLoader

    from medkit.data.loader import ImageDataset, collate
    from medkit.device import seed_worker

    g = torch.Generator()
    g.manual_seed(order.seed)
    dataset: Any = ImageDataset(split.source, split.all_targets, split.rows)
    return DataLoader(
        GuardedDataset(dataset) if workers > 0 else dataset,  # a worker's error arrives as raised, not a traceback
        batch_sampler=order,
        collate_fn=guarded_collate(collate) if workers > 0 else collate,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=g,
    )


class LoaderFeeder:
    """A `Feeder` over `make_loader`: host batches from DataLoader workers, copied to the device ahead of use.

    On CUDA the copy of batch k+1 is issued on a side stream before batch k is handed out, so it overlaps the
    step on batch k; elsewhere the batch is moved when it is handed out.

    Args:
        split: The split to feed.
        order: Its batch order (`EpochBatches`).
        runtime: The `medkit.engine.runtime.Runtime` (device, pinning, workers, channels-last).
    """

    def __init__(self, split: Any, order: EpochBatches, runtime: Any) -> None:
        self.split, self.order, self.runtime = split, order, runtime
        self.loader = make_loader(split, order, runtime.workers, runtime.pin_memory)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``skip`` batches."""
        self.order.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        rt = self.runtime
        if not rt.cuda:
            for d in self.loader:
                yield Batch.from_dict(raise_if_failed(d)).to(rt.device, rt.channels_last)
            return
        yield from self._prefetched()

    def _prefetched(self) -> Iterator[Batch]:
        import torch

        rt = self.runtime
        stream = torch.cuda.Stream(device=rt.device)
        it = iter(self.loader)

        def load() -> Batch | None:
            d = raise_if_failed(next(it, None))
            if d is None:
                return None
            with torch.cuda.stream(stream):
                return Batch.from_dict(d).to(rt.device, rt.channels_last)

        yield from on_side_stream(load, rt, stream)


def on_side_stream(load: Callable[[], Batch | None], runtime: Any, stream: Any) -> Iterator[Batch]:
    """Hand out the batches of ``load``, whose copies are issued on the side ``stream`` one batch ahead (CUDA): the
    copy of batch k+1 overlaps the step on batch k."""
    import torch

    nxt = load()
    while nxt is not None:
        main = torch.cuda.current_stream(runtime.device)
        main.wait_stream(stream)
        batch = nxt
        # The tensors were made on the side stream; tell the allocator the main stream uses them now.
        for t in (batch.image, batch.target, batch.index):
            t.record_stream(main)
        nxt = load()
        yield batch


def make_feeder(split: Any, batch_size: int, runtime: Any, *, train: bool, seed: int = 0, feed: str = "auto") -> Feeder:
    """The feeder of one split: shuffled, one-image tail dropped (training) or in order, padded across ranks.

    Args:
        split: The split to feed.
        batch_size: Global batch size.
        runtime: The `medkit.engine.runtime.Runtime`.
        train: Training order (shuffled per epoch) or evaluation order.
        seed: Seed of the batch order.
        feed: ``auto`` (chosen by size, `medkit.engine.feeders.choose_feed`), ``device``, ``pinned``, ``stream``
            or ``workers`` (`LoaderFeeder`).

    Raises:
        UsageError: An unknown feed, or one that cannot feed this split (files without a cache need ``workers``).
    """
    from medkit.engine.feeders import feeder_for, plan_feed

    order = EpochBatches(len(split), batch_size, train, seed, runtime.dist.world_size, runtime.dist.rank, train=train)
    return feeder_for(plan_feed([split], runtime, feed).name, split, order, runtime)

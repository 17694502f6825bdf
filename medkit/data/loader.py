"""Dataset and DataLoader over a source (cache, files, arrays), device transfer, prefetching and profiling.

Batches are dicts ``{"image": uint8 (B, C, H, W), "target": (B, K) float or (B,) long, "index": long (B,)}``.
Images stay uint8 until they are on the device (4x less to copy than float32); `medkit.data.augment.BatchAugment`
converts and normalises them there. A batch is fetched with one ``source.get_batch(rows)`` call (one fancy index
into the memmap for a cache) through the dataset's ``__getitems__``, and arrives in channels-last memory layout
(the (B, H, W, C) buffer seen as (B, C, H, W)), which is what a channels-last model wants.

Under DDP, `make_loader(distributed=True)` uses a ``DistributedSampler``; the training loop must call
``loader.sampler.set_epoch(epoch)`` at the start of every epoch, or every epoch repeats the same order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medkit.errors import DataError, UsageError

__all__ = [
    "ImageDataset",
    "make_loader",
    "default_workers",
    "collate",
    "to_device",
    "CUDAPrefetcher",
    "Profiler",
]


def _targets_tensor(targets: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(targets))
    if t.dtype.is_floating_point:
        return t.float()
    if t.dtype == torch.bool:
        return t.float()
    return t.long()


class ImageDataset(Dataset):
    """Rows of a source with their targets: items ``{"image": uint8 (C, H, W), "target": tensor, "index": int}``.

    Args:
        source: Anything with ``len``, ``source[i] -> uint8 (H, W, C)`` and ``get_batch(rows)``: `UInt8Cache`,
            `FileSource`, `ArraySource`.
        targets: (N,) or (N, K) targets for the full table (float = multi-hot/probabilities, int = class index), or
            None (prediction): ``target`` is then an empty float tensor.
        indices: Rows of the full table in this dataset (a fold's training rows); None = all rows. ``index`` in
            every item is the row in the full table (used by ELR and out-of-fold predictions).
    """

    def __init__(self, source: Any, targets: np.ndarray | None = None, indices: Sequence[int] | None = None) -> None:
        self.source = source
        n = len(source)
        if targets is not None:
            targets = np.asarray(targets)
            if len(targets) != n:
                raise DataError(
                    f"{len(targets)} targets for {n} images",
                    hint="the targets must have one row per image of the source",
                )
        self.targets = targets
        self._targets_t = _targets_tensor(targets) if targets is not None else None
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise DataError(f"dataset indices out of range for {n} images", hint="check the fold's row indices")

    def __len__(self) -> int:
        return len(self.indices)

    def _target(self, rows: np.ndarray | int) -> torch.Tensor:
        if self._targets_t is None:
            return torch.zeros((len(rows), 0) if isinstance(rows, np.ndarray) else (0,))
        return self._targets_t[torch.from_numpy(rows)] if isinstance(rows, np.ndarray) else self._targets_t[rows]

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.indices[j])
        img = torch.from_numpy(np.asarray(self.source[i])).permute(2, 0, 1)
        return {"image": img, "target": self._target(i), "index": i}

    def __getitems__(self, js: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch in one source read (DataLoader calls this instead of ``__getitem__`` per sample)."""
        rows = self.indices[np.asarray(js, dtype=np.int64)]
        shape = getattr(self.source, "shape", None)
        if shape is not None:
            images = _batch_buffer((len(rows), *shape[1:]))
            self.source.get_batch(rows, out=images.numpy())
        else:
            images = torch.from_numpy(np.ascontiguousarray(self.source.get_batch(rows)))
        return {
            "image": images.permute(0, 3, 1, 2),
            "target": self._target(rows),
            "index": torch.from_numpy(rows),
        }


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 buffer for one batch; in a DataLoader worker it lives in shared memory from the start.

    The batch then reaches the main process without the extra copy into shared memory that sending an ordinary
    tensor costs (default_collate does the same for the tensors it stacks).
    """
    from torch.utils.data import get_worker_info

    numel = int(np.prod(shape))
    if get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(numel)
            return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        except (AttributeError, RuntimeError):  # private API: fall back to an ordinary buffer
            pass
    return torch.empty(shape, dtype=torch.uint8)


def collate(batch: Any) -> dict[str, torch.Tensor]:
    """Collate to ``{"image": uint8 (B, C, H, W), "target", "index"}`` (a batch from ``__getitems__`` passes)."""
    if isinstance(batch, dict):
        return batch
    from torch.utils.data import default_collate

    out = default_collate(batch)
    return out


def default_workers(cap: int = 8) -> int:
    """DataLoader workers for this machine: the usable cores minus one for the training process, at most ``cap``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(0, min(cap, cores - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int | None = None,
    drop_last: bool = False,
    distributed: bool = False,
    device: Any = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader with defaults chosen for the machine: uint8 batches, pinned when the device is CUDA.

    Args:
        dataset: Usually an `ImageDataset`.
        batch_size: Samples per batch (per process under DDP).
        shuffle: Shuffle every epoch (reproducibly from ``seed``).
        seed: Seeds the shuffle generator (and the DistributedSampler) and, through it, every worker.
        workers: Worker processes; None = `default_workers`.
        drop_last: Drop the last incomplete batch (training with BatchNorm).
        distributed: Use a ``DistributedSampler`` (needs an initialised process group); call
            ``loader.sampler.set_epoch(epoch)`` every epoch.
        device: The training device; pinned memory when it is CUDA (None = CUDA if available).
        prefetch_factor: Batches prefetched per worker (None = 4 with workers).

    Returns:
        The DataLoader.

    Raises:
        UsageError: For a non-positive batch size, or ``distributed`` without a process group.
    """
    from medkit.device import seed_worker

    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    workers = default_workers() if workers is None else max(0, int(workers))
    dev_type = getattr(device, "type", str(device)) if device is not None else None
    pin = torch.cuda.is_available() and (dev_type is None or dev_type == "cuda")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    sampler = None
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise UsageError(
                "distributed loader requested but torch.distributed is not initialised",
                hint="launch with torchrun, or drop distributed=True",
            )
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=int(seed), drop_last=drop_last)
        shuffle = False
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor or 4)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
        **kwargs,
    )


def to_device(batch: dict[str, Any], device: Any, channels_last: bool = True) -> dict[str, Any]:
    """Copy a batch's tensors to ``device`` with non-blocking transfers (the source should be pinned).

    Args:
        batch: A batch dict; non-tensor values pass through.
        device: Target device.
        channels_last: Keep 4-D images in channels-last layout (what the loader produces, and what conv nets on
            tensor cores prefer).
    """
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            if channels_last and v.ndim == 4:
                v = v.to(device, non_blocking=True, memory_format=torch.channels_last)
            else:
                v = v.to(device, non_blocking=True)
        out[k] = v
    return out


class CUDAPrefetcher:
    """Iterate a loader with the next batch's host-to-device copy overlapping the current step (CUDA side stream).

    On a device that is not CUDA it simply applies `to_device`.

    Args:
        loader: An iterable of batch dicts (pinned for the overlap to happen).
        device: Target device.
    """

    def __init__(self, loader: Any, device: Any) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._cuda:
            for batch in self.loader:
                yield to_device(batch, self.device)
            return
        stream = torch.cuda.Stream(device=self.device)
        it = iter(self.loader)

        def load() -> dict[str, Any] | None:
            try:
                batch = next(it)
            except StopIteration:
                return None
            with torch.cuda.stream(stream):
                return to_device(batch, self.device)

        nxt = load()
        while nxt is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
            batch = nxt
            # The tensors were made on the side stream; tell the allocator the main stream uses them now.
            for v in batch.values():
                if isinstance(v, torch.Tensor):
                    v.record_stream(torch.cuda.current_stream(self.device))
            nxt = load()
            yield batch


class Profiler:
    """Time data wait vs step per training step (``--profile``) and summarise.

    Usage::

        prof = Profiler(enabled=profile, device=device)
        for batch in prof.iter(loader):
            with prof.step(len(batch["index"])):
                ...  # forward, backward, optimizer step
        prof.summary()  # dict; prof.report() logs it to stderr

    When enabled, CUDA is synchronised at both boundaries so the times are real (this slows training a little,
    which is why it is off by default); when disabled it only counts images.

    Args:
        enabled: Record times.
        device: The training device (synchronised when CUDA).
        skip: Steps ignored at the start (worker start-up, cudnn autotuning, compilation).
    """

    def __init__(self, enabled: bool = True, device: Any = None, skip: int = 2) -> None:
        self.enabled = enabled
        self.device = torch.device(device) if device is not None else None
        self.skip = skip
        self.data_s: list[float] = []
        self.step_s: list[float] = []
        self.images: list[int] = []

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def iter(self, loader: Any) -> Iterator[Any]:
        """Wrap a loader, timing how long each ``next`` waits."""
        it = iter(loader)
        while True:
            if self.enabled:
                self._sync()
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            if self.enabled:
                self.data_s.append(time.perf_counter() - t0)
            yield batch

    @contextlib.contextmanager
    def step(self, n_images: int) -> Iterator[None]:
        """Time one training step of ``n_images`` images."""
        t0 = time.perf_counter()
        yield
        if self.enabled:
            self._sync()
            self.step_s.append(time.perf_counter() - t0)
        self.images.append(int(n_images))

    def summary(self) -> dict[str, float]:
        """Mean data-wait and step milliseconds, the fraction of time waiting for data, and images per second."""
        k = min(len(self.data_s), len(self.step_s))
        s = self.skip if k > self.skip else 0
        data, step = np.asarray(self.data_s[s:k]), np.asarray(self.step_s[s:k])
        imgs = float(sum(self.images[s:k]))
        total = float(data.sum() + step.sum())
        return {
            "steps": float(len(data)),
            "data_wait_ms": float(data.mean() * 1e3) if len(data) else 0.0,
            "step_ms": float(step.mean() * 1e3) if len(step) else 0.0,
            "wait_fraction": float(data.sum() / total) if total > 0 else 0.0,
            "img_per_s": imgs / total if total > 0 else 0.0,
        }

    def report(self) -> dict[str, float]:
        """Log the summary on stderr and return it."""
        from medkit.console import info

        s = self.summary()
        info(
            f"profile: {int(s['steps'])} steps, data wait {s['data_wait_ms']:.1f} ms, step {s['step_ms']:.1f} ms, "
            f"waiting {100 * s['wait_fraction']:.0f}% of the time, {s['img_per_s']:.0f} img/s"
        )
        return s

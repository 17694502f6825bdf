"""Feeders without a DataLoader, and the choice of a feeder by size (``--feed``).

The uint8 rows a run trains on live in one of four places, and each has its feeder (`medkit.engine.feed.Feeder`):

``device``  the rows are held in device memory (loaded once, in chunks, from the memmap); a batch is one index
            gather there (`DeviceFeeder`). No worker, no copy per batch.
``pinned``  the rows are held in host memory as one tensor (page-locked on CUDA); a background thread gathers each
            batch with ``index_select`` into a ring of buffers and the batch is copied to the device on a side
            stream (`RingFeeder` with `HeldGather`).
``stream``  the cache is larger than the memory share: the background thread reads each batch's rows from the
            memmap, in stored order, into the ring (`RingFeeder` with `StreamGather`).
``workers`` files decoded on the fly (no cache): the DataLoader path, `medkit.engine.feed.LoaderFeeder`.

`choose_feed` is the rule (a pure function of the sizes); `plan_feed` measures the sizes, decides once and holds
the rows of every split it is given, so the training, validation and test feeders of a run share one copy
(`Runtime.held`). Every feeder yields exactly the batches of the DataLoader path for the same `EpochBatches`:
the same pixels, targets and row indices, the same dtypes and memory layout. Only the calls that need CUDA
(pinning, streams, events, non-blocking copies) depend on the device; on a CPU the same gather and ring code runs.

2.5D stacks (`medkit.data.context.StackSource`): what is held is the per-slice source behind the stacks, each slice
once; a batch gathers the K slices of every stack there and assembles them into channels on the device
(`StackSource.assemble`). The kind, the size and the held rows are those of the slices.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medkit.engine.feed import Batch, EpochBatches, LoaderFeeder, on_side_stream
from medkit.errors import UsageError, did_you_mean

__all__ = [
    "FEEDS",
    "FeedChoice",
    "choose_feed",
    "plan_feed",
    "source_kind",
    "available_ram",
    "free_device_memory",
    "HeldRows",
    "hold_rows",
    "DeviceFeeder",
    "RingFeeder",
    "HeldGather",
    "StreamGather",
    "check_feed",
    "feeder_for",
]

FEEDS = ("auto", "device", "pinned", "stream", "workers")
#: Share of the free GPU memory a cache may take on the device (the rest is for the model, its activations and
#: the optimizer).
DEVICE_SHARE = 0.5
#: Share of the available RAM a cache may take as one host tensor.
RAM_SHARE = 0.5
#: Buffers in a ring: the batch being copied, the one being filled and two ready ones absorb jitter.
RING_DEPTH = 4
#: Bytes read per chunk while a cache is loaded to the device (bounds the pinned staging memory).
_LOAD_CHUNK_BYTES = 256 * 2**20


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class FeedChoice:
    """The feeder of a run and why (printed once, recorded in run.json).

    Attributes:
        name: ``device``, ``pinned``, ``stream`` or ``workers``.
        reason: One line with the sizes that decided it.
    """

    name: str
    reason: str

    def __str__(self) -> str:
        return f"feed: {self.name}, {self.reason}"


def check_feed(name: str) -> str:
    """``name`` if it is one of `FEEDS`.

    Raises:
        UsageError: For any other name, with a suggestion.
    """
    if name not in FEEDS:
        raise UsageError(f"unknown feed '{name}'{did_you_mean(name, FEEDS)}", hint=f"use one of: {', '.join(FEEDS)}")
    return name


def choose_feed(
    requested: str,
    kind: str,
    device_type: str,
    cache_bytes: int,
    free_device_bytes: int | None,
    available_ram_bytes: int | None,
) -> FeedChoice:
    """Which feeder, from the sizes alone.

    ``auto``: files (no cache) -> ``workers``; on CUDA, a cache that fits in `DEVICE_SHARE` of the free GPU memory
    -> ``device`` (on a CPU the device memory is the RAM: `RAM_SHARE` of the available RAM); else one that fits in
    `RAM_SHARE` of the available RAM as a host tensor -> ``pinned`` (an in-memory array needs no second copy unless
    it is pinned); else ``stream``. A name other than ``auto`` is taken as it is, except that files without a cache
    can only be fed by ``workers``.

    Args:
        requested: One of `FEEDS`.
        kind: What the rows come from (`source_kind`): ``memmap`` (a `UInt8Cache`), ``array`` (uint8 images in
            memory), ``computed`` (an in-memory array prepared per access) or ``files``.
        device_type: ``cuda``, ``cpu`` or ``mps``.
        cache_bytes: Bytes of the rows the run reads.
        free_device_bytes: Free GPU memory (None where unknown).
        available_ram_bytes: Available host memory (None where unknown).

    Raises:
        UsageError: An unknown name, or ``device`` / ``pinned`` / ``stream`` for files without a cache.
    """
    check_feed(requested)
    size = f"cache {_gib(cache_bytes)}"
    if kind == "files":
        if requested not in ("auto", "workers"):
            raise UsageError(
                f"--feed {requested} needs the images in a cache or an array; these are files decoded on the fly",
                hint="add --cache DIR, or use --feed auto / workers",
            )
        return FeedChoice("workers", "files decoded on the fly by DataLoader workers (no --cache)")
    if requested != "auto":
        return FeedChoice(requested, f"as requested (--feed {requested}); {size}")
    ram = available_ram_bytes
    fits_ram = ram is not None and cache_bytes <= RAM_SHARE * ram
    ram_note = f"{_gib(ram)} RAM available" if ram is not None else "RAM unknown"
    if device_type == "cuda" and free_device_bytes is not None:
        if cache_bytes <= DEVICE_SHARE * free_device_bytes:
            return FeedChoice("device", f"{size} of {_gib(free_device_bytes)} free on the GPU")
        gpu_note = f"{size} > {DEVICE_SHARE:.0%} of {_gib(free_device_bytes)} free on the GPU"
    elif device_type == "cpu":
        if fits_ram or kind == "array":
            return FeedChoice("device", f"{size} held in memory (the CPU is the device; {ram_note})")
        gpu_note = f"{size} > {RAM_SHARE:.0%} of {ram_note}"
    else:
        gpu_note = f"{size}; no free-memory figure for {device_type}"
    if fits_ram or (kind == "array" and device_type != "cuda"):
        return FeedChoice("pinned", f"{gpu_note}; held in host memory ({ram_note})")
    return FeedChoice("stream", f"{gpu_note}; > {RAM_SHARE:.0%} of {ram_note}: rows read from the cache per batch")


def available_ram() -> int | None:
    """Bytes of host memory available to new allocations (``MemAvailable``: free plus reclaimable page cache)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def free_device_memory(runtime: Any) -> int | None:
    """Free bytes on the runtime's GPU (None off CUDA), counting memory this process's allocator keeps cached but
    unused (the previous fold's cache, for instance) as free."""
    if not runtime.cuda:
        return None
    import torch

    dev = runtime.device
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return int(torch.cuda.mem_get_info(dev)[0] + max(0, cached))


def _stack_of(source: Any) -> Any:
    """The `medkit.data.context.StackSource` when ``source`` gives 2.5D stacks, else None."""
    from medkit.data.context import StackSource

    return source if isinstance(source, StackSource) else None


def _per_slice(source: Any, rows: np.ndarray) -> tuple[Any, np.ndarray]:
    """The source that holds the pixels and its rows behind ``rows``: for stacks, the slices of every stack
    (``(len(rows) * K,)``, stack by stack); for any other source, the source and the rows themselves."""
    stack = _stack_of(source)
    if stack is None:
        return source, np.asarray(rows, dtype=np.int64)
    return stack.base, stack.base_rows(rows)


def source_kind(source: Any) -> str:
    """``memmap`` (a `UInt8Cache`), ``array`` (uint8 images in memory, used as they are), ``computed`` (an
    in-memory array with a `Preprocess` applied per access) or ``files`` (decoded on the fly); for 2.5D stacks,
    the kind of the slices behind them."""
    from medkit.data.cache import UInt8Cache
    from medkit.data.pipeline import ArraySource

    if (stack := _stack_of(source)) is not None:
        return source_kind(stack.base)
    if isinstance(source, UInt8Cache):
        return "memmap"
    if isinstance(source, ArraySource):
        return "array" if source.preprocess is None else "computed"
    return "files"


def _stored(source: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of the stored array (the memmap's sorted order for a cache) behind source rows."""
    rows = np.asarray(rows, dtype=np.int64)
    return source.rows[rows] if source_kind(source) == "memmap" else rows


def _row_shape(source: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in source.shape[1:])


def plan_feed(splits: Sequence[Any], runtime: Any, requested: str = "auto") -> FeedChoice:
    """Decide the feeder of the ``splits`` once, and hold their rows when the choice holds them.

    The rows of every split that shares a source are held together, once (`hold_rows`): the training, validation
    and test feeders of a run then find them in ``runtime.held``. A source already held on the device (or in host
    memory) keeps its place under ``auto``.

    Args:
        splits: The `medkit.data.dataset.Split` objects to feed (None entries are skipped).
        runtime: The `medkit.engine.runtime.Runtime`.
        requested: One of `FEEDS`.
    """
    check_feed(requested)
    by_source: dict[int, tuple[Any, list[np.ndarray]]] = {}
    for split in splits:
        if split is not None:
            src, rows = _per_slice(split.source, split.rows)  # stacks: their slices are what is held
            by_source.setdefault(id(src), (src, []))[1].append(rows)
    if not by_source:
        return FeedChoice("workers", "nothing to feed")
    kinds = {source_kind(src) for src, _ in by_source.values()}
    kind = next(k for k in ("files", "memmap", "computed", "array") if k in kinds)  # the most restrictive
    held = [runtime.held.get(src, {}) for src, _ in by_source.values()]
    if requested == "auto" and all(h.get("device") for h in held):
        return FeedChoice("device", "the rows are already held on the device")
    need = {
        key: np.unique(_stored(src, np.concatenate(rows))) for key, (src, rows) in by_source.items() if kind != "files"
    }
    nbytes = sum(len(need[k]) * int(np.prod(_row_shape(src))) for k, (src, _) in by_source.items() if k in need)
    ram = available_ram()
    if ram is not None:
        ram //= runtime.dist.on_this_node  # every process on this machine holds its own host copy
    choice = choose_feed(requested, kind, runtime.device.type, nbytes, free_device_memory(runtime), ram)
    if choice.name in ("device", "pinned"):
        for key, (src, _) in by_source.items():
            hold_rows(runtime, src, need[key], on_device=choice.name == "device")
    return choice


# ---------------------------------------------------------------------------------------------------- held rows
@dataclass
class HeldRows:
    """Stored rows of one source held as one uint8 ``(K, H, W, C)`` tensor.

    Attributes:
        images: The rows, on the device or in host memory.
        position: Stored row -> its position in ``images`` (-1: not held).
    """

    images: Any
    position: np.ndarray

    def covers(self, stored: np.ndarray) -> bool:
        """Whether every one of the stored rows is held."""
        stored = np.asarray(stored, dtype=np.int64)
        return bool(len(stored) == 0 or (stored.max() < len(self.position) and (self.position[stored] >= 0).all()))

    def positions(self, stored: np.ndarray) -> np.ndarray:
        """Positions in ``images`` of stored rows (all of them held)."""
        return self.position[np.asarray(stored, dtype=np.int64)]


def _reader(source: Any) -> Callable[[np.ndarray, np.ndarray], None]:
    """A function that copies stored rows (sorted) of ``source`` into a uint8 numpy array."""
    kind = source_kind(source)
    if kind == "memmap":  # straight from the memmap, in stored order
        return lambda stored, out: np.take(source.array, stored, axis=0, out=out)
    if kind == "array":
        return lambda stored, out: np.take(source.images, stored, axis=0, out=out)
    return lambda stored, out: source.get_batch(stored, out=out)  # prepared per access


def _as_is(source: Any, stored: np.ndarray) -> Any:
    """The source's own in-memory array as a tensor when it is exactly the rows wanted (no copy), else None."""
    import torch

    if source_kind(source) != "array" or not source.images.flags.writeable:
        return None
    if len(stored) != len(source) or not np.array_equal(stored, np.arange(len(source))):
        return None
    return torch.from_numpy(np.ascontiguousarray(source.images))


def _load(source: Any, stored: np.ndarray, runtime: Any, on_device: bool) -> Any:
    """The stored rows as one tensor, on the device or in host memory (pinned on CUDA), filled chunk by chunk."""
    import torch

    target = runtime.device if on_device else torch.device("cpu")
    pin = runtime.pin_memory and not on_device
    as_is = _as_is(source, stored)
    if as_is is not None and target.type == "cpu" and not pin:
        return as_is
    shape = (len(stored), *_row_shape(source))
    out = torch.empty(shape, dtype=torch.uint8, device=target, pin_memory=pin)
    read = _reader(source)
    step = max(1, _LOAD_CHUNK_BYTES // max(1, int(np.prod(shape[1:]))))
    if out.device.type == "cpu":
        arr = out.numpy()
        for a in range(0, len(stored), step):
            read(stored[a : a + step], arr[a : a + step])
        return out
    _load_chunks(read, stored, out, step, runtime)
    return out


def _load_chunks(read: Callable[..., None], stored: np.ndarray, out: Any, step: int, runtime: Any) -> None:
    """Fill a device tensor through two host staging buffers, so reading a chunk overlaps copying the last."""
    import torch

    pin = runtime.pin_memory
    rows = min(step, len(stored))
    staging = [torch.empty((rows, *out.shape[1:]), dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
    done: list[Any] = [None, None]
    stream = torch.cuda.current_stream(runtime.device) if runtime.cuda else None
    for k, a in enumerate(range(0, len(stored), step)):
        buf, n = staging[k % 2], len(stored[a : a + step])
        if done[k % 2] is not None:
            done[k % 2].synchronize()  # the copy out of this buffer has finished
        read(stored[a : a + step], buf.numpy()[:n])
        out[a : a + n].copy_(buf[:n], non_blocking=pin)
        if stream is not None:
            done[k % 2] = stream.record_event()
    if stream is not None:
        stream.synchronize()


def hold_rows(runtime: Any, source: Any, stored: np.ndarray, on_device: bool) -> HeldRows:
    """The stored rows of ``source`` held on the device (``on_device``) or in host memory, shared by the runtime's
    feeders: rows already held are reused; missing ones are loaded together with them, once."""
    import torch

    where = "device" if on_device else "host"
    entry = runtime.held.setdefault(source, {})
    stored = np.asarray(stored, dtype=np.int64)
    have = entry.get(where)
    if have is not None and have.covers(stored):
        return have
    if have is not None:
        stored = np.union1d(np.flatnonzero(have.position >= 0), stored)
        entry.pop(where)  # the old copy goes before the new one is made (device memory)
        del have
    stored = np.unique(stored)
    position = np.full(int(source.shape[0]), -1, dtype=np.int64)
    position[stored] = np.arange(len(stored))
    with torch.inference_mode(False):  # loaded by a first prediction maybe, and read by training later
        entry[where] = HeldRows(_load(source, stored, runtime, on_device), position)
    return entry[where]


# ---------------------------------------------------------------------------------------------------- targets
class _Rows:
    """A split's source rows, and their targets as the DataLoader path makes them (`targets_tensor`)."""

    def __init__(self, split: Any) -> None:
        from medkit.data.loader import targets_tensor

        self.rows = np.asarray(split.rows, dtype=np.int64)
        targets = split.all_targets
        self.targets = targets_tensor(np.asarray(targets)) if targets is not None else None
        self.target_shape = tuple(self.targets.shape[1:]) if self.targets is not None else (0,)
        self.target_dtype = self.targets.dtype if self.targets is not None else None


# ---------------------------------------------------------------------------------------------------- device
class DeviceFeeder:
    """Batches gathered from rows held in device memory: one ``index_select`` per batch, no worker, no copy.

    The row positions of the whole epoch go to the device once per epoch; every batch is then a gather there,
    so the host never waits for the device.

    Args:
        split: The split to feed.
        order: Its batch order.
        runtime: The runtime (device, channels-last, the held rows).
        held: The rows of ``split.source`` (`hold_rows`).
    """

    def __init__(self, split: Any, order: EpochBatches, runtime: Any, held: HeldRows) -> None:
        self.split, self.order, self.runtime, self.held = split, order, runtime, held
        r = _Rows(split)
        self.rows = r.rows
        self.stack = _stack_of(split.source)
        base, base_rows = _per_slice(split.source, r.rows)
        # (rows, K) positions of the slices of every row's stack (K = 1 without stacks)
        self.position = held.positions(_stored(base, base_rows)).reshape(len(r.rows), -1)
        self.targets = r.targets.to(runtime.device) if r.targets is not None else None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``skip`` batches."""
        self.order.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        import torch

        batches = list(self.order)
        if not batches:
            return
        rt = self.runtime
        sizes = [len(b) for b in batches]
        flat = np.concatenate(batches)
        k = self.position.shape[1]
        pos = torch.from_numpy(self.position[flat].reshape(-1)).to(rt.device)
        rows = torch.from_numpy(self.rows[flat]).to(rt.device)
        for p, r in zip(pos.split([s * k for s in sizes]), rows.split(sizes), strict=True):
            image = self.held.images.index_select(0, p)
            if self.stack is not None:
                image = self.stack.assemble(image)  # the K slices of each stack side by side as channels
            # (B, H, W, C) viewed as (B, C, H, W): the channels-last layout the DataLoader path hands out too.
            image = image.permute(0, 3, 1, 2)
            if rt.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            if self.targets is not None:
                target = self.targets.index_select(0, r)
            else:
                target = torch.zeros((len(r), 0), device=rt.device)
            yield Batch(image, target, r)


# ---------------------------------------------------------------------------------------------------- the ring
class _Slot:
    """One host buffer of the ring: a batch of images, targets and row indices, and the copy out of it."""

    def __init__(self, shape: tuple[int, ...], target_shape: tuple[int, ...], target_dtype: Any, pin: bool) -> None:
        import torch

        self.image = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        self.target = torch.empty((shape[0], *target_shape), dtype=target_dtype or torch.float32, pin_memory=pin)
        self.index = torch.empty(shape[0], dtype=torch.int64, pin_memory=pin)
        self.copied: Any = None  # CUDA event recorded after the copy out of this buffer was issued
        self.size = 0

    def wait_copied(self) -> None:
        """Block until the last copy out of this buffer has finished (the buffer may be written again)."""
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None


class HeldGather:
    """Fill a ring buffer from rows held in host memory: ``index_select`` into the buffer, no Python per row."""

    def __init__(self, split: Any, held: HeldRows) -> None:
        self.held = held
        self.stack = _stack_of(split.source)
        base, base_rows = _per_slice(split.source, np.asarray(split.rows))
        self.position = held.positions(_stored(base, base_rows)).reshape(len(split.rows), -1)

    def __call__(self, slot: _Slot, js: np.ndarray, rows: Any) -> None:
        import torch

        pos = torch.from_numpy(self.position[js].reshape(-1))
        if self.stack is None:
            torch.index_select(self.held.images, 0, pos, out=slot.image[: len(js)])
        else:
            slot.image[: len(js)].copy_(self.stack.assemble(torch.index_select(self.held.images, 0, pos)))


class StreamGather:
    """Fill a ring buffer straight from the cache: each batch's rows are read in stored (file) order, then put in
    batch order, so the disk or the page cache is read forwards."""

    def __init__(self, split: Any) -> None:
        self.source = split.source
        self.view = self._tensor_view(split.source)
        self.stored = _stored(split.source, np.asarray(split.rows)) if self.view is not None else None
        self.staging: Any = None

    @staticmethod
    def _tensor_view(source: Any) -> Any:
        """The stored rows as a tensor without a copy (the memmap mapped copy-on-write, or the array), or None
        for a source prepared per access."""
        import torch

        kind = source_kind(source)
        if _stack_of(source) is not None:  # stacks: StackSource.get_batch reads their slices from the cache
            return None
        if kind == "memmap":
            return torch.from_numpy(source.open_array())
        if kind == "array" and source.images.flags.writeable:
            return torch.from_numpy(np.ascontiguousarray(source.images))
        return None

    def __call__(self, slot: _Slot, js: np.ndarray, rows: Any) -> None:
        import torch

        n = len(js)
        if self.view is None:
            self.source.get_batch(rows.numpy(), out=slot.image[:n].numpy())
            return
        stored = self.stored[js]
        order = np.argsort(stored, kind="stable")
        if self.staging is None or self.staging.shape[0] < n:
            self.staging = torch.empty_like(slot.image)
        torch.index_select(self.view, 0, torch.from_numpy(stored[order]), out=self.staging[:n])
        # Row j of the batch was read as row back[j] of the staging buffer (a gather: index_copy_ is much slower).
        back = torch.from_numpy(np.argsort(order, kind="stable"))
        torch.index_select(self.staging[:n], 0, back, out=slot.image[:n])


class RingFeeder:
    """Batches gathered in host memory by a background thread into a ring of buffers, then copied to the device.

    The thread fills buffer k+1 while the batch of buffer k is copied and trained on; on CUDA the buffers are
    page-locked and the copy runs on a side stream, issued one batch ahead. A buffer goes back to the thread only
    after the copy out of it has finished (a CUDA event; elsewhere the copy is synchronous), and a batch is handed
    out only after its buffer is completely filled (the queue between them), so no batch ever sees a buffer that is
    still being written or read.

    Args:
        split: The split to feed.
        order: Its batch order.
        runtime: The runtime (device, pinning, channels-last).
        gather: Fills the images of a buffer: `HeldGather` (``pinned``) or `StreamGather` (``stream``).
        depth: Buffers in the ring.
    """

    def __init__(
        self, split: Any, order: EpochBatches, runtime: Any, gather: Callable[..., None], depth: int = RING_DEPTH
    ) -> None:
        self.split, self.order, self.runtime, self.gather = split, order, runtime, gather
        self.depth = max(2, depth)
        self.info = _Rows(split)
        self.slots: list[_Slot] = []
        self.stream: Any = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``skip`` batches."""
        self.order.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.order)

    def _ring(self) -> list[_Slot]:
        if not self.slots:
            import torch

            shape = (self.order.local_batch, *_row_shape(self.split.source))
            info, pin = self.info, self.runtime.pin_memory
            # Made on the first pass, which may be a prediction under inference_mode: the buffers are written in
            # place later, so they must be ordinary tensors.
            with torch.inference_mode(False):
                self.slots = [_Slot(shape, info.target_shape, info.target_dtype, pin) for _ in range(self.depth)]
        return self.slots

    def fill(self, slot: _Slot, js: np.ndarray) -> None:
        """Write the batch at split positions ``js`` into ``slot`` (in the background thread)."""
        import torch

        n = len(js)
        rows = torch.from_numpy(self.info.rows[js])
        slot.index[:n].copy_(rows)
        if self.info.targets is not None:
            torch.index_select(self.info.targets, 0, rows, out=slot.target[:n])
        self.gather(slot, js, rows)
        slot.size = n

    def copy_out(self, slot: _Slot) -> Batch:
        """The batch of a filled buffer on the device; the buffer is free again once `_Slot.wait_copied` returns."""
        n, rt = slot.size, self.runtime
        host = Batch(slot.image[:n].permute(0, 3, 1, 2), slot.target[:n], slot.index[:n])
        if not rt.cuda:
            return host.to(rt.device, rt.channels_last, copy=True)  # the batch must not share the buffer
        import torch

        stream = self.stream_for()
        with torch.cuda.stream(stream):
            batch = host.to(rt.device, rt.channels_last)
            slot.copied = stream.record_event()
        return batch

    def __iter__(self) -> Iterator[Batch]:
        batches = list(self.order)
        if not batches:
            return
        ring = _Producer(self, batches)
        try:
            if self.runtime.cuda:
                yield from on_side_stream(ring.next_batch, self.runtime, self.stream_for())
            else:
                while (batch := ring.next_batch()) is not None:
                    yield batch
        finally:
            ring.stop()

    def stream_for(self) -> Any:
        """The side stream of the copies (made on first use)."""
        import torch

        if self.stream is None:
            self.stream = torch.cuda.Stream(device=self.runtime.device)
        return self.stream


class _Producer:
    """The background thread of one epoch of a `RingFeeder`, and the two queues between it and the consumer."""

    def __init__(self, feeder: RingFeeder, batches: list[np.ndarray]) -> None:
        self.feeder = feeder
        self.free: queue.Queue[_Slot] = queue.Queue()
        self.ready: queue.Queue[Any] = queue.Queue()
        for slot in feeder._ring():
            self.free.put(slot)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(batches,), name="medkit-feed", daemon=True)
        self.thread.start()

    def _run(self, batches: list[np.ndarray]) -> None:
        try:
            for js in batches:
                slot = self._take_free()
                if slot is None:
                    return
                slot.wait_copied()
                self.feeder.fill(slot, np.asarray(js, dtype=np.int64))
                self.ready.put(slot)
            self.ready.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self.ready.put(exc)

    def _take_free(self) -> _Slot | None:
        while not self.halt.is_set():
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def next_batch(self) -> Batch | None:
        """The next batch on the device (its copy issued), or None at the end of the epoch."""
        item = self.ready.get()
        if item is None:
            return None
        if isinstance(item, BaseException):
            raise item
        batch = self.feeder.copy_out(item)
        self.free.put(item)  # the thread waits for the copy to finish before it writes the buffer again
        return batch

    def stop(self) -> None:
        """End the thread (the consumer stopped early, or the epoch is over)."""
        self.halt.set()
        self.thread.join()


def feeder_for(name: str, split: Any, order: EpochBatches, runtime: Any) -> Any:
    """The feeder called ``name`` (a `FeedChoice` name) over ``split``, holding its rows where the name says."""
    if name == "workers":
        return LoaderFeeder(split, order, runtime)
    if name == "stream":
        return RingFeeder(split, order, runtime, StreamGather(split))
    base, base_rows = _per_slice(split.source, np.asarray(split.rows))
    held = hold_rows(runtime, base, _stored(base, base_rows), on_device=name == "device")
    if name == "device":
        return DeviceFeeder(split, order, runtime, held)
    return RingFeeder(split, order, runtime, HeldGather(split, held))

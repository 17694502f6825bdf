"""A memory-mapped uint8 cache of preprocessed images: decode once, then every epoch reads slices.

Layout of one cache, in ``cache_root/<key>/``::

    images.npy   (N, H, W, C) uint8, memory-mapped (rows in sorted relative-path order)
    done.npy     (N,) bool: rows whose pixels are on disk; flushed every few seconds during a build
    meta.json    the files (relative path, size, mtime_ns), the Preprocess parameters, the shape

``key`` hashes the sorted (relative path, size, mtime_ns) of the files and ``Preprocess.key()``: touching or
changing a file, adding or removing one, or changing a parameter gives a new key and so a new cache (old ones are
left in place; delete ``cache_root`` to reclaim the space). A new cache first copies the finished rows of files
that did not change from older caches with the same root and parameters, so only new or changed files are
decoded. An interrupted build resumes: only rows not marked done are computed. Workers (forked from a fork server
that imported only numpy, cv2, this module and the readers) take large chunks of rows, about four per worker, and
write them into the cache file (one ``pwrite`` per row); the parent marks a chunk's rows done when it comes back
and, every few seconds, writes the pixels to disk (fsync) before it flushes the done-mask, so the mask never vouches
for pixels that are not on disk and no worker waits for the disk. A lock file (``<key>.lock``) lets one process
build while others (DDP ranks) wait.

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit._io import remove_stale_temps, write_json
from medkit.data.pipeline import Preprocess
from medkit.errors import DataError

__all__ = ["UInt8Cache", "cache_key", "CACHE_FORMAT"]

CACHE_FORMAT = 1
_FLUSH_SECONDS = 2.0
_MIN_CHUNK_ROWS = 16
_MAX_CHUNK_ROWS = 1024


def _file_entries(paths: Sequence[str | os.PathLike[str]]) -> tuple[Path, list[tuple[str, int, int]]]:
    """The common root of ``paths`` and one (relative posix path, size, mtime_ns) per path, in input order."""
    if not paths:
        raise DataError("no image files given to build a cache from", hint="check the table's image column")
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    entries = []
    for p in absolute:
        try:
            st = p.stat()
        except OSError as exc:
            raise DataError(
                f"{p}: cannot read image file ({exc.strerror})", hint="check the path and the data root"
            ) from exc
        entries.append((p.relative_to(root).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    return root, entries


def cache_key(entries: Sequence[tuple[str, int, int]], preprocess: Preprocess) -> str:
    """Hash of the sorted file entries and the preprocessing parameters."""
    h = hashlib.sha256()
    h.update(f"medkit-cache-{CACHE_FORMAT}|{preprocess.key()}|".encode())
    for rel, size, mtime in sorted(set(entries)):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<key>.lock`` next to the cache, so only one process builds it.

    Under DDP every rank asks for the same cache: the first builds it, the others wait and then find it complete.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds by one process only
        yield
        return
    with open(directory.parent / f"{directory.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        remove_stale_temps(directory)  # of a builder killed mid-write: no other builder runs while this lock is held
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _reuse_rows(directory: Path, entries: list[tuple[str, int, int]], root: str, pre_key: str) -> int:
    """Copy finished rows of unchanged files from older caches of the same root and preprocessing.

    Touching one file of 100,000 gives a new key; this keeps the new build to that one file.

    Returns:
        The number of rows copied.
    """
    wanted = {e: i for i, e in enumerate(entries)}
    new_arr = np.load(directory / "images.npy", mmap_mode="r+")
    new_done = np.load(directory / "done.npy", mmap_mode="r+")
    copied = 0
    for meta_path in sorted(directory.parent.glob("*/meta.json")):
        if meta_path.parent == directory or new_done.all():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("preprocess_key") != pre_key or meta.get("root") != root:
                continue
            old_done = np.load(meta_path.parent / "done.npy")
            old_arr = np.load(meta_path.parent / "images.npy", mmap_mode="r")
        except (OSError, ValueError):
            continue  # an unreadable old cache is only a missed shortcut
        for j, e in enumerate(meta.get("files", [])):
            i = wanted.get((e[0], int(e[1]), int(e[2])))
            if i is not None and not new_done[i] and j < len(old_done) and old_done[j]:
                new_arr[i] = old_arr[j]
                new_done[i] = True
                copied += 1
        del old_arr
    new_arr.flush()
    new_done.flush()
    return copied


def _init_worker() -> None:
    try:
        import cv2

        # One process per core already; cv2's own threads would only oversubscribe.
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


class _RowFile:
    """Whole rows written into the cache's ``.npy`` with ``os.pwrite``: one system call per row and no page faults
    through a mapping (several times cheaper than assigning into a fresh memmap)."""

    def __init__(self, array_path: str) -> None:
        arr = np.load(array_path, mmap_mode="r")
        self.offset, self.shape = int(arr.offset), tuple(arr.shape[1:])
        del arr
        self.row_bytes = int(np.prod(self.shape))
        self.fd = os.open(array_path, os.O_WRONLY | getattr(os, "O_BINARY", 0))

    def write(self, row: int, img: np.ndarray) -> None:
        if img.shape != self.shape or img.dtype != np.uint8:
            raise DataError(f"the preprocessed image is {img.dtype} {img.shape}, the cache holds uint8 {self.shape}")
        view = memoryview(np.ascontiguousarray(img)).cast("B")
        pos = self.offset + row * self.row_bytes
        while len(view):
            if hasattr(os, "pwrite"):
                n = os.pwrite(self.fd, view, pos)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, pos, os.SEEK_SET)
                n = os.write(self.fd, view)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        os.close(self.fd)


def _fill_rows(
    array_path: str,
    rows: list[int],
    files: list[str],
    preprocess: Preprocess,
    on_row: Callable[[int], None] | None = None,
) -> tuple[list[int], tuple[str, str, str | None] | None]:
    """Preprocess ``files`` into ``rows`` of the cache (in a worker, or in the building process with ``on_row``
    called after each row); returns the rows written and the first error.

    The pixels go to the shared page cache; the building process makes them durable (`_sync_file`) before it
    flushes the done-mask that vouches for them, so a worker never waits for the disk.
    """
    out = _RowFile(array_path)
    written: list[int] = []
    error = None
    try:
        for row, path in zip(rows, files, strict=True):
            try:
                out.write(row, preprocess(path))
            except DataError as exc:
                error = (path, exc.message, exc.hint)
                break
            except Exception as exc:  # a decoder crash must not lose the rows already written
                error = (path, f"{path}: cannot read image ({type(exc).__name__}: {exc})", None)
                break
            written.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        out.close()
    return written, error


def _sync_file(path: Path) -> None:
    """Write the dirty pages of ``path`` to disk, whichever process dirtied them (they share the page cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(todo: np.ndarray, workers: int) -> list[list[int]]:
    """Rows in large chunks, about four per worker (16 to 1024 rows each): few tasks to send and collect, and
    still a balanced end of the build."""
    size = min(_MAX_CHUNK_ROWS, max(_MIN_CHUNK_ROWS, -(-len(todo) // (4 * max(1, workers)))))
    return [todo[i : i + size].tolist() for i in range(0, len(todo), size)]


def _worker_context() -> Any:
    """How cache workers start: forked from a fork server that imported numpy, cv2 and this module once, so a
    worker costs a fork instead of a new interpreter importing them again (spawn where there is no fork server).

    Never a plain fork: the parent may hold torch / CUDA state that a forked child must not inherit; the fork
    server is a fresh process.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["medkit.data.cache", "medkit.io.readers", "cv2"])
    return ctx


@contextlib.contextmanager
def _spawn_without_main() -> Iterator[None]:
    """Start workers without importing this program's main module in each of them.

    A spawned (or fork-server) child runs the parent's ``__main__`` again (the ``medkit`` console script imports
    the whole CLI, pytest imports pytest); the cache workers only need `_fill_rows` and `Preprocess`, which they
    import by name.
    """
    import sys

    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for k in saved:
            setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class UInt8Cache:
    """A memory-mapped (N, H, W, C) uint8 cache, read like a source: ``cache[i]``, ``len(cache)``, ``get_batch``.

    Build or reopen one with `UInt8Cache.build`. Row ``i`` of the cache is the i-th path given to ``build``
    (``rows[i]`` is its row in the stored ``array``, which is in sorted path order; duplicated paths share a row).
    The memmap is opened lazily and is not pickled, so a cache travels cheaply to DataLoader workers.
    """

    def __init__(self, directory: str | os.PathLike[str], rows: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta_path}: not a medkit cache ({exc})", hint="rebuild the cache") from exc
        self.meta.pop("files", None)  # can be megabytes; every DataLoader worker gets a pickled copy of self
        self.shape = tuple(int(s) for s in self.meta["shape"])
        self.rows = np.arange(self.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._array: np.ndarray | None = None

    @property
    def key(self) -> str:
        """The cache key (its folder name)."""
        return self.directory.name

    @property
    def array(self) -> np.ndarray:
        """The read-only memmap of all stored rows (sorted path order)."""
        if self._array is None:
            self._array = np.load(self.directory / "images.npy", mmap_mode="r")
        return self._array

    def open_array(self) -> np.ndarray:
        """All stored rows mapped copy-on-write: writable in this process (what ``torch.from_numpy`` accepts
        without a warning) while the file is never changed; reading it copies nothing."""
        return np.load(self.directory / "images.npy", mmap_mode="c")

    @property
    def done(self) -> np.ndarray:
        """Boolean mask of the stored rows that are complete."""
        return np.load(self.directory / "done.npy")

    @property
    def complete(self) -> bool:
        """Whether every row has been computed."""
        return bool(self.done.all())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array(self.array[self.rows[int(i)]])  # a copy: the memmap is read-only

    def get_batch(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, H, W, C) for the given rows, copied row by row from the memmap straight into ``out``.

        Rows are read in stored order so the disk (or page cache) is read sequentially where possible.
        """
        stored = self.rows[np.asarray(rows, dtype=np.int64)]
        if out is None:
            out = np.empty((len(stored), *self.shape[1:]), dtype=np.uint8)
        arr = self.array
        for j in np.argsort(stored, kind="stable").tolist():
            out[j] = arr[stored[j]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # pickling a memmap would copy the whole array
        return state

    def __repr__(self) -> str:
        return f"UInt8Cache({str(self.directory)!r}, rows={len(self)}, shape={self.shape})"

    @classmethod
    def build(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        preprocess: Preprocess,
        cache_root: str | os.PathLike[str],
        workers: int | None = None,
        progress: bool = True,
        on_row: Callable[[int], None] | None = None,
    ) -> UInt8Cache:
        """Build (or reopen, or resume) the cache of ``paths`` preprocessed by ``preprocess``.

        Args:
            paths: Image files; row i of the result is ``paths[i]``.
            preprocess: The preprocessing; its `Preprocess.key` is part of the cache key.
            cache_root: Folder holding one sub-folder per cache key.
            workers: Worker processes; None = one per available core; 0 or 1 = in this process.
            progress: Show a progress bar on stderr.
            on_row: Called in this process with each stored row index computed by this build (not for rows copied
                from an older cache).

        Returns:
            The complete cache.

        Raises:
            DataError: When a file is missing or cannot be decoded (the rows done so far are kept, so fixing or
                removing the file and building again resumes).
        """
        root, entries = _file_entries(paths)
        key = cache_key(entries, preprocess)
        unique = sorted(set(entries))
        index = {e: i for i, e in enumerate(unique)}
        rows = np.array([index[e] for e in entries], dtype=np.int64)
        directory = Path(cache_root) / key
        n = len(unique)
        shape = (n, *preprocess.out_shape)
        array_path = directory / "images.npy"
        done_path = directory / "done.npy"
        with _build_lock(directory):
            if not (directory / "meta.json").is_file() or not array_path.is_file() or not done_path.is_file():
                directory.mkdir(parents=True, exist_ok=True)
                # Reserve the whole file up front (sparse on Linux), so workers can open it r+ and write any row.
                np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape).flush()
                np.save(done_path, np.zeros(n, dtype=bool))
                write_json(
                    directory / "meta.json",
                    {
                        "format": CACHE_FORMAT,
                        "shape": list(shape),
                        "root": str(root),
                        "preprocess": preprocess.params(),
                        "preprocess_key": preprocess.key(),
                        "files": [list(e) for e in unique],
                    },
                )
                _reuse_rows(directory, unique, str(root), preprocess.key())
            done = np.load(done_path, mmap_mode="r+")
            if done.shape != (n,):
                raise DataError(
                    f"{done_path}: done-mask does not match the cache", hint=f"delete {directory} and rebuild"
                )
            todo = np.flatnonzero(~done)
            if len(todo):
                files = [str(root / unique[i][0]) for i in range(n)]
                _run_build(array_path, done, todo, files, preprocess, workers, progress, on_row)
            del done
        return cls(directory, rows)


@dataclass
class _Marks:
    """Rows finished by a build: marked in the done-mask, counted on the bar, made durable every few seconds."""

    array_path: Path
    done: np.ndarray
    bar: Any
    on_row: Callable[[int], None] | None = None
    last_flush: float = field(default_factory=time.monotonic)

    def __call__(self, rows: list[int]) -> None:
        self.done[rows] = True
        if self.on_row is not None:
            for r in rows:
                self.on_row(r)
        self.bar.update(len(rows))
        if time.monotonic() - self.last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Pixels first, then the done-mask that vouches for them."""
        _sync_file(self.array_path)
        self.done.flush()
        self.last_flush = time.monotonic()


def _run_build(
    array_path: Path,
    done: np.ndarray,
    todo: np.ndarray,
    files: list[str],
    preprocess: Preprocess,
    workers: int | None,
    progress: bool,
    on_row: Callable[[int], None] | None,
) -> None:
    from medkit.console import Progress
    from medkit.parallel import pool_size

    workers = pool_size(workers, len(todo))
    chunks = _chunks(todo, workers)
    bar = Progress(total=len(todo), description="caching images", unit="img", enabled=progress)
    mark = _Marks(array_path, done, bar, on_row)
    try:
        with bar:
            if workers <= 1 or len(chunks) == 1:
                rows = todo.tolist()
                error = _fill_rows(str(array_path), rows, [files[r] for r in rows], preprocess, lambda r: mark([r]))[1]
            else:
                error = _pool_build(array_path, chunks, files, preprocess, min(workers, len(chunks)), mark)
    finally:
        mark.flush()
    if error:
        path, message, hint = error
        raise DataError(
            message if path in message else f"{path}: {message}",
            hint=hint or "fix or remove the file, then run again: the cache build resumes where it stopped",
        )


def _pool_build(
    array_path: Path,
    chunks: list[list[int]],
    files: list[str],
    preprocess: Preprocess,
    workers: int,
    mark: Callable[[list[int]], None],
) -> tuple[str, str, str | None] | None:
    """Fill the chunks in a pool of worker processes; returns the first error (rows written before it are kept)."""
    from medkit.parallel import process_pool

    error: tuple[str, str, str | None] | None = None
    pending: set[Any] = set()
    # process_pool: the workers die with this process (kill -9 included) and Ctrl-C terminates them at once.
    with process_pool(workers, _worker_context(), _init_worker) as pool:
        try:
            with _spawn_without_main():  # the processes start as tasks are submitted
                pending = {
                    pool.submit(_fill_rows, str(array_path), c, [files[r] for r in c], preprocess) for c in chunks
                }
            while pending and not error:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    written, err = fut.result()
                    mark(written)
                    error = error or err
            for fut in pending:
                fut.cancel()
            # Rows written by tasks already running when the error came are kept too.
            for fut in pending:
                if not fut.cancelled():
                    mark(fut.result()[0])
        except BaseException:
            # Ctrl-C: keep what finished, do not wait for the rest (a resumed build redoes them).
            for fut in pending:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    mark(fut.result()[0])
            raise
    return error

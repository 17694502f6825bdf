"""How many cores a CPU-side step may use, and the process pools that use them, for every pool medkit starts.

``--workers`` of ``audit``, ``tile``, DICOM header scans and ``--cache-workers`` of the cache build all mean
"processes decoding files" and default to every usable core (`pool_size`). The training DataLoader's
``--workers`` is a different budget (the training process needs a core too) and is decided once by
`medkit.engine.runtime.Runtime`.

Every process pool is made by `process_pool`: its workers die with the parent (a killed ``medkit`` leaves no
worker behind holding memory or the caller's stdout open), ignore Ctrl-C (the parent alone decides), and on
Ctrl-C or any error the pool stops at once: pending tasks are cancelled and running workers are terminated
instead of being waited for.

This module imports neither torch nor typer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["usable_cores", "pool_size", "process_pool", "stop_pool", "die_with_parent"]

#: Seconds between two looks at the parent by the watchdog thread (where no parent-death signal exists).
_WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """Cores this process may run on (the CPU affinity mask where the OS has one, e.g. under a batch scheduler)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def pool_size(requested: int | None, items: int | None = None) -> int:
    """Worker processes for a pool over ``items`` jobs: ``requested``, else every usable core; never more than jobs.

    Returns 0 when ``requested`` is 0 (work in the calling process) and at least 1 otherwise.
    """
    n = usable_cores() if requested is None else max(0, int(requested))
    if items is not None and n > 0:
        n = max(1, min(n, int(items)))
    return n


def die_with_parent(parent: int | None = None) -> None:
    """Make this (worker) process end when ``parent`` (default: its parent process) ends, even by ``kill -9``.

    A direct child on Linux gets SIGKILL from the kernel at the parent's death (``prctl(PR_SET_PDEATHSIG)``).
    A worker started by a fork server is the server's child, and the server lives as long as its workers hold
    their end of its pipe: such a worker, and every worker where there is no parent-death signal, runs a daemon
    thread that looks at ``parent`` twice a second and exits when it is gone.

    Args:
        parent: PID of the process that owns the pool (None: ``os.getppid()``).
    """
    direct = parent is None or parent == os.getppid()
    parent = os.getppid() if parent is None else parent
    if direct and sys.platform.startswith("linux") and _set_pdeathsig(signal.SIGKILL):
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    _watch_parent(parent, direct)


def _set_pdeathsig(sig: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol (e.g. a static build)
        return False


def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux /proc), so a PID reused by a new process is not taken for the parent;
    ``"zombie"`` for a process that ended and awaits its reaping."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return "zombie" if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def _parent_alive(parent: int, direct: bool, start: str | None) -> bool:
    if direct or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return os.getppid() == parent
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    now = _proc_start(parent)
    return now != "zombie" and (start is None or now in (None, start))


def _watch_parent(parent: int, direct: bool) -> None:
    start = _proc_start(parent)

    def watch() -> None:
        import time

        while _parent_alive(parent, direct, start):
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="medkit-parent-watchdog", daemon=True).start()


def _init_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    """Every pool worker's first step: die with the parent, leave Ctrl-C to the parent, then the pool's own set-up."""
    die_with_parent(parent)
    with contextlib.suppress(ValueError):  # not the main thread (cannot happen in a pool worker)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def stop_pool(pool: Any) -> None:
    """Stop a `concurrent.futures.ProcessPoolExecutor` now: cancel what has not started, terminate the workers.

    ``shutdown(wait=False, cancel_futures=True)`` alone still lets every running task finish (leaving a ``with``
    block of the executor waits for them); terminating the workers is what makes Ctrl-C stop within a second.
    """
    # The executor keeps no public list of its workers; ``_processes`` has been stable since Python 3.2.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            if proc.is_alive():
                proc.terminate()
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
    if manager is not None:
        # The executor's thread sees its workers gone and ends; then it must not be woken at exit any more (Python
        # < 3.12 would write to its closed pipe and print "Exception ignored ... Bad file descriptor").
        with contextlib.suppress(Exception):
            manager.join(timeout=5.0)
            if not manager.is_alive():
                from concurrent.futures import process

                process._threads_wakeups.pop(manager, None)


@contextlib.contextmanager
def process_pool(
    workers: int,
    mp_context: Any = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[Any]:
    """A `concurrent.futures.ProcessPoolExecutor` whose workers die with this process and that stops at once on
    Ctrl-C or an error (`stop_pool`); on a normal exit it waits for its tasks, as the executor's ``with`` does.

    Args:
        workers: Worker processes.
        mp_context: A `multiprocessing` context (None: the platform's default).
        initializer: Run in each worker after the parent-death set-up (a module-level function: it is pickled).
        initargs: Its arguments.

    Yields:
        The executor.
    """
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp_context,
        initializer=_init_worker,
        initargs=(os.getpid(), initializer, initargs),
    )
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)

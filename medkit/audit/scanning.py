"""The parent's half of the scan: summaries of every file, computed in a process pool (`medkit.audit._scan` is the
worker's half), and the files that could not be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medkit.audit.files import ScanItem, ScanPlan, release_archives
from medkit.audit.report import Finding
from medkit.parallel import pool_size, process_pool

__all__ = ["scan", "scan_plan", "unreadable_findings"]

#: Fewer files than this are read in this process: starting a pool would cost more than it saves.
_MIN_POOL_FILES = 8


def scan(
    paths: Sequence[str | os.PathLike[str] | tuple[str, str, int]],
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Summaries of ``paths`` in order, computed by ``workers`` processes (0: in this process).

    Args:
        paths: Image files; an item ``(archive, key, index)`` is image ``index`` of array ``key`` in a .npz archive.
        workers: Worker processes (None: every usable core; 0 or 1: in this process).
        on_progress: Called with the number of files finished since the last call.
        chunk: Files per pool task (None: about 8 tasks per worker, at most 64 files each).

    Returns:
        One summary per item (`medkit.audit._scan.summarize_file`), in the order of ``paths``.
    """
    items: list[ScanItem] = [p if isinstance(p, tuple) else os.fspath(p) for p in paths]
    n_workers = pool_size(workers, len(items))
    if n_workers <= 1 or len(items) < _MIN_POOL_FILES:
        return _scan_here(items, on_progress)
    return _scan_pool(items, n_workers, on_progress, chunk)


def _scan_here(items: list[ScanItem], on_progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    from medkit.audit._scan import summarize_chunk

    out = []
    for p in items:
        out.append(summarize_chunk([p])[0])
        if on_progress:
            on_progress(1)
    return out


def _scan_pool(
    items: list[ScanItem], n_workers: int, on_progress: Callable[[int], None] | None, chunk: int | None
) -> list[dict[str, Any]]:
    import concurrent.futures as cf
    import multiprocessing as mp
    import sys
    import threading

    from medkit.audit._scan import init_worker, summarize_chunk

    # Chunks of files, not single files, are the tasks: a task costs a round trip through the pool's pipes.
    # About 8 chunks per worker (at most 64 files) keep the cores busy until the end and the bar moving.
    size = chunk or max(1, min(64, len(items) // (n_workers * 8) or 1))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    results: list[list[dict[str, Any]]] = [[] for _ in chunks]
    # fork starts a worker in milliseconds with numpy, OpenCV and medkit already imported; spawn and forkserver
    # (the default from Python 3.14) re-import them in every worker. It is safe on Linux while this process
    # runs no other thread (a live progress bar is one: then the platform's default is kept).
    single = threading.active_count() == 1
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") and single else None
    # process_pool: workers die with this process and Ctrl-C stops them at once (medkit.parallel).
    with process_pool(n_workers, ctx, init_worker) as pool:
        futures = {pool.submit(summarize_chunk, c): k for k, c in enumerate(chunks)}
        for fut in cf.as_completed(futures):
            k = futures[fut]
            results[k] = fut.result()
            if on_progress:
                on_progress(len(results[k]))
    return [r for part in results for r in part]


def scan_plan(
    plan: ScanPlan, workers: int | None = None, on_progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """`scan` the items of ``plan``, then release the archive arrays it loaded.

    Args:
        plan: What to scan (`medkit.audit.files.expand_archives`).
        workers: Worker processes (None: every usable core; 0: in this process).
        on_progress: Called with the number of files finished since the last call.

    Returns:
        One summary per file of the plan, its ``path`` set to the file's audit name.
    """
    try:
        records = scan(plan.items, workers=workers, on_progress=on_progress)
    finally:
        release_archives()
    for f, r in zip(plan.files, records, strict=True):
        r["path"] = f
    return records


def unreadable_findings(root: Path, files: Sequence[str], records: Sequence[dict[str, Any]]) -> list[Finding]:
    """One ``unreadable`` finding per file the scan could not read, its reason worded with the audit name."""
    findings: list[Finding] = []
    for f, r in zip(files, records, strict=True):
        if not r.get("ok"):
            reason = str(r.get("error") or "unreadable")
            findings.append(Finding("unreadable", (f,), reason.replace(f"{root / f}: ", "").replace(str(root / f), f)))
    return findings

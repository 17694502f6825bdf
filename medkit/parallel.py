"""How many cores a CPU-side step may use: one answer for every process or thread pool medkit starts.

``--workers`` of ``audit``, ``tile``, DICOM header scans and ``--cache-workers`` of the cache build all mean
"processes decoding files" and default to every usable core (`pool_size`). The training DataLoader's
``--workers`` is a different budget (the training process needs a core too) and is decided once by
`medkit.engine.runtime.Runtime`.

This module imports neither torch nor typer.
"""

from __future__ import annotations

import os

__all__ = ["usable_cores", "pool_size"]


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

"""``--profile``: how long each training step waits for its batch, against how long the step takes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["Profiler"]


class Profiler:
    """Time data wait vs step per training step (``--profile``) and summarise.

    Usage::

        prof = Profiler(enabled=profile, sync=runtime.synchronize)
        for batch in prof.iter(feeder):
            with prof.step(len(batch)):
                ...  # forward, backward, optimizer step
        prof.summary()  # dict; prof.report() logs it to stderr

    When enabled, the device is synchronised at both boundaries so the times are real (this slows training a
    little, which is why it is off by default); when disabled it only counts images.

    Args:
        enabled: Record times.
        sync: Waits for the device (`medkit.engine.runtime.Runtime.synchronize`); None on the CPU.
        skip: Steps ignored at the start (worker start-up, cudnn autotuning, compilation).
    """

    def __init__(self, enabled: bool = True, sync: Callable[[], None] | None = None, skip: int = 2) -> None:
        self.enabled = enabled
        self.sync = sync
        self.skip = skip
        self.data_s: list[float] = []
        self.step_s: list[float] = []
        self.images: list[int] = []

    def _sync(self) -> None:
        if self.sync is not None:
            self.sync()

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

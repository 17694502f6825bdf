"""2.5D input: each CT slice stacked with its neighbours in the series as input channels (``--context K``).

A `ContextPlan` says which channels a stack has: ``K`` slices (odd; the slice itself in the middle and ``K // 2``
neighbours on each side, the end slices of a series repeated) and how each slice is windowed:

``all``     every slice with all ``W`` channels of a slice (the task's CT windows): ``K x W`` channels, slice-major
            (the first slice's windows in series order, then the next slice's, ...; the centre slice at ``K // 2``).
``middle``  the centre slice with all its windows, then each neighbour, in slice order, in the first window (brain)
            only: ``W + K - 1`` channels. The first ``W`` channels are what a single-slice model sees.

`StackSource` gathers stacks by index from a per-slice source (the uint8 cache, or files decoded on the fly): the
cache holds every slice once and no stack is ever stored. Its ``get_batch(rows)`` reads the ``K`` slices of each
row in one ``get_batch`` of the per-slice source and puts them side by side as channels, so a stack is an ordinary
``(H, W, C)`` image for the feeders, the augmentation (one draw per stack, so the slices flip and rotate together)
and the model. The feeders that hold slices in memory (`medkit.engine.feeders`) gather them there and call
`StackSource.assemble` on the device.

Pure numpy; torch tensors pass through `StackSource.assemble` without importing torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from medkit.errors import UsageError

__all__ = ["CONTEXT_MODES", "ContextPlan", "StackSource", "check_context", "stack_source"]

#: How the slices of a stack are windowed (module doc).
CONTEXT_MODES: tuple[str, ...] = ("all", "middle")


def check_context(slices: int, mode: str) -> None:
    """Refuse a slice count that is not odd and positive, or an unknown mode.

    Raises:
        UsageError: With the fix.
    """
    if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 1 or slices % 2 == 0:
        raise UsageError(
            f"--context needs an odd number of slices per stack (1 = off), got {slices}", hint="e.g. --context 3"
        )
    if mode not in CONTEXT_MODES:
        from medkit.errors import did_you_mean

        raise UsageError(
            f"unknown --context-mode '{mode}'{did_you_mean(mode, CONTEXT_MODES)}",
            hint="all: every slice in every window; middle: the centre slice windowed, neighbours in the first window",
        )


@dataclass(frozen=True)
class ContextPlan:
    """The channels of a 2.5D stack.

    Attributes:
        slices: Slices per stack (odd).
        mode: ``all`` or ``middle`` (module doc).
        channels: Channels of one slice as the per-slice source gives them (the task's windows).
    """

    slices: int
    mode: str = "all"
    channels: int = 3

    def __post_init__(self) -> None:
        check_context(self.slices, self.mode)
        if self.channels < 1:
            raise UsageError(f"a slice needs at least one channel, got {self.channels}")

    @cached_property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """``(slice position 0..K-1, slice channel)`` of every input channel, in channel order."""
        k, w = self.slices, self.channels
        if self.mode == "all":
            return tuple((j, c) for j in range(k) for c in range(w))
        centre = k // 2
        return tuple((centre, c) for c in range(w)) + tuple((j, 0) for j in range(k) if j != centre)

    @cached_property
    def select(self) -> np.ndarray:
        """``(in_chans,)`` index of every input channel among the ``K x W`` channels of the gathered slices."""
        return np.asarray([j * self.channels + c for j, c in self.pairs], dtype=np.int64)

    @property
    def centre(self) -> tuple[int, ...]:
        """Input channels of the centre slice in its ``W`` channels (the slice itself, e.g. for a picture)."""
        return tuple(i for i, (j, _) in enumerate(self.pairs) if j == self.slices // 2)

    @property
    def in_chans(self) -> int:
        """Channels of a stack: what the model is built with."""
        return len(self.pairs)

    def mean_std(self, mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
        """Per-channel normalisation of a stack: each channel takes its window's mean and std.

        Raises:
            UsageError: A mean or std that is neither one value nor one per slice channel.
        """

        def per_slice(values: Sequence[float], what: str) -> list[float]:
            values = [float(v) for v in values]
            if len(values) == 1:
                return values * self.channels
            if len(values) != self.channels:
                raise UsageError(f"normalisation {what} has {len(values)} values for {self.channels} slice channels")
            return values

        m, s = per_slice(mean, "mean"), per_slice(std, "std")
        return [m[c] for _, c in self.pairs], [s[c] for _, c in self.pairs]

    def describe(self) -> str:
        """One line for the log."""
        how = "every window" if self.mode == "all" else "the centre slice in every window, neighbours in the first"
        return f"2.5D input: {self.slices} slices per stack, {how}: {self.in_chans} channels"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (run.json)."""
        return {"slices": self.slices, "mode": self.mode, "channels": self.channels, "in_chans": self.in_chans}


class StackSource:
    """2.5D stacks gathered by index from a per-slice source; the same interface as every source.

    Args:
        base: The per-slice source (`medkit.data.cache.UInt8Cache`, `medkit.data.pipeline.FileSource`, ...):
            ``get_batch(rows) -> uint8 (B, H, W, W_c)``.
        window: ``(N, K)`` rows of the base of every row's stack, in slice order (`medkit.data.series.neighbour_rows`).
        plan: The channels of a stack.
    """

    def __init__(self, base: Any, window: np.ndarray, plan: ContextPlan) -> None:
        window = np.asarray(window, dtype=np.int64)
        if window.ndim != 2 or window.shape != (len(base), plan.slices):
            raise UsageError(
                f"a {plan.slices}-slice window over {len(base)} slices must have shape ({len(base)}, {plan.slices}), "
                f"got {window.shape}",
                hint="this is a bug; please report it",
            )
        self.base, self.window, self.plan = base, window, plan
        self._select: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.base)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, H, W, in_chans)`` of the stacks."""
        n, h, w, _ = self.base.shape
        return (int(n), int(h), int(w), self.plan.in_chans)

    @property
    def preprocess(self) -> Any:
        """The per-slice `medkit.data.pipeline.Preprocess` of the base."""
        return getattr(self.base, "preprocess", None)

    def base_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(B * K,)`` base rows of the stacks of ``rows``, stack by stack, in slice order."""
        return self.window[np.asarray(rows, dtype=np.int64)].reshape(-1)

    def assemble(self, slices: Any) -> Any:
        """``(B * K, H, W, W_c)`` slices (numpy or a torch tensor on any device) -> ``(B, H, W, in_chans)`` stacks.

        The slices of each stack are consecutive, in slice order (`base_rows`).
        """
        k, w = self.plan.slices, self.plan.channels
        bk, h, wd, c = slices.shape
        if c != w or bk % k:
            raise UsageError(f"stack of {k} slices x {w} channels from slices of shape {tuple(slices.shape)}")
        b = bk // k
        if isinstance(slices, np.ndarray):
            out = slices.reshape(b, k, h, wd, c).transpose(0, 2, 3, 1, 4).reshape(b, h, wd, k * c)
        else:
            out = slices.reshape(b, k, h, wd, c).permute(0, 2, 3, 1, 4).reshape(b, h, wd, k * c)
        if self.plan.mode == "all":
            return out
        return out[..., self._index(out)]

    def _index(self, like: Any) -> Any:
        """`ContextPlan.select` as an index for ``like`` (a numpy array, or a tensor on its device)."""
        if isinstance(like, np.ndarray):
            return self.plan.select
        key = like.device
        if key not in self._select:
            import torch

            self._select[key] = torch.from_numpy(self.plan.select).to(key)
        return self._select[key]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get_batch([int(i)])[0]

    def get_batch(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``(B, H, W, in_chans)`` stacks of the given rows (written into ``out`` when given)."""
        stacks = self.assemble(self.base.get_batch(self.base_rows(rows)))
        if out is None:
            return np.ascontiguousarray(stacks)
        out[...] = stacks
        return out

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: the device index tensors stay behind
        return {**self.__dict__, "_select": {}}


def stack_source(base: Any, index: Any, plan: ContextPlan) -> StackSource:
    """The stacks of every row of ``base`` from the `medkit.data.series.SeriesIndex` of its rows.

    Raises:
        DataError: An index whose rows are not the base's.
    """
    from medkit.data.series import neighbour_rows
    from medkit.errors import DataError

    if len(index) != len(base):
        raise DataError(
            f"{len(index)} rows have a series but the source holds {len(base)} slices",
            hint="every row of the table must name one slice",
        )
    return StackSource(base, neighbour_rows(index.sequences(), len(index), plan.slices), plan)

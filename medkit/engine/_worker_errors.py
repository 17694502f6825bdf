"""medkit's own errors raised in DataLoader worker processes, handed to the main process as they were raised.

PyTorch re-raises a worker's exception as ``ImageReadError("Caught ImageReadError in DataLoader worker process 0.
Original Traceback ...")``: the message becomes a traceback and the hint is lost. `GuardedDataset` catches a
`MedkitError` in the worker and returns it as a `WorkerError` batch instead; `raise_if_failed` raises the original
error (same class, message and hint) in the main process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medkit.errors import MedkitError

__all__ = ["WorkerError", "GuardedDataset", "guarded_collate", "raise_if_failed"]


@dataclass(frozen=True)
class WorkerError:
    """A `MedkitError` raised while a worker read a batch, in a form that crosses the process boundary."""

    cls: type[MedkitError]
    message: str
    hint: str | None
    exit_code: int

    @classmethod
    def of(cls, exc: MedkitError) -> WorkerError:
        return cls(type(exc), exc.message, exc.hint, exc.exit_code)

    def error(self) -> MedkitError:
        """The error as the worker raised it."""
        try:
            exc = self.cls(self.message, hint=self.hint)
        except TypeError:  # a subclass with another signature
            exc = MedkitError(self.message, hint=self.hint)
        exc.exit_code = self.exit_code
        return exc


class GuardedDataset:
    """A map-style dataset whose `MedkitError` becomes a `WorkerError` batch (use with `guarded_collate`)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, j: int) -> Any:
        try:
            return self.dataset[j]
        except MedkitError as exc:
            return WorkerError.of(exc)

    def __getitems__(self, js: Sequence[int]) -> Any:
        try:
            return self.dataset.__getitems__(js)
        except MedkitError as exc:
            return WorkerError.of(exc)


class guarded_collate:  # noqa: N801 - used like the function it wraps
    """``collate_fn`` that passes a `WorkerError` (from the batch or any of its items) through untouched."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, WorkerError):
            return batch
        if isinstance(batch, list):
            failed = next((b for b in batch if isinstance(b, WorkerError)), None)
            if failed is not None:
                return failed
        return self.collate(batch)


def raise_if_failed(batch: Any) -> Any:
    """``batch`` itself, or the worker's error raised again in this process."""
    if isinstance(batch, WorkerError):
        raise batch.error()
    return batch

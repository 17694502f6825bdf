"""The dataset a DataLoader reads batches from: rows of a source (cache, files, arrays) with their targets.

Batches are dicts ``{"image": uint8 (B, C, H, W), "target": (B, K) float or (B,) long, "index": long (B,)}``.
Images stay uint8 until they are on the device (4x less to copy than float32); `medkit.data.augment.BatchAugment`
converts and normalises them there. A batch is fetched with one ``source.get_batch(rows)`` call (one fancy index
into the memmap for a cache) through the dataset's ``__getitems__``, and arrives in channels-last memory layout
(the (B, H, W, C) buffer seen as (B, C, H, W)), which is what a channels-last model wants.

The DataLoader itself, its batch order and the copy to the device are `medkit.engine.feed` (`make_loader`,
`EpochBatches`, `LoaderFeeder`): one loader stack for training, evaluation, prediction and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medkit.errors import DataError

__all__ = ["ImageDataset", "collate", "targets_tensor"]


def targets_tensor(targets: np.ndarray) -> torch.Tensor:
    """Targets as the batches carry them: float32 for float or bool columns, int64 for class indices."""
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
        self._targets_t = targets_tensor(targets) if targets is not None else None
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

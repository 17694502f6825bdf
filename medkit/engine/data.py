"""Training data for the engine: what to train and validate on, and a resumable, DDP-aware batch order.

`build_data` turns ``--data`` / ``--labels`` / ``--folds`` / ``--fold`` into train and validation `Split`s over a
`medkit.data.pipeline` source (files, an in-memory MedMNIST array, or a `UInt8Cache`). `EpochBatches` fixes the
order of every epoch from ``seed + epoch`` alone, so a run resumed at batch k of an epoch sees exactly the batches
an uninterrupted run would, and under DDP every rank takes its own slice of the same permutation.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = ["Split", "TrainData", "EpochBatches", "build_data", "make_batches_loader", "medmnist_image_size"]


@dataclass
class Split:
    """Rows of one split.

    Attributes:
        source: Object with ``get_batch(rows) -> uint8 (B, H, W, C)`` over ALL rows of the dataset.
        rows: Row numbers of this split in ``source``.
        all_targets: Targets of every row of the source: float (N, K) for binary/multilabel, int64 (N,) for
            multiclass/ordinal.
        ids: Image id of each row of this split (for oof.csv).
        groups: Patient/series id per row of this split, or None.
    """

    source: Any
    rows: np.ndarray
    all_targets: np.ndarray
    ids: list[str]
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> np.ndarray:
        """Targets of this split's rows."""
        return self.all_targets[self.rows]

    def positions(self, source_rows: np.ndarray) -> np.ndarray:
        """Positions in this split of rows of the source (``index`` of a batch)."""
        order = np.argsort(self.rows, kind="stable")
        pos = np.searchsorted(self.rows, source_rows, sorter=order)
        pos = order[np.clip(pos, 0, len(order) - 1)]
        if len(pos) and not np.array_equal(self.rows[pos], source_rows):
            raise DataError("predictions hold rows that are not in this split", hint="this is a bug; please report it")
        return pos


@dataclass
class TrainData:
    """Train/validation (and optional test) splits plus what the engine needs to know about the labels.

    Attributes:
        train: Training split.
        val: Validation split (the out-of-fold rows).
        test: Held-out test split (MedMNIST ``test_*``), or None.
        label_names: Names of the model outputs (label columns; classes for multiclass; ``>k`` for ordinal).
        target: Target kind (``binary``, ``multilabel``, ``multiclass``, ``ordinal``).
        num_outputs: Logits the model produces.
        num_classes: Classes (multiclass) or grades (ordinal); 0 otherwise.
        label_groups: Group name -> label columns, for ``heads="groups"``.
        data_hash: SHA-256 of the table and the file list.
        in_chans: Channels of the uint8 images (the mask channel included).
        description: One line saying where the data came from.
        mask_col: Table column whose mask files were stacked as the last channel, or None.
    """

    train: Split
    val: Split
    test: Split | None
    label_names: list[str]
    target: str
    num_outputs: int
    num_classes: int = 0
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    data_hash: str = ""
    in_chans: int = 3
    description: str = ""
    mask_col: str | None = None

    def label_prevalence(self) -> list[float] | None:
        """Positive rate of each label on the training split (binary/multilabel), for ``pos_weight="auto"``."""
        if self.target not in ("binary", "multilabel"):
            return None
        return [float(v) for v in np.asarray(self.train.targets, dtype=np.float64).mean(axis=0)]


class EpochBatches:
    """Batch order of one epoch from ``seed + epoch``: resumable at any batch and split across DDP ranks.

    Like ``DistributedSampler`` the permutation is padded (repeating its start) to a multiple of
    ``world_size * batch_size`` rows when ``drop_last`` is False, and rank r takes every world_size-th batch row
    slice; evaluation de-duplicates the padded rows by index. A training epoch whose last batch would hold a
    single image drops it, since batch norm cannot train on one sample.

    Args:
        n: Number of rows.
        batch_size: Global batch size (split evenly across ranks).
        shuffle: Permute each epoch (training) or keep the order (evaluation).
        seed: Base seed; epoch e uses ``seed + e``.
        world_size: DDP processes.
        rank: This process.
        train: Training mode (drops a trailing one-image batch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        train: bool = True,
    ) -> None:
        if batch_size < world_size:
            raise UsageError(
                f"batch size {batch_size} is smaller than the {world_size} processes",
                hint="raise --batch-size to at least the number of processes",
            )
        self.n, self.shuffle, self.seed = int(n), shuffle, int(seed)
        self.world_size, self.rank, self.train = world_size, rank, train
        self.local_batch = batch_size // world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and how many of this rank's first batches to skip (resume)."""
        self.epoch, self.skip = int(epoch), int(skip_batches)

    def _global_order(self) -> np.ndarray:
        if self.shuffle:
            import torch

            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(self.n, generator=g).numpy()
        return np.arange(self.n)

    def batches(self) -> list[np.ndarray]:
        """This rank's batches (row positions 0..n-1) for the whole epoch, skipped ones included."""
        order = self._global_order()
        step = self.local_batch * self.world_size
        total = math.ceil(self.n / step) * step if self.n else 0
        if total > self.n:
            order = np.concatenate([order, np.resize(order, total - self.n)])
        out = []
        for start in range(0, total, step):
            chunk = order[start : start + step]
            mine = chunk[self.rank :: self.world_size]
            # The padded rows of the last global batch: in training keep only real rows on one process.
            if self.world_size == 1 and start + step > self.n:
                mine = chunk[: self.n - start]
            out.append(mine)
        if self.train and out and len(out[-1]) == 1 and self.n > 1:
            out = out[:-1]
        return out

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.skip)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches()[self.skip :])


def make_batches_loader(split: Split, batches: EpochBatches, workers: int = 0, device: Any = None) -> Any:
    """A DataLoader over `medkit.data.loader.ImageDataset` whose batches follow ``batches``; build it once per run.

    Each batch is read with one ``source.get_batch`` call (``ImageDataset.__getitems__``); ``index`` is the row
    in the full source (what ELR and the OOF table need; `Split.positions` maps it back). Every ``iter()`` of the
    loader asks ``batches`` for its order afresh, so calling ``batches.set_epoch(e, skip)`` before iterating is
    all a new epoch needs, and with ``workers > 0`` the worker processes persist across epochs instead of being
    started again (seconds per epoch with large datasets or spawn start-up). The loader gets its own fixed
    generator: DataLoader draws a base seed for its workers on every ``iter()``, and drawing it from the global
    RNG would shift every later random number and break exact resume; the workers only decode (no randomness),
    so the batches do not depend on that seed.
    """
    import torch
    from torch.utils.data import DataLoader

    from medkit.data.loader import ImageDataset, collate
    from medkit.device import seed_worker

    g = torch.Generator()
    g.manual_seed(batches.seed)
    pin = getattr(device, "type", None) == "cuda"
    return DataLoader(
        ImageDataset(split.source, split.all_targets, split.rows),
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=g,
    )


# ---------------------------------------------------------------------------------------------------- building


def _split_targets(values: np.ndarray, target: str, name: str) -> np.ndarray:
    if target in ("multiclass", "ordinal"):
        v = np.asarray(values)
        if v.ndim == 2:
            if v.shape[1] != 1:
                raise DataError(
                    f"{name}: a {target} task needs one integer label column, got {v.shape[1]}",
                    hint="pass --label-cols COL, or use the multilabel task",
                )
            v = v[:, 0]
        if np.isnan(v.astype(np.float64)).any():
            raise DataError(f"{name}: label column has missing values", hint="fill or drop those rows")
        if (v < 0).any() or (np.round(v) != v).any():
            raise DataError(f"{name}: {target} labels must be integers >= 0", hint="check the label column")
        return v.astype(np.int64)
    v = np.asarray(values, dtype=np.float32)
    if v.ndim == 1:
        v = v[:, None]
    if np.isnan(v).any():
        raise DataError(f"{name}: label columns have missing values", hint="fill or drop those rows")
    return v


def medmnist_image_size(path: str | os.PathLike[str]) -> int | None:
    """Side of the square images in a MedMNIST .npz (28, 64, 128 or 224), read from the array header only.

    Returns None when the file holds no ``train_images`` member or its images are not square 2-D images (the
    full read in `build_data` then reports what is wrong).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf, zf.open("train_images.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(fh)  # the header only: no image is read
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if len(shape) not in (3, 4) or shape[1] != shape[2]:
        return None
    return int(shape[1])


def _medmnist(task: Any, path: Path) -> TrainData:
    from medkit.data.pipeline import ArraySource, Preprocess
    from medkit.io.readers import load_medmnist

    splits = load_medmnist(path)
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{path}: a MedMNIST file needs train_* and val_* arrays", hint="re-download the file")
    order = [s for s in ("train", "val", "test") if s in splits]
    images = np.concatenate([splits[s][0] for s in order])
    labels = np.concatenate([splits[s][1] for s in order])
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: looks like a 3-D MedMNIST set {images.shape}; medkit train handles 2-D images",
            hint="use a 2-D MedMNIST file such as breastmnist.npz",
        )
    target = task.target
    if labels.shape[1] == 1 and target in ("binary", "multilabel") and labels.max() > 1:
        raise UsageError(
            f"{path}: labels have {int(labels.max()) + 1} classes but task '{task.name}' is {target}",
            hint="use the multiclass task",
        )
    pre = Preprocess(size=task.img_size, channels=1 if task.in_chans == 1 else 3)
    needs_pre = tuple(images.shape[1:3]) != (task.img_size, task.img_size) or (
        (images.shape[-1] if images.ndim == 4 else 1) != task.in_chans
    )
    source = ArraySource(images, pre if needs_pre else None)
    tgt = _split_targets(labels, target, str(path))
    bounds, start = {}, 0
    for s in order:
        bounds[s] = np.arange(start, start + len(splits[s][0]))
        start += len(splits[s][0])
    ids = [f"{s}/{i}" for s in order for i in range(len(splits[s][0]))]

    def split(name: str) -> Split:
        rows = bounds[name]
        return Split(source, rows, tgt, [ids[r] for r in rows])

    num_classes = int(tgt.max()) + 1 if target in ("multiclass", "ordinal") else 0
    num_classes = max(num_classes, task.num_classes)
    names, outputs = _output_names(target, [f"label{j}" for j in range(labels.shape[1])], num_classes)
    with open(path, "rb") as fh:
        digest = _sha(fh.read())
    return TrainData(
        split("train"),
        split("val"),
        split("test") if "test" in bounds else None,
        names,
        target,
        outputs,
        num_classes,
        {},
        digest,
        task.in_chans,
        f"MedMNIST {path.name}: " + ", ".join(f"{s} {len(bounds[s])}" for s in order),
    )


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _output_names(target: str, label_cols: Sequence[str], num_classes: int) -> tuple[list[str], int]:
    if target == "multiclass":
        return [f"class{c}" for c in range(num_classes)], num_classes
    if target == "ordinal":
        return [f">{k}" for k in range(num_classes - 1)], num_classes - 1
    return list(label_cols), len(label_cols)


def _holdout(groups: Sequence[str], seed: int, frac: float = 0.2) -> np.ndarray:
    """Deterministic group-aware hold-out: every group lands wholly in train or validation."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups))
    perm = rng.permutation(len(uniq))
    n_val = max(1, round(frac * len(uniq)))
    val_groups = {uniq[i] for i in perm[:n_val]}
    return np.array([g in val_groups for g in groups])


def build_data(
    task: Any,
    data: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    folds: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    label_cols: Sequence[str] | None = None,
    image_col: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    seed: int = 0,
    mask_col: str | None = "auto",
) -> TrainData:
    """Resolve the training data of a task.

    Args:
        task: The `medkit.tasks.Task`.
        data: Image root folder, or a MedMNIST ``.npz`` (then ``labels`` must be None: its splits are used).
        labels: Dataset table (see medkit.data.table).
        folds: Optional table with ``image`` and ``fold`` columns (``medkit split`` output) joined on the image.
        fold: Validation fold; None uses the table's ``split`` column (train/val) or a 20% group hold-out.
        label_cols: Label columns (default: the task's, else detected).
        image_col: Image column (default: detected).
        cache_dir: Build or reuse a `UInt8Cache` here (files only).
        workers: Processes for building the cache.
        seed: Seed for the fallback hold-out.
        mask_col: Column of mask files (``medkit tile --masks`` writes ``mask``) stacked as one more channel;
            ``"auto"`` uses a ``mask`` column when the table has one; None never adds a mask.

    Raises:
        DataError: Missing files, bad labels, an empty fold.
        UsageError: Contradictory options (a fold without a fold column, a table with an npz).
    """
    from medkit.data.pipeline import FileSource, Preprocess
    from medkit.data.table import detect_spec, load_table, resolve_paths

    data = Path(data)
    if data.suffix.lower() == ".npz":
        if labels is not None:
            raise UsageError(
                "--labels is not used with a MedMNIST .npz (its own splits are used)",
                hint="drop --labels, or pass a folder of images with --data",
            )
        if fold is not None:
            raise UsageError(
                "--fold does not apply to a MedMNIST .npz (it has fixed train/val/test splits)", hint="drop --fold"
            )
        if mask_col not in (None, "auto"):
            raise UsageError("--mask-col does not apply to a MedMNIST .npz", hint="drop --mask-col")
        return _medmnist(task, data)
    if labels is None:
        raise UsageError(f"--labels is needed with --data {data}", hint="pass the dataset table (CSV or parquet)")
    df = load_table(labels)
    wanted = list(label_cols) if label_cols else (list(task.labels) if task.labels else None)
    if wanted and not set(wanted) <= {str(c) for c in df.columns}:
        if label_cols:
            missing = [c for c in wanted if c not in df.columns]
            raise DataError(
                f"{labels}: label column(s) {', '.join(missing)} not in the table",
                hint=f"columns are: {', '.join(map(str, df.columns[:20]))}",
            )
        wanted = None  # the preset's default columns do not apply to this table: detect them
    spec = detect_spec(df, image=image_col, labels=wanted)
    if folds is not None:
        fdf = load_table(folds)
        fspec = detect_spec(fdf)
        if fspec.fold is None:
            raise DataError(f"{folds}: no fold column", hint="write it with `medkit split`")
        fmap = dict(zip(fdf[fspec.image].astype(str), fdf[fspec.fold], strict=False))
        df = df.copy()
        df["fold"] = [fmap.get(str(v)) for v in df[spec.image]]
        if df["fold"].isna().any():
            n = int(df["fold"].isna().sum())
            raise DataError(f"{folds}: {n} rows of {labels} have no fold", hint="run `medkit split` on this table")
        spec = spec.with_(fold="fold")
        if "fold" in spec.labels:
            spec = spec.with_(labels=tuple(c for c in spec.labels if c != "fold"))
    if not spec.labels:
        raise DataError(f"{labels}: no numeric label columns found", hint="name them with --label-cols A,B")
    paths = resolve_paths(df, data, spec.image)
    target = task.target
    if target == "binary" and len(spec.labels) > 1:
        target = "multilabel"
    values = df[list(spec.labels)].to_numpy()
    tgt = _split_targets(values, target, str(labels))
    groups = df[spec.group].astype(str).tolist() if spec.group else None
    if fold is not None:
        if spec.fold is None:
            raise UsageError(
                f"--fold {fold} given but {labels} has no fold column",
                hint="pass --folds folds.csv from `medkit split`, or add a 'fold' column",
            )
        is_val = df[spec.fold].to_numpy() == fold
        if not is_val.any():
            have = sorted(set(df[spec.fold].tolist()))
            raise DataError(f"fold {fold} has no rows in {labels}", hint=f"folds present: {have}")
    elif spec.split is not None:
        s = df[spec.split].astype(str).str.lower()
        is_val = s.isin(["val", "valid", "validation"]).to_numpy()
        keep = ~s.isin(["test"]).to_numpy()
        if not is_val.any():
            raise DataError(f"{labels}: split column '{spec.split}' has no 'val' rows", hint="or pass --fold")
        is_val = is_val & keep
        tr_mask = keep & ~is_val
    else:
        is_val = _holdout(groups or [str(v) for v in df[spec.image]], seed)
    if fold is not None or spec.split is None:
        tr_mask = ~is_val
    if not tr_mask.any():
        raise DataError(f"{labels}: nothing left to train on after taking the validation rows", hint="check --fold")
    masks, mask_col = _mask_files(df, data, labels, mask_col, paths)
    image_chans = task.in_chans - 1 if masks is not None and task.in_chans in (2, 4) else task.in_chans
    pre = Preprocess(
        size=task.img_size,
        channels=1 if image_chans == 1 else 3,
        windows=tuple(task.windows) if task.windows else None,
        masks=masks,
    )
    if pre.image_channels != image_chans:
        raise UsageError(
            f"task '{task.name}': {pre.image_channels} image channels but in_chans={task.in_chans}",
            hint="set --in-chans to match the windows (one channel per window)",
        )
    source: Any = FileSource(paths, pre)
    if cache_dir is not None:
        from medkit.data.cache import UInt8Cache

        source = UInt8Cache.build(paths, pre, cache_dir, workers=workers or None)
    num_classes = max(int(tgt.max()) + 1 if target in ("multiclass", "ordinal") else 0, task.num_classes)
    names, outputs = _output_names(target, list(spec.labels), num_classes)
    groups_map = {g: tuple(c for c in cols if c in spec.labels) for g, cols in (task.label_groups or {}).items()}
    groups_map = {g: c for g, c in groups_map.items() if c} or dict(spec.label_groups)
    ids = df[spec.image].astype(str).tolist()
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    digest = _data_hash(buf.getvalue().encode(), paths)

    def split(mask: np.ndarray) -> Split:
        rows = np.flatnonzero(mask)
        return Split(source, rows, tgt, [ids[r] for r in rows], [groups[r] for r in rows] if groups else None)

    how = f"fold {fold}" if fold is not None else ("split column" if spec.split else "20% group hold-out")
    return TrainData(
        split(tr_mask),
        split(is_val),
        None,
        names,
        target,
        outputs,
        num_classes,
        groups_map,
        digest,
        pre.out_channels,
        f"{labels}: {int(tr_mask.sum())} train / {int(is_val.sum())} val ({how})"
        + (f"; + mask channel from '{mask_col}'" if masks is not None else ""),
        mask_col if masks is not None else None,
    )


def _mask_files(
    df: Any, root: Path, labels: Any, mask_col: str | None, paths: Sequence[Any]
) -> tuple[dict[str, str] | None, str | None]:
    """Image file -> mask file for the rows that name a mask in ``mask_col``, and the column used.

    ``(None, None)`` when no mask is used.
    """
    if mask_col is None:
        return None, None
    if mask_col == "auto":
        if "mask" not in df.columns or df["mask"].isna().all():
            return None, None
        mask_col = "mask"
    elif mask_col not in df.columns:
        raise UsageError(
            f"--mask-col {mask_col}: no such column in {labels}",
            hint=f"columns are: {', '.join(map(str, df.columns[:20]))}; `medkit tile --masks DIR` writes 'mask'",
        )
    masks: dict[str, str] = {}
    missing: list[str] = []
    for image, value in zip(paths, df[mask_col].tolist(), strict=True):
        if image is None or value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
            continue
        p = Path(str(value))
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            missing.append(str(p))
            continue
        if os.path.abspath(p) == os.path.abspath(image):
            raise DataError(
                f"{labels}: column '{mask_col}' names the image file itself ({p.name})",
                hint="tile with --mosaic or --format png so masks are separate files, or use --mask-col none",
            )
        masks[str(image)] = str(p)
    if missing:
        raise DataError(
            f"{labels}: {len(missing)} mask file(s) of column '{mask_col}' not found, e.g. {missing[0]}",
            hint="pass the `medkit tile` output folder as --data, or --mask-col none to train without masks",
        )
    if not masks:
        raise DataError(f"{labels}: column '{mask_col}' names no mask file", hint="use --mask-col none")
    n_without = len(paths) - len(masks)
    from medkit.console import info, warn

    if n_without:
        warn(f"{n_without} of {len(paths)} images have no mask in column '{mask_col}': their mask channel is 0")
    info(f"mask column '{mask_col}': each image's mask is stacked as the last input channel")
    return masks, mask_col


def _data_hash(table: bytes, paths: Sequence[Any]) -> str:
    from medkit.engine.run import data_hash

    return data_hash(table, [p for p in paths if p is not None])

"""The training data: what to train, validate and test on, read from a dataset table or a MedMNIST archive.

`build_data` turns ``--data`` / ``--labels`` / ``--folds`` / ``--fold`` into train and validation `Split`s over a
`medkit.data.pipeline` source (files, an in-memory MedMNIST array, or a `UInt8Cache`), together with the
`Preprocess` that made every image, the target kind of the labels and the model's input channels. The batch order
and the feeding of the device live in `medkit.engine.feed`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError
from medkit.target import TargetKind, target_kind

__all__ = [
    "Split",
    "TrainData",
    "build_data",
    "channel_mean_std",
    "holdout_mask",
    "data_hash",
    "fold_numbers",
    "archive_task",
]


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
    """Train/validation (and optional test) splits plus what the engine needs to know about the labels and inputs.

    Attributes:
        train: Training split.
        val: Validation split (the out-of-fold rows).
        test: Held-out test split (MedMNIST ``test_*``), or None.
        label_names: Names of the model outputs (label columns; classes for multiclass; ``>k`` for ordinal).
        target: The `medkit.target.TargetKind` of the labels.
        num_outputs: Logits the model produces.
        num_classes: Classes (multiclass) or grades (ordinal); 0 otherwise.
        label_groups: Group name -> label columns, for ``heads="groups"``.
        data_hash: SHA-256 of the table and the file list.
        in_chans: Channels of the uint8 images the model sees (the mask channel included).
        description: One line saying where the data came from.
        mask_col: Table column whose mask files were stacked as the last channel, or None.
        preprocess: The `medkit.data.pipeline.Preprocess` that made the images (None: archive images used as
            they are).
        label_cols: The label columns (or archive label indices) the targets came from.
        context: The `medkit.data.context.ContextPlan` of 2.5D stacks (the source then gives stacks), or None.
    """

    train: Split
    val: Split
    test: Split | None
    label_names: list[str]
    target: TargetKind
    num_outputs: int
    num_classes: int = 0
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    data_hash: str = ""
    in_chans: int = 3
    description: str = ""
    mask_col: str | None = None
    preprocess: Any = None
    label_cols: list[str] = field(default_factory=list)
    context: Any = None

    def mean_std(self, mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
        """Normalisation of every input channel from the task's values: the mask channel's (`channel_mean_std`),
        and for 2.5D stacks each channel its window's (`medkit.data.context.ContextPlan.mean_std`)."""
        mean, std = channel_mean_std(mean, std, self.in_chans, self.mask_col is not None)
        return self.context.mean_std(mean, std) if self.context is not None else (mean, std)

    def label_prevalence(self) -> list[float] | None:
        """Positive rate of each label on the training split (binary/multilabel), for ``pos_weight="auto"``."""
        if not self.target.multi_hot:
            return None
        return [float(v) for v in np.asarray(self.train.targets, dtype=np.float64).mean(axis=0)]


def channel_mean_std(
    mean: Sequence[float], std: Sequence[float], in_chans: int, has_mask: bool
) -> tuple[list[float], list[float]]:
    """Normalisation per input channel: the task's for the image channels, then the mask channel's.

    The mask channel gets mean 0 and std 1/255, so after ``(x / 255 - mean) / std`` the model sees the label
    values themselves (0..5 for PANDA), on the same scale as a normalised image channel.
    """
    mean, std = list(mean), list(std)
    if not has_mask:
        return mean, std
    image_chans = in_chans - 1
    if len(mean) == 1:
        mean = mean * image_chans
    if len(std) == 1:
        std = std * image_chans
    return mean[:image_chans] + [0.0], std[:image_chans] + [1.0 / 255.0]


# ---------------------------------------------------------------------------------------------------- MedMNIST
def _medmnist(task: Any, path: Path) -> TrainData:
    from medkit.data.pipeline import ArraySource, Preprocess
    from medkit.io.readers import load_medmnist

    splits = load_medmnist(path)
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{path}: a MedMNIST file needs train_* and val_* arrays", hint="re-download the file")
    if empty := [s for s in ("train", "val") if not len(splits[s][0])]:
        raise DataError(f"{path}: the {empty[0]} split holds no image", hint="re-download the file, or rebuild it")
    order = [s for s in ("train", "val", "test") if s in splits and len(splits[s][0])]
    images = np.concatenate([splits[s][0] for s in order])
    labels = np.concatenate([splits[s][1] for s in order])
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: looks like a 3-D MedMNIST set {images.shape}; medkit train handles 2-D images",
            hint="use a 2-D MedMNIST file such as breastmnist.npz",
        )
    kind = target_kind(task.target)
    if labels.shape[1] == 1 and kind.multi_hot and labels.max() > 1:
        raise UsageError(
            f"{path}: labels have {int(labels.max()) + 1} classes but task '{task.name}' is {kind}",
            hint="use the multiclass task",
        )
    pre = Preprocess(size=task.img_size, channels=1 if task.in_chans == 1 else 3)
    native = tuple(images.shape[1:3]) == (task.img_size, task.img_size) and (
        (images.shape[-1] if images.ndim == 4 else 1) == task.in_chans
    )
    source = ArraySource(images, None if native else pre)
    tgt = kind.encode(labels, str(path))
    bounds, start = {}, 0
    for s in order:
        bounds[s] = np.arange(start, start + len(splits[s][0]))
        start += len(splits[s][0])
    ids = [f"{s}/{i}" for s in order for i in range(len(splits[s][0]))]

    def split(name: str) -> Split:
        rows = bounds[name]
        return Split(source, rows, tgt, [ids[r] for r in rows])

    num_classes = max(int(tgt.max()) + 1 if kind.integer else 0, task.num_classes)
    label_cols = [f"label{j}" for j in range(labels.shape[1])]
    with open(path, "rb") as fh:
        digest = _sha(fh.read())
    return TrainData(
        split("train"),
        split("val"),
        split("test") if "test" in bounds else None,
        kind.output_names(label_cols, num_classes),
        kind,
        kind.num_outputs(len(label_cols), num_classes),
        num_classes,
        {},
        digest,
        task.in_chans,
        f"MedMNIST {path.name}: " + ", ".join(f"{s} {len(bounds[s])}" for s in order),
        preprocess=None if native else pre,
        label_cols=label_cols,
    )


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def holdout_mask(groups: Sequence[str], seed: int, frac: float = 0.2) -> np.ndarray:
    """Deterministic group-aware hold-out: every group lands wholly in train or validation (True = validation)."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups))
    perm = rng.permutation(len(uniq))
    n_val = max(1, round(frac * len(uniq)))
    val_groups = {uniq[i] for i in perm[:n_val]}
    return np.array([g in val_groups for g in groups])


# ---------------------------------------------------------------------------------------------------- tables
def _read_table(task: Any, labels: Any, label_cols: Sequence[str] | None, image_col: str | None) -> tuple[Any, Any]:
    """The label table and its `TableSpec` with the label columns chosen (explicit, the task's, or detected)."""
    from medkit.data.series import from_long_labels
    from medkit.data.table import detect_spec, load_table

    df = from_long_labels(load_table(labels), labels)  # RSNA stage_2_train.csv as it is
    wanted = list(label_cols) if label_cols else (list(task.labels) if task.labels else None)
    if wanted and not set(wanted) <= {str(c) for c in df.columns}:
        if label_cols:
            missing = [c for c in wanted if c not in df.columns]
            raise DataError(
                f"{labels}: label column(s) {', '.join(missing)} not in the table",
                hint=f"columns are: {', '.join(map(str, df.columns[:20]))}",
            )
        wanted = None  # the preset's default columns do not apply to this table: detect them
    return df, detect_spec(df, image=image_col, labels=wanted)


def _no_labels_error(df: Any, labels: Any) -> DataError:
    """No label column detected: name the numeric columns that were left out as covariates (``age``, ``y``, ...)."""
    import pandas as pd

    from medkit.data.table import NON_LABEL_HINTS

    skipped = [
        str(c) for c in df.columns if str(c).strip().lower() in NON_LABEL_HINTS and pd.api.types.is_numeric_dtype(df[c])
    ]
    if skipped:
        return DataError(
            f"{labels}: no numeric label columns found (column(s) {', '.join(skipped)} taken by name for "
            "covariates or coordinates: they are labels only when named)",
            hint=f"name the label columns with --label-cols, e.g. --label-cols {skipped[0]}",
        )
    return DataError(f"{labels}: no numeric label columns found", hint="name them with --label-cols A,B")


def _join_folds(df: Any, spec: Any, labels: Any, folds: Any) -> tuple[Any, Any]:
    """Add the ``fold`` column of a `medkit split` fold table, joined on the image column."""
    from medkit.data.table import detect_spec, load_table

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
    return df, spec


def _train_val_masks(
    df: Any, spec: Any, labels: Any, fold: int | None, groups: list[str] | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row masks: a fold, the table's split column, or a 20% group-aware hold-out."""
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
        tr_mask = ~is_val
    elif spec.split is not None:
        s = df[spec.split].astype(str).str.lower()
        keep = ~s.isin(["test"]).to_numpy()
        is_val = s.isin(["val", "valid", "validation"]).to_numpy()
        if not is_val.any():
            raise DataError(f"{labels}: split column '{spec.split}' has no 'val' rows", hint="or pass --fold")
        is_val = is_val & keep
        tr_mask = keep & ~is_val
    else:
        is_val = holdout_mask(groups or [str(v) for v in df[spec.image]], seed)
        tr_mask = ~is_val
    if not tr_mask.any():
        raise DataError(f"{labels}: nothing left to train on after taking the validation rows", hint="check --fold")
    return tr_mask, is_val


def _preprocess(task: Any, masks: dict[str, str] | None) -> Any:
    """The `Preprocess` of a task: its size, its image channels (windows or gray/RGB), plus the mask channel."""
    from medkit.data.pipeline import Preprocess

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
    return pre


def build_data(
    task: Any,
    data: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    folds: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    label_cols: Sequence[str] | None = None,
    image_col: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_workers: int | None = None,
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
        cache_workers: Processes that decode files into the cache (None: every usable core).
        seed: Seed for the fallback hold-out.
        mask_col: Column of mask files (``medkit tile --masks`` writes ``mask``) stacked as one more channel;
            ``"auto"`` uses a ``mask`` column when the table has one; None never adds a mask.

    Raises:
        DataError: Missing files, bad labels, an empty fold.
        UsageError: Contradictory options (a fold without a fold column, a table with an npz).
    """
    data = Path(data)
    if data.suffix.lower() == ".npz":
        _check_npz_options(data, labels, fold, mask_col)
        if getattr(task, "context", 1) > 1:
            raise UsageError(
                f"--context {task.context} stacks neighbouring CT slices; {data.name} holds no series",
                hint="pass a folder of slices and --labels TABLE with series_id and slice_index, or drop --context",
            )
        return _medmnist(task, data)
    if labels is None:
        raise UsageError(f"--labels is needed with --data {data}", hint="pass the dataset table (CSV or parquet)")
    df, spec = _read_table(task, labels, label_cols, image_col)
    if folds is not None:
        df, spec = _join_folds(df, spec, labels, folds)
    if not spec.labels:
        raise _no_labels_error(df, labels)
    return _table_data(task, data, labels, df, spec, fold, cache_dir, cache_workers, seed, mask_col)


def _check_npz_options(data: Path, labels: Any, fold: int | None, mask_col: str | None) -> None:
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


def _table_data(
    task: Any,
    root: Path,
    labels: Any,
    df: Any,
    spec: Any,
    fold: int | None,
    cache_dir: Any,
    cache_workers: int | None,
    seed: int,
    mask_col: str | None,
) -> TrainData:
    """Splits, targets and source of a dataset table whose columns are decided."""
    from medkit.data.pipeline import FileSource
    from medkit.data.table import resolve_paths

    paths = resolve_paths(df, root, spec.image)
    _warn_conflicting_ids(df, spec, labels)
    kind = target_kind(task.target).for_columns(len(spec.labels))
    tgt = kind.encode(df[list(spec.labels)].to_numpy(), str(labels))
    groups = df[spec.group].astype(str).tolist() if spec.group else None
    tr_mask, is_val = _train_val_masks(df, spec, labels, fold, groups, seed)
    masks, mask_col = _mask_files(df, root, labels, mask_col, paths)
    pre = _preprocess(task, masks)
    plan, series = _context(task, df, spec, paths, labels, pre, masks)  # before a cache is built
    source: Any = FileSource(paths, pre)
    if cache_dir is not None:
        from medkit.data.cache import UInt8Cache

        source = UInt8Cache.build(paths, pre, cache_dir, workers=cache_workers)
    if plan is not None:  # 2.5D: stacks gathered by index from the per-slice source
        from medkit.data.context import stack_source

        source = stack_source(source, series, plan)
    num_classes = max(int(tgt.max()) + 1 if kind.integer else 0, task.num_classes)
    groups_map = {g: tuple(c for c in cols if c in spec.labels) for g, cols in (task.label_groups or {}).items()}
    groups_map = {g: c for g, c in groups_map.items() if c} or dict(spec.label_groups)
    ids = df[spec.image].astype(str).tolist()
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    digest = data_hash(buf.getvalue().encode(), [p for p in paths if p is not None])

    def split(mask: np.ndarray) -> Split:
        rows = np.flatnonzero(mask)
        return Split(source, rows, tgt, [ids[r] for r in rows], [groups[r] for r in rows] if groups else None)

    how = f"fold {fold}" if fold is not None else ("split column" if spec.split else "20% group hold-out")
    return TrainData(
        split(tr_mask),
        split(is_val),
        None,
        kind.output_names(list(spec.labels), num_classes),
        kind,
        kind.num_outputs(len(spec.labels), num_classes),
        num_classes,
        groups_map,
        digest,
        plan.in_chans if plan is not None else pre.out_channels,
        f"{labels}: {int(tr_mask.sum())} train / {int(is_val.sum())} val ({how})"
        + (f"; + mask channel from '{mask_col}'" if masks is not None else ""),
        mask_col if masks is not None else None,
        preprocess=pre,
        label_cols=list(spec.labels),
        context=plan,
    )


def _context(task: Any, df: Any, spec: Any, paths: Sequence[Any], labels: Any, pre: Any, masks: Any) -> tuple[Any, Any]:
    """The `medkit.data.context.ContextPlan` of ``task.context`` and the series of the rows, or ``(None, None)``
    for single slices.

    Raises:
        UsageError: A mask column (a stack has no single mask), or a table without series.
    """
    if getattr(task, "context", 1) <= 1:
        return None, None
    from medkit.console import info
    from medkit.data.context import ContextPlan
    from medkit.data.series import series_of_rows

    if masks is not None:
        raise UsageError(f"--context {task.context} does not combine with a mask channel", hint="pass --mask-col none")
    plan = ContextPlan(int(task.context), task.context_mode, pre.out_channels)
    index = series_of_rows(df, spec, paths, labels, f"--context {task.context}")
    info(f"{plan.describe()}; {len(index.sequences())} series, slice order from {index.method}")
    return plan, index


def _warn_conflicting_ids(df: Any, spec: Any, labels: Any) -> None:
    """Warn when an image is listed more than once with different labels (the model would learn both)."""
    from medkit.console import warn
    from medkit.data.table import describe_conflicts, duplicate_id_conflicts

    if conflicts := duplicate_id_conflicts(df, spec.image, spec.labels):
        warn(f"{labels}: {describe_conflicts(conflicts, df, spec.labels)}; run `medkit audit` and settle them")


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
    masks, missing = _match_masks(df[mask_col].tolist(), root, labels, mask_col, paths)
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


def _match_masks(
    values: list[Any], root: Path, labels: Any, mask_col: str, paths: Sequence[Any]
) -> tuple[dict[str, str], list[str]]:
    masks: dict[str, str] = {}
    missing: list[str] = []
    for image, value in zip(paths, values, strict=True):
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
    return masks, missing


def data_hash(table_bytes: bytes, files: Sequence[str | os.PathLike[str]]) -> str:
    """SHA-256 over the table's bytes and the file list (path, size, mtime): changes when the data changes."""
    import hashlib

    h = hashlib.sha256()
    h.update(table_bytes)
    for f in files:
        p = Path(f)
        try:
            st = p.stat()
            h.update(f"{p.as_posix()}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
        except OSError:
            h.update(f"{p.as_posix()}\0missing\n".encode())
    return h.hexdigest()


def fold_numbers(table: str | os.PathLike[str] | None) -> list[int]:
    """The fold numbers of a fold table (or of a label table's fold column), sorted: what ``--fold all`` trains.

    Raises:
        UsageError: No table, or a table without a fold column.
    """
    from medkit.data.table import detect_spec, load_table

    if table is None:
        raise UsageError("--fold all needs a table with a fold column", hint="pass --folds folds.csv (medkit split)")
    df = load_table(table)
    spec = detect_spec(df)
    if spec.fold is None:
        raise UsageError(f"--fold all: {table} has no fold column", hint="write folds with `medkit split`")
    return sorted(int(v) for v in set(df[spec.fold].dropna().tolist()))


def archive_task(task: Any, path: str | os.PathLike[str]) -> Any:
    """The task at a MedMNIST archive's own image size (28, 64, 128 or 224 px), when it differs from the preset's.

    Upsampling 28 px MedMNIST images to a 224 px preset costs 64x the compute and adds no detail, so without an
    explicit ``--img-size`` the archive's size is used (and said).
    """
    from medkit.io.medmnist import medmnist_image_size

    native = medmnist_image_size(path)
    if not native or native == task.img_size:
        return task
    from medkit.console import info

    info(f"--img-size not given: using the {native} px images of {Path(path).name} as they are")
    return task.with_(img_size=native)

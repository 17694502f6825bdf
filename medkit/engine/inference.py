"""`medkit predict` as a library call: trained runs -> one prediction table (docs/predict.md).

`predict_runs` resolves the run folders (a run, every ``fold<k>/`` of a ``--fold all`` root, or several), checks
that they predict the same outputs, reads the images once per distinct preprocessing (`ImageSet`: a dataset
table, a folder, or a MedMNIST split), feeds them through the same feeder, autocast and memory format as training
(`medkit.engine.predict.predict` over `medkit.engine.feed.make_feeder`), scores every run on every test-time view
(`medkit.engine.tta`) in the same pass over the batches, aggregates CT slices with their neighbours
(`medkit.engine.aggregate`), averages the probabilities over the views and then over the runs, adds the grade of
ordinal and multiclass runs, and writes the table and its sidecar with `medkit.data.predictions.write_predictions`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.engine.aggregate import aggregate_neighbours, parse_weights
from medkit.engine.run import RunDir
from medkit.engine.tta import View, average_views, parse_tta
from medkit.errors import DataError, UsageError

__all__ = [
    "PredictOptions",
    "PredictResult",
    "ImageSet",
    "resolve_runs",
    "load_runs",
    "image_set",
    "predict_runs",
    "ordinal_cut_points",
    "default_out",
]


@dataclass
class PredictOptions:
    """What to predict and how (the flags of ``medkit predict``).

    Attributes:
        data: Image root folder, or a MedMNIST ``.npz``.
        labels: Dataset table naming the images (label columns optional), or None for every image under ``data``.
        image_col: Image column of the table (None: detected).
        split: Archive split (``test`` when None), or the rows of the table's split column to keep.
        tta: ``--tta`` value (``"hflip,vflip,shift"``); None: no test-time augmentation.
        neighbours: Neighbour weights for every run (``"0.25,0.5,0.25"``, ``"none"`` to switch off); None: each
            run's own (`RunSpec.neighbours`).
        cam: Grad-CAM overlays to write (0: none).
        out: Prediction table (None: `default_out`).
        batch_size: Images per batch (None: the first run's training batch size).
        workers: DataLoader workers (None: the runtime's default for the device).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        amp: Precision as `medkit.engine.runtime.resolve_runtime` takes it (``auto``: bf16 / fp16 on a GPU, fp32
            on the CPU; ``on`` forces it; ``off``, ``bf16``, ``fp16``).
        cache_dir: Preprocess the files once into a `medkit.data.cache.UInt8Cache` under this folder.
        feed: How batches reach the model (`medkit.engine.feeders.FEEDS`; ``auto``: chosen by size, as in training).
    """

    data: str | os.PathLike[str]
    labels: str | os.PathLike[str] | None = None
    image_col: str | None = None
    split: str | None = None
    tta: str | Sequence[str] | None = None
    neighbours: str | Sequence[float] | None = None
    cam: int = 0
    out: str | os.PathLike[str] | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    amp: str = "auto"
    cache_dir: str | os.PathLike[str] | None = None
    feed: str = "auto"


@dataclass
class PredictResult:
    """What `predict_runs` did.

    Attributes:
        out: The prediction table written.
        frame: Its rows (pandas DataFrame).
        meta: Its sidecar.
        runs: The run folders used (fold sub-runs expanded).
        views: Names of the test-time views.
        seconds: Wall time of the prediction passes (model loading and writing excluded).
        img_per_s: Images per second through every run and view.
        score: The runs' metric on these images when the table or archive has their labels, else None.
        cam: Grad-CAM files written (the contact sheet last), or [].
    """

    out: Path
    frame: Any
    meta: Any
    runs: list[Path]
    views: list[str]
    seconds: float
    img_per_s: float
    score: float | None = None
    cam: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- runs
def resolve_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The run folders behind the arguments: a run with ``checkpoints/best.pt``, or every ``fold<k>/`` sub-run of a
    ``--fold all`` root (in fold order); a folder named twice counts once.

    Raises:
        UsageError: No run given.
        DataError: A folder that does not exist or holds no trained run.
    """
    if not paths:
        raise UsageError("no run folder given", hint="pass the --out folder of `medkit train`")
    out: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if not p.is_dir():
            raise DataError(f"run folder not found: {p}", hint="pass the --out folder of `medkit train`")
        if RunDir(p).best.is_file():
            found = [p]
        else:
            folds = [d for d in p.glob("fold*") if d.is_dir() and d.name[4:].isdigit() and RunDir(d).best.is_file()]
            found = sorted(folds, key=lambda d: int(d.name[4:]))
        if not found:
            raise DataError(
                f"{p}: no trained run here (no checkpoints/best.pt, no fold<k>/checkpoints/best.pt)",
                hint="pass a run folder of `medkit train`, or the root of a --fold all run",
            )
        out.extend(d for d in found if d.resolve() not in {o.resolve() for o in out})
    return out


def load_runs(dirs: Sequence[Path], runtime: Any) -> list[Any]:
    """Load every run (`medkit.engine.spec.load_run`) onto the runtime's device and check that they agree.

    Raises:
        UsageError: Runs with different target kinds or label names.
    """
    from medkit.engine.spec import load_run

    runs = []
    for d in dirs:
        loaded = load_run(d, device=runtime.device)
        loaded.model = runtime.place_model(loaded.model)
        runs.append(loaded)
    first = runs[0].inputs.spec
    for d, run in zip(dirs[1:], runs[1:], strict=True):
        spec = run.inputs.spec
        if (spec.target, spec.label_names) != (first.target, first.label_names):
            raise UsageError(
                f"runs predict different things: {dirs[0]} gives {first.target} {list(first.label_names)}, "
                f"{d} gives {spec.target} {list(spec.label_names)}",
                hint="predict each kind of run separately, then blend compatible tables with `medkit ensemble`",
            )
    return runs


# ---------------------------------------------------------------------------------------------------- images
@dataclass
class ImageSet:
    """The images to predict, in output order, and what the output carries over about them.

    Attributes:
        ids: Image id of every row (the table's image column, a path under the folder, or ``<split>/<i>``).
        columns: Id columns carried into the output (``patient_id``, ``series``, ``order``), when known.
        name: Stem of the default output file (the split, the table's or the folder's name).
        description: One line for the log.
        paths: Image files (tables and folders), or None.
        images: Archive images ``(N, H, W[, C])`` uint8, or None.
        labels: Archive labels ``(N, K)``, or None.
        table: The dataset table (pandas, rows in output order), or None.
        table_path: Where the table came from.
        root: The image root of a table.
        table_spec: The `medkit.data.table.TableSpec` of the table, or None.
    """

    ids: list[str]
    columns: dict[str, list[Any]]
    name: str
    description: str
    paths: list[Path] | None = None
    images: Any = None
    labels: Any = None
    table: Any = None
    table_path: Path | None = None
    root: Path | None = None
    table_spec: Any = None
    _series: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def source(self, inputs: Any, cache_dir: Any = None, workers: int | None = None) -> Any:
        """The images prepared exactly as the run's training prepared its own (`RunInputs`).

        Raises:
            DataError: A run trained on archive images given files (or archive images of another size), or a
                run with a mask channel and no mask column.
        """
        spec = inputs.spec
        if self.images is not None:
            return _archive_source(self.images, spec)
        if spec.preprocess is None:
            raise DataError(
                f"run {spec.task}/{spec.model.name} was trained on archive images: it cannot read image files",
                hint="predict a MedMNIST .npz of the same size with --data",
            )
        masks = self._masks(spec.mask_col)
        src = inputs.file_source(self.paths, masks)
        if cache_dir is not None:
            from medkit.data.cache import UInt8Cache

            src = UInt8Cache.build(self.paths, src.preprocess, cache_dir, workers=workers)
        plan = spec.context_plan()
        if plan is None:
            return src
        from medkit.data.context import stack_source

        return stack_source(src, self.series_index(f"a run trained with --context {plan.slices}"), plan)

    def series_index(self, needed_by: str) -> Any:
        """The `medkit.data.series.SeriesIndex` of the images (the table's series / order columns, else the DICOM
        headers), found once.

        Raises:
            UsageError: Images without series (no series column and not DICOM, or a MedMNIST archive).
        """
        from medkit.data.series import series_of_rows

        if self._series is None:
            if self.paths is None:
                raise UsageError(f"{needed_by} reads CT series; a MedMNIST archive has none", hint="predict CT slices")
            where = self.table_path or "the image folder"
            self._series = series_of_rows(self.table, self.table_spec, self.paths, where, needed_by)
        return self._series

    def _masks(self, mask_col: str | None) -> dict[str, str] | None:
        if mask_col is None:
            return None
        if self.table is None or mask_col not in self.table.columns:
            where = f"{self.table_path} has no column '{mask_col}'" if self.table is not None else "no table given"
            raise DataError(
                f"the run stacks the masks of column '{mask_col}' as an input channel, but {where}",
                hint=f"pass --labels TABLE with the '{mask_col}' column (`medkit tile --masks` writes it)",
            )
        from medkit.data.dataset import _mask_files

        masks, _ = _mask_files(self.table, self.root, self.table_path, mask_col, self.paths)
        return masks

    def targets(self, spec: Any) -> Any:
        """The labels of the images for the run's outputs (as training encodes them), or None when unknown."""
        from medkit.target import target_kind

        kind = target_kind(spec.target)
        if self.labels is not None:
            values = self.labels
        elif self.table is not None and spec.label_cols and set(spec.label_cols) <= set(self.table.columns):
            values = self.table[list(spec.label_cols)].to_numpy()
        else:
            return None
        try:
            return kind.encode(values, str(self.table_path or "labels"))
        except DataError:  # missing or non-integer labels (a test table): no score
            return None

    def key_columns(self) -> tuple[Any, Any]:
        """``(series, order)`` of every row, for neighbour aggregation.

        Raises:
            UsageError: The images carry no series or slice order.
        """
        if "series" not in self.columns or "order" not in self.columns:
            dicom = self.paths is not None and all(str(p).lower().endswith((".dcm", ".dicom")) for p in self.paths)
            if not dicom or not len(self.paths or ()):
                raise UsageError(
                    "neighbour aggregation needs the series and slice order of every image",
                    hint="pass --labels TABLE with series_id and slice_index (or InstanceNumber) columns, "
                    "use DICOM slices (their headers give both), or --neighbours none",
                )
            # DICOM slices without a table (a test folder): the headers' geometry gives series and order, and the
            # output carries them like a table's columns.
            index = self.series_index("neighbour aggregation")
            self.columns["series"] = [str(v) for v in index.series]
            self.columns["order"] = [float(v) for v in index.order]
        return np.asarray(self.columns["series"]), np.asarray(self.columns["order"])


def _archive_source(images: Any, spec: Any) -> Any:
    from medkit.data.pipeline import ArraySource
    from medkit.engine.spec import preprocess_from

    if spec.mask_col is not None:
        raise DataError(f"the run stacks masks of column '{spec.mask_col}': an archive has none")
    if spec.preprocess is not None:
        return ArraySource(images, preprocess_from(spec.preprocess))
    chans = int(images.shape[-1]) if images.ndim == 4 else 1
    want = (spec.img_size, spec.img_size, int(spec.model.kwargs.get("in_chans", chans)))
    have = (int(images.shape[1]), int(images.shape[2]), chans)
    if have != want:
        raise DataError(
            f"the run was trained on archive images of {want[0]}x{want[1]} px with {want[2]} channel(s); "
            f"these are {have[0]}x{have[1]} with {have[2]}",
            hint="predict the MedMNIST file of the size the run was trained on",
        )
    return ArraySource(images)


def image_set(
    data: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    image_col: str | None = None,
    split: str | None = None,
) -> ImageSet:
    """The images ``medkit predict`` reads: a MedMNIST split, the rows of a table, or every image under a folder.

    Raises:
        UsageError: Options that do not fit the input (``--labels`` with an archive, ``--split`` without splits).
        DataError: Missing files, an unknown split, duplicate image ids, an empty selection.
    """
    data = Path(data)
    if data.suffix.lower() == ".npz":
        if labels is not None:
            raise UsageError("--labels is not used with a MedMNIST .npz", hint="drop --labels; pick rows with --split")
        return _archive_set(data, split or "test")
    if not data.exists():
        raise DataError(f"data not found: {data}", hint="pass the image folder (or a .npz) with --data")
    if labels is not None:
        return _table_set(data, Path(labels), image_col, split)
    if split is not None:
        raise UsageError(f"--split {split} needs a .npz or a table with a split column", hint="drop --split")
    return _folder_set(data)


def _archive_set(path: Path, split: str) -> ImageSet:
    from medkit.io.medmnist import load_medmnist

    splits = load_medmnist(path)
    if split not in splits:
        raise DataError(f"{path}: no '{split}' split", hint=f"use --split {' | '.join(splits)}")
    images, labels = splits[split]
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: 3-D volumes {images.shape[1:]} are not supported", hint="use a 2-D MedMNIST file")
    ids = [f"{split}/{i}" for i in range(len(images))]
    return ImageSet(ids, {}, split, f"{path.name}: {split} split, {len(ids)} images", images=images, labels=labels)


_VAL_NAMES = {"val", "valid", "validation"}  # what `medkit train` reads as validation rows of a split column


def _table_set(root: Path, table: Path, image_col: str | None, split: str | None) -> ImageSet:
    from medkit.data.series import from_long_labels
    from medkit.data.table import detect_spec, load_table, resolve_paths

    df = from_long_labels(load_table(table), table)  # RSNA stage_2_train.csv as it is, as `medkit train` reads it
    spec = detect_spec(df, image=image_col, labels=())
    if split is not None:
        if spec.split is None:
            raise UsageError(f"--split {split}: {table} has no split column", hint="drop --split to predict every row")
        wanted = _VAL_NAMES if split.lower() in _VAL_NAMES else {split.lower()}
        df = df[df[spec.split].astype(str).str.lower().isin(wanted)]
        if df.empty:
            raise DataError(f"{table}: no rows with {spec.split} == '{split}'", hint="check --split")
    df = df.reset_index(drop=True)
    ids = df[spec.image].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(
            f"{table}: image '{dup.iloc[0]}' appears {int((ids == dup.iloc[0]).sum())} times",
            hint="a prediction table has one row per image: drop the repeated rows",
        )
    paths = resolve_paths(df, root, spec.image)
    columns = {
        out: df[col].tolist()
        for out, col in (("patient_id", spec.group), ("series", spec.series), ("order", spec.order))
        if col is not None
    }
    for key in ("patient_id", "series"):
        if key in columns:
            columns[key] = [str(v) for v in columns[key]]
    desc = f"{table.name}: {len(df)} images under {root}" + (f" ({split} rows)" if split else "")
    return ImageSet(
        ids.tolist(),
        columns,
        table.name.split(".")[0],
        desc,
        list(paths),
        table=df,
        table_path=table,
        root=root,
        table_spec=spec,
    )


def _folder_set(root: Path) -> ImageSet:
    from medkit.data.table import IMAGE_SUFFIXES, index_files

    if root.is_file():
        return ImageSet([root.name], {}, root.stem, f"one image: {root}", paths=[root])
    index = index_files(root)
    rel = sorted(k for k, p in index.items() if p.relative_to(root).as_posix() == k)
    if not rel:
        raise DataError(f"no image files under {root}", hint=f"medkit reads {', '.join(IMAGE_SUFFIXES)}")
    return ImageSet(rel, {}, root.name, f"{len(rel)} images under {root}", paths=[index[k] for k in rel])


def default_out(first_run: str | os.PathLike[str], images: ImageSet) -> Path:
    """``<first run>/predictions/<split, table or folder name>.csv``: next to the model that made it."""
    return Path(first_run) / "predictions" / f"{images.name}.csv"


# ---------------------------------------------------------------------------------------------------- passes
class _Logits:
    """Stands in for the target kind in `predict`: keeps the logits (aggregation and averaging need them)."""

    @staticmethod
    def probabilities(logits: Any) -> Any:
        return logits.float()


def _same(x: Any) -> Any:
    return x


def _views_module(models: Sequence[Any], normalizers: Sequence[Any], views: Sequence[View], channels_last: bool) -> Any:
    """One module scoring a uint8 batch with every model on every view: logits ``(B, runs * views * K)``.

    A batch is read and copied to the device once, however many runs share its preprocessing and however many
    views are asked for; flips and shifts are index gathers on the uint8 batch, before each run's normalisation.
    """
    import torch
    from torch import nn

    class ViewsModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.models = nn.ModuleList(models)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = []
            for model, normalize in zip(self.models, normalizers, strict=True):
                for view in views:
                    xi = normalize(view.apply(x))
                    if channels_last:
                        xi = xi.contiguous(memory_format=torch.channels_last)
                    outs.append(model(xi))
            return torch.cat(outs, dim=1)

    return ViewsModule()


def _counted(feeder: Any, bar: Any) -> Any:
    for batch in feeder:
        yield batch
        bar.update(len(batch))


def _group_key(spec: Any) -> str:
    """Runs with equal keys read identical pixels, so they share one pass over the images."""
    key = {"pre": spec.preprocess, "mask": spec.mask_col, "size": spec.img_size, "context": spec.context}
    return json.dumps(key, sort_keys=True)


def _predict_logits(
    runs: Sequence[Any], images: ImageSet, views: Sequence[View], rt: Any, opts: PredictOptions
) -> tuple[list[np.ndarray], list[Any]]:
    """Logits ``(views, N, K)`` of every run, and the source each run read, in one pass per preprocessing."""
    from medkit.console import Progress, info
    from medkit.data.dataset import Split
    from medkit.engine.feed import make_feeder
    from medkit.engine.feeders import plan_feed
    from medkit.engine.predict import gather, predict

    groups: dict[str, list[int]] = {}
    # sequence models (medkit.engine.sequence) read whole series, not batches of slices
    sequence = [r for r, run in enumerate(runs) if getattr(run.model, "medkit_info", {}).get("sequence")]
    for r, run in enumerate(runs):
        if r not in sequence:
            groups.setdefault(_group_key(run.inputs.spec), []).append(r)
    n, k = len(images), len(runs[0].inputs.spec.label_names)
    logits: list[np.ndarray] = [np.empty(0)] * len(runs)
    sources: list[Any] = [None] * len(runs)
    batch = opts.batch_size or runs[0].inputs.spec.batch_size
    for r in sequence:
        from medkit.engine.sequence import predict_series

        series, order = images.key_columns()
        sources[r] = images.source(runs[r].inputs, opts.cache_dir, opts.workers)
        model, normalize = runs[r].model, runs[r].inputs.transforms.eval
        logits[r] = predict_series(model, normalize, sources[r], series, order, views, rt, max(batch, 16))
    with Progress(total=n * len(groups), description="predict", unit="img", enabled=rt.is_main) as bar:
        for members in groups.values():
            source = images.source(runs[members[0]].inputs, opts.cache_dir, opts.workers)
            split = Split(source, np.arange(n), np.zeros((n, 0), np.float32), list(images.ids))
            module = _views_module(
                [runs[r].model for r in members],
                [runs[r].inputs.transforms.eval for r in members],
                views,
                rt.channels_last,
            )
            choice = plan_feed([split], rt, opts.feed)
            if rt.is_main:
                info(f"feed: {choice.name} ({choice.reason})")
            feeder = make_feeder(split, batch, rt, train=False, feed=choice.name)
            preds = gather(predict(module, _counted(feeder, bar), rt, _Logits(), _same), rt.dist, split)
            out = preds.probs.reshape(n, len(members), len(views), k)
            for j, r in enumerate(members):
                logits[r], sources[r] = np.ascontiguousarray(out[:, j].transpose(1, 0, 2)), source
    return logits, sources


def _combine(
    runs: Sequence[Any], logits: Sequence[np.ndarray], weights: Sequence[tuple[float, ...]], images: ImageSet
) -> np.ndarray:
    """Probabilities ``(N, K)``: per run and view, neighbour-aggregated logits through the run's sigmoid / softmax;
    the mean over views, then the plain mean over runs (fold averaging)."""
    import torch

    per_run = []
    for run, z, w in zip(runs, logits, weights, strict=True):
        kind = run.inputs.target
        views = []
        for zv in z:
            if w:
                series, order = images.key_columns()
                zv = aggregate_neighbours(zv, series, order, w)
            views.append(kind.probabilities(torch.from_numpy(np.asarray(zv))).numpy())
        per_run.append(average_views(views))
    return average_views(per_run)


# ---------------------------------------------------------------------------------------------------- grades
def ordinal_cut_points(dirs: Sequence[Path], num_classes: int) -> tuple[tuple[float, ...], str]:
    """Cut points of the expected grade, optimised for QWK on the runs' own out-of-fold predictions.

    The oof.csv of every run is read; an image predicted by several runs (two models on one fold) gets the mean
    of their probabilities. Without any OOF table the cut points are ``0.5, 1.5, ...`` (rounding).

    Returns:
        ``(cut points, where they came from)``.
    """
    import pandas as pd

    from medkit.metrics import optimise_thresholds

    default = tuple(float(k) + 0.5 for k in range(num_classes - 1))
    frames = [pd.read_csv(RunDir(d).oof_csv) for d in dirs if RunDir(d).oof_csv.is_file()]
    frames = [f for f in frames if "target" in f.columns]
    if not frames:
        return default, "rounding (no oof.csv)"
    oof = pd.concat(frames, ignore_index=True)
    cols = [c for c in oof.columns if str(c).endswith("_prob")]
    joined = oof.groupby(oof["image"].astype(str), sort=False).agg({**{c: "mean" for c in cols}, "target": "first"})
    expected = joined[cols].to_numpy(np.float64).sum(axis=1)
    cuts = optimise_thresholds(joined["target"].to_numpy(np.int64), expected, num_classes)
    return tuple(float(c) for c in cuts), f"QWK-optimised on {len(joined)} out-of-fold rows"


def _grades(kind: Any, probs: np.ndarray, cuts: Sequence[float]) -> np.ndarray | None:
    if kind.cumulative:
        from medkit.metrics import apply_thresholds

        return apply_thresholds(probs.astype(np.float64).sum(axis=1), cuts)
    if kind.softmax:
        return probs.argmax(axis=1).astype(np.int64)
    return None


# ---------------------------------------------------------------------------------------------------- the call
def predict_runs(run_dirs: Sequence[str | os.PathLike[str]], opts: PredictOptions) -> PredictResult:
    """Predict images with one or more trained runs and write the prediction table (and Grad-CAM overlays).

    Args:
        run_dirs: Run folders (a run, a ``--fold all`` root, several of either).
        opts: The images and how to predict them.

    Returns:
        The `PredictResult`; the table is at ``result.out`` with its sidecar next to it.

    Raises:
        MedkitError: Missing runs or images, runs that disagree, options that do not fit the inputs.
    """
    from medkit.console import info
    from medkit.engine.runtime import resolve_runtime

    dirs = resolve_runs(run_dirs)
    views = parse_tta(opts.tta)
    override = None if opts.neighbours is None else parse_weights(opts.neighbours)
    if opts.cam < 0:
        raise UsageError(f"--cam must be >= 0, got {opts.cam}")
    images = image_set(opts.data, opts.labels, opts.image_col, opts.split)
    out = Path(opts.out) if opts.out is not None else default_out(run_dirs[0], images)
    rt = resolve_runtime(opts.device, opts.amp, opts.workers)
    runs = load_runs(dirs, rt)
    weights = [override if override is not None else tuple(r.inputs.spec.neighbours) for r in runs]
    if any(weights):
        images.key_columns()  # fails now rather than after the pass
    if plan := next((r.inputs.spec.context_plan() for r in runs if r.inputs.spec.context), None):
        images.series_index(f"a run trained with --context {plan.slices}")  # 2.5D stacks: likewise
    info(
        f"predict: {images.description}; {len(runs)} run(s) x {len(views)} view(s) "
        f"({', '.join(v.name for v in views)}) on {rt.device}"
    )
    t0 = time.perf_counter()
    logits, sources = _predict_logits(runs, images, views, rt, opts)
    seconds = time.perf_counter() - t0
    probs = _combine(runs, logits, weights, images)
    spec, kind = runs[0].inputs.spec, runs[0].inputs.target
    cuts, cuts_from = (), ""
    if kind.cumulative:
        cuts, cuts_from = ordinal_cut_points(dirs, spec.num_classes)
    details = _details(opts, images, views, dirs, weights, rt, seconds)
    if cuts_from:
        details["cut_points_from"] = cuts_from
    frame, meta = _prediction_table(images, probs, spec, kind, cuts, dirs, details)
    from medkit.data.predictions import write_predictions

    write_predictions(out, frame, meta)
    y = images.targets(spec)
    value = None
    if y is not None:
        from medkit.metrics import score

        value = score(spec.metric, kind, y, probs)
    cam_files = _write_cams(runs, sources, images, probs, y, opts.cam, out) if opts.cam else []
    return PredictResult(
        out, frame, meta, dirs, [v.name for v in views], seconds, details["img_per_s"], value, cam_files
    )


def _details(
    opts: PredictOptions,
    images: ImageSet,
    views: Sequence[View],
    dirs: Sequence[Path],
    weights: Sequence[tuple[float, ...]],
    rt: Any,
    seconds: float,
) -> dict[str, Any]:
    """The sidecar's ``details``: what was predicted, how, and how fast."""
    return {
        "data": str(opts.data),
        "split": opts.split or ("test" if images.images is not None else None),
        "images": len(images),
        "tta": [v.name for v in views],
        "neighbours": {str(d.resolve()): list(w) for d, w in zip(dirs, weights, strict=True) if w},
        "fold_averaging": "mean of the runs' probabilities",
        "device": str(rt.device),
        "amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype is not None else "fp32",
        "img_per_s": len(images) / max(seconds, 1e-9),
    }


def _prediction_table(
    images: ImageSet,
    probs: np.ndarray,
    spec: Any,
    kind: Any,
    cuts: Sequence[float],
    dirs: Sequence[Path],
    details: dict[str, Any],
) -> tuple[Any, Any]:
    """The rows (``image``, id columns, ``<label>_prob``, ``grade``) and their sidecar."""
    import pandas as pd

    from medkit.data.predictions import PROB_SUFFIX, PredictionsMeta

    frame = pd.DataFrame({"image": images.ids})
    for name, values in images.columns.items():
        frame[name] = values
    for j, name in enumerate(spec.label_names):
        frame[f"{name}{PROB_SUFFIX}"] = probs[:, j]
    grades = _grades(kind, probs, cuts)
    if grades is not None:
        frame["grade"] = grades
    meta = PredictionsMeta(
        target=spec.target,
        label_names=tuple(spec.label_names),
        label_cols=tuple(spec.label_cols),
        num_classes=int(spec.num_classes),
        metric=spec.metric,
        task=spec.task,
        cut_points=tuple(cuts),
        sources=tuple(str(d.resolve()) for d in dirs),
        details=details,
    )
    return frame, meta


def _write_cams(
    runs: Sequence[Any], sources: Sequence[Any], images: ImageSet, probs: np.ndarray, y: Any, n: int, out: Path
) -> list[Path]:
    from medkit.engine.cam import CamRequest, write_cams

    request = CamRequest(
        models=[r.model for r in runs],
        normalizers=[r.inputs.transforms.eval for r in runs],
        sources=list(sources),
        target=runs[0].inputs.target,
        label_names=list(runs[0].inputs.spec.label_names),
    )
    return write_cams(request, images.ids, probs, y, n, out.with_name(f"{out.stem}_cam"))

"""Neighbour refinement of a trained slice model (`medkit refine RUN_DIR --seq N`, `medkit train --refine-seq N`).

A CT slice model is first trained on single slices. The refinement stage continues it, at a small learning rate,
with the context of the N slices around each slice: the trained CNN is applied to each of the N slices (the ends
of a series repeated), and their N logit vectors are combined by a weighted sum before the sigmoid. The weights
are learnable and start from a centred window (``1, 2, .., 2, 1`` normalised to 1, or ``init_weights``); the loss
is on the centre slice's labels. Augmentation is drawn once per stack, so the N slices of a stack move together.

Prediction needs nothing new: the refined CNN predicts every slice on its own and the learned weights combine the
logits of neighbouring slices (`medkit.engine.aggregate.aggregate_neighbours`). The stage's spec records those
weights (`RunSpec.neighbours`), so `medkit predict REFINED_RUN` applies them, and the stage's oof.csv is computed
the same way.

Every stage is a run folder of its own (run.json with ``parent``, metrics.csv, oof.csv, checkpoints/), and
``resume`` continues a stage from its last.pt.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = ["RefineOptions", "centred_window", "refine_run", "pseudo_targets"]


@dataclass
class RefineOptions:
    """How a refinement stage trains.

    Attributes:
        seq: Slices per stack (odd): the slice and ``seq // 2`` on each side.
        lr: Learning rate (small: the model is already trained).
        epochs: Epochs of the stage.
        optimizer: OPTIMIZERS name (None: the parent's).
        loss: LOSSES name (None: the parent's).
        freeze: fnmatch patterns of parameter names left as they are (e.g. ``conv1.*``, ``layer1.*``).
        distill: A teacher run: its logits (neighbour-aggregated with its own weights) are soft targets too.
        distill_weight: Weight of the distillation term (the label loss keeps weight 1).
        pseudo_labels: A prediction CSV (``image`` plus ``<label>_prob`` or ``<label>`` columns) whose values replace
            the training targets of the rows it names.
        init_weights: Starting neighbour weights (``"0.1,0.2,0.4,0.2,0.1"``); None: the centred window.
        learn_weights: Train the neighbour weights (else they stay at their start).
        weights_lr: Learning rate of the neighbour weights, in a parameter group of their own: the CNN's lr is tiny
            (it is trained already), while the N weights start from a guess and must be free to move.
        update_bn: Let batch norm layers update their running statistics (off by default: a batch of stacks holds
            a few groups of near-identical neighbouring slices, whose variance is lower than that of the slices the
            parent was trained on, so updated statistics shift every prediction whatever the learning rate; frozen,
            the layers normalise as in the parent, and their scale and shift still learn at ``lr``).
        batch_size: Stacks per step (None: the parent's batch size // seq, at least 2).
        out: The stage's run folder (None: ``<parent>-refine<seq>`` next to the parent).
        resume: Continue the stage from its checkpoints/last.pt.
        device: Device spec.
        dry_run: One training step and one validation batch.
    """

    seq: int = 5
    lr: float = 1e-6
    epochs: int = 2
    optimizer: str | None = None
    loss: str | None = None
    freeze: tuple[str, ...] = ()
    distill: str | None = None
    distill_weight: float = 0.5
    pseudo_labels: str | None = None
    init_weights: str | None = None
    learn_weights: bool = True
    weights_lr: float = 1e-3
    update_bn: bool = False
    batch_size: int | None = None
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["freeze"] = list(self.freeze)
        return d


def centred_window(n: int) -> tuple[float, ...]:
    """``(1, 2, .., k+1, .., 2, 1) / sum``: the start of the learnable neighbour weights (n odd).

    Raises:
        UsageError: An even or non-positive n.
    """
    if n < 1 or n % 2 == 0:
        raise UsageError(f"--seq needs an odd number of slices >= 1, got {n}", hint="e.g. --seq 5")
    r = n // 2
    w = np.array([r + 1 - abs(i - r) for i in range(n)], dtype=np.float64)
    return tuple(float(v) for v in w / w.sum())


def _neighbour_module(cnn: Any, weights: tuple[float, ...], learn: bool) -> Any:
    import torch

    class NeighbourModel(torch.nn.Module):
        """The slice CNN on each slice of a stack, its logits summed with one weight per position."""

        def __init__(self) -> None:
            super().__init__()
            self.cnn = cnn
            self.weights = torch.nn.Parameter(torch.tensor(weights, dtype=torch.float32), requires_grad=learn)

        def forward(self, x: Any) -> Any:  # x: (B, N, C, H, W) -> (B, K)
            b, n = x.shape[:2]
            z = self.cnn(x.flatten(0, 1))
            z = z.reshape(b, n, -1).float()
            return torch.einsum("n,bnk->bk", self.weights, z)

    return NeighbourModel()


# ---------------------------------------------------------------------------------------------------- parent
def _read_parent(parent: Path) -> dict[str, Any]:
    path = parent / "run.json"
    if not path.is_file() or not (parent / "checkpoints" / "best.pt").is_file():
        raise DataError(
            f"{parent} is not a finished run (no run.json or checkpoints/best.pt)",
            hint="give the folder that `medkit train` wrote",
        )
    record = json.loads(path.read_text())
    if "config" not in record:
        raise DataError(f"{path} records no training configuration", hint="train the run again with this medkit")
    if record.get("sequence"):
        raise UsageError(f"{parent} is a sequence-model run", hint="refine a single-slice run (medkit train ct)")
    return record


def _config(record: dict[str, Any], opts: RefineOptions) -> Any:
    """The parent's TrainConfig with the stage's overrides."""
    from medkit.engine.fit import TrainConfig
    from medkit.tasks import Task

    cfg = dict(record["config"])
    task = Task.from_dict(cfg.pop("task"))
    if opts.loss:
        task = replace(task, loss=opts.loss, loss_kwargs={} if opts.loss != task.loss else task.loss_kwargs)
    known = set(TrainConfig.__dataclass_fields__)
    kw = {k: v for k, v in cfg.items() if k in known}
    kw["label_cols"] = tuple(kw["label_cols"]) if kw.get("label_cols") else None
    kw["loggers"] = tuple(kw.get("loggers") or ("csv",))
    kw.update(device=opts.device, resume=opts.resume, dry_run=opts.dry_run, pretrain=None)
    return TrainConfig(task=task, **kw)


def series_of_data(cfg: Any, data: Any) -> Any:
    """The `medkit.data.series.SeriesIndex` of the rows of the training table (the rows of the data's source).

    Raises:
        DataError: A table without series column whose images are not DICOM.
    """
    from medkit.data.series import from_long_labels, series_from_dicom, series_from_table
    from medkit.data.table import detect_spec, load_table, resolve_paths

    df = from_long_labels(load_table(cfg.labels), cfg.labels)
    spec = detect_spec(df, image=cfg.image_col, labels=list(data.label_cols) or None)
    if spec.series is None:
        paths = resolve_paths(df, Path(cfg.data), spec.image)
        if not paths or not all(str(p).lower().endswith((".dcm", ".dicom")) for p in paths):
            raise DataError(
                f"{cfg.labels}: neighbour refinement needs a series column (series_id or SeriesInstanceUID)",
                hint="add the series of every slice, and its slice_index (or InstanceNumber) as the slice order",
            )
        index = series_from_dicom([str(p) for p in paths])
    else:
        index = series_from_table(df, spec)
    if index.findings:
        from medkit.console import warn

        kinds = sorted({f.kind for f in index.findings})
        warn(f"series: {len(index.findings)} finding(s) ({', '.join(kinds)}), e.g. {index.findings[0].detail}")
    if len(index) != len(data.train.source):
        raise DataError(
            f"{cfg.labels}: {len(index)} table rows but {len(data.train.source)} images",
            hint="every row of the table must name one image",
        )
    return index


def pseudo_targets(path: str | Path, ids: list[str], label_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets from a prediction CSV: ``(rows of ids it names, (M, K) values)``.

    Raises:
        DataError: A file without an ``image`` column or without a column for some label.
    """
    import pandas as pd

    df = pd.read_csv(path)
    if "image" not in df.columns:
        raise DataError(f"{path}: no 'image' column", hint="pass a table written by `medkit predict`")
    cols = []
    for name in label_names:
        col = f"{name}_prob" if f"{name}_prob" in df.columns else name
        if col not in df.columns:
            raise DataError(f"{path}: no column '{name}_prob' or '{name}'", hint="predict with a run of these labels")
        cols.append(col)
    where = {str(v): i for i, v in enumerate(ids)}
    hits = [(where[str(v)], j) for j, v in enumerate(df["image"].astype(str)) if str(v) in where]
    if not hits:
        raise DataError(f"{path}: none of its images is in the training split", hint="check the image column")
    rows = np.array([h[0] for h in hits], dtype=np.int64)
    values = df[cols].to_numpy(dtype=np.float32)[[h[1] for h in hits]]
    return rows, np.clip(values, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- the stage
@dataclass
class _Stage:
    """A refinement stage in progress."""

    cfg: Any
    opts: RefineOptions
    rt: Any
    data: Any
    index: Any
    window: np.ndarray  # (N_rows, seq) neighbour rows of every source row
    model: Any
    loss_fn: Any
    optimizer: Any
    transforms: Any
    spec: Any
    metric: Any
    greater: bool
    targets: np.ndarray
    teacher: Any = None
    teacher_weights: tuple[float, ...] = ()
    batch: int = 8
    norm: Any = None  # single-slice normalisation (evaluation)
    stage: Any = None  # the `medkit.engine.stages.Stage` record of this stage
    epoch: int = 0
    steps: int = 0
    best: float = float("nan")
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def refine_run(parent: str | Path, opts: RefineOptions) -> Any:
    """Refine the trained run ``parent`` on stacks of ``opts.seq`` neighbouring slices into a new run folder.

    Returns:
        The stage's `medkit.engine.fit.FitResult`.

    Raises:
        DataError: A parent that is not a finished run, a table without series, a bad pseudo-label file.
        UsageError: An even ``seq``, a non-multilabel target, a run folder that exists without ``resume``.
    """

    parent = Path(parent)
    record = _read_parent(parent)
    centred_window(opts.seq)  # checks seq
    out = Path(opts.out) if opts.out else parent.with_name(f"{parent.name}-refine{opts.seq}")
    from medkit._lock import run_lock

    # One writer per stage folder: a second `medkit refine` into the same folder stops at once.
    with run_lock(out, "medkit refine", clean=("", "checkpoints", "plots")):
        return _refine_locked(parent, record, out, opts)


def _refine_locked(parent: Path, record: dict[str, Any], out: Path, opts: RefineOptions) -> Any:
    """`refine_run` once the stage folder's lock is held."""
    from medkit.engine.fit import FitResult
    from medkit.engine.run import RunDir

    run = RunDir(out)
    resume = None
    if run.last.exists():
        if not opts.resume:
            raise UsageError(f"{out} already holds a run (checkpoints/last.pt)", hint="pass --resume, or another --out")
        from medkit.engine.checkpoint import load_checkpoint

        resume = load_checkpoint(run.last, map_location="cpu")
    cfg = _config(record, opts)
    if resume is not None and resume.get("finished") and resume["epoch"] >= opts.epochs:
        _log(f"refine stage finished before: {out}")
        return FitResult(
            out, resume["best"], resume["best_epoch"], resume["epoch"], resume["steps"], cfg.task.metric,
            resume.get("history", []),
        )  # fmt: skip
    st = _prepare(parent, record, cfg, opts)
    if resume is not None:
        st.model.load_state_dict(resume["model_stack"])
        st.optimizer.load_state_dict(resume["optimizer"])
        st.transforms.generator.set_state(resume["augment"])
        st.epoch, st.steps, st.best, st.best_epoch = (
            resume["epoch"],
            resume["steps"],
            resume["best"],
            resume["best_epoch"],
        )
        st.history = list(resume["history"])
        _log(f"resuming the refine stage at epoch {st.epoch + 1}")
    run.write_run_json(_record(st, parent))
    epochs = 1 if opts.dry_run else opts.epochs
    _log(
        f"refine {parent} on {opts.seq}-slice stacks: {epochs} epoch(s), lr {opts.lr:g}, loss {cfg.task.loss}, "
        f"weights {_fmt(st.model.weights)} -> {out}"
    )
    while st.epoch < epochs:
        t0 = time.perf_counter()
        train_loss = _train_epoch(st)
        probs, rows, val_loss = _evaluate(st)
        value = _score(st, rows, probs)
        st.epoch += 1
        st.history.append(
            {
                "epoch": st.epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                cfg.task.metric: value,
                "lr": opts.lr,
                "weights": _fmt(st.model.weights),
                "epoch_s": time.perf_counter() - t0,
            }
        )
        improved = math.isnan(st.best) or (value > st.best if st.greater else value < st.best)
        if improved and math.isfinite(value):
            st.best, st.best_epoch = value, st.epoch
        _log(
            f"refine epoch {st.epoch}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} {cfg.task.metric} "
            f"{value:.4f}{' (best)' if st.best_epoch == st.epoch else ''}; weights {_fmt(st.model.weights)}"
        )
        _write_epoch(st, run, rows, probs, finished=st.epoch >= epochs and not opts.dry_run)
    stopped = "dry_run" if opts.dry_run else ""
    return FitResult(out, st.best, st.best_epoch, st.epoch, st.steps, cfg.task.metric, st.history, stopped=stopped)


def _log(message: str) -> None:
    from medkit.console import info

    info(message)


def _fmt(weights: Any) -> str:
    return ",".join(f"{float(v):.4g}" for v in weights.detach().cpu().tolist())


def _prepare(parent: Path, record: dict[str, Any], cfg: Any, opts: RefineOptions) -> _Stage:
    """Data, series windows, the stacked model, loss, optimizer, transforms and the teacher."""

    from medkit.data.dataset import build_data
    from medkit.data.series import neighbour_rows
    from medkit.device import seed_everything
    from medkit.engine.aggregate import parse_weights
    from medkit.engine.components import InputTransforms, build_loss, build_optimizer
    from medkit.engine.runtime import resolve_runtime
    from medkit.engine.spec import load_run
    from medkit.engine.stages import Stage
    from medkit.metrics import build_metric, greater_is_better

    rt = resolve_runtime(cfg.device, cfg.amp, cfg.workers, deterministic=cfg.deterministic)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.labels is None:
        raise UsageError("neighbour refinement needs a dataset table with series (the parent was trained without)")
    data = build_data(
        cfg.task, cfg.data, cfg.labels, cfg.folds, cfg.fold, cfg.label_cols, cfg.image_col,
        cfg.cache_dir, cfg.cache_workers, cfg.seed, cfg.mask_col,
    )  # fmt: skip
    if not data.target.multi_hot:
        raise UsageError(f"neighbour refinement sums logits of 0/1 labels; target '{data.target.name}' is not")
    if record.get("data_hash") and record["data_hash"] != data.data_hash:
        from medkit.console import warn

        warn(f"the data changed since {parent} was trained (data hash differs)")
    index = series_of_data(cfg, data)
    window = neighbour_rows(index.sequences(), len(index), opts.seq)
    _log(f"series: {len(index.sequences())} series, slice order from {index.method}")
    loaded = load_run(parent, device="cpu")
    spec = loaded.inputs.spec
    weights = parse_weights(opts.init_weights) if opts.init_weights else centred_window(opts.seq)
    if len(weights) != opts.seq:
        raise UsageError(f"--init-weights has {len(weights)} values for --seq {opts.seq}")
    cnn = loaded.model.train()
    frozen = _freeze(cnn, opts.freeze)
    model = _neighbour_module(cnn, weights, opts.learn_weights).to(rt.device)
    loss_fn, _ = build_loss(cfg.task, data)
    stage0 = spec.stages[0] if spec.stages else {}
    opt_stage = Stage(
        "refine", opts.epochs, opts.optimizer or stage0.get("optimizer", cfg.task.optimizer), opts.lr,
        float(stage0.get("weight_decay", 0.0)), "none", dict(cfg.optimizer_kwargs), {},
    )  # fmt: skip
    batch = opts.batch_size or max(2, int(spec.batch_size) // opts.seq)
    optimizer = build_optimizer(opt_stage, model, max(1, opts.epochs * math.ceil(len(data.train) / batch)))
    if opts.learn_weights:
        _own_group(optimizer, model.weights, opts.weights_lr)
    # One augmentation per stack: the N slices ride as channels of one image through the augmenter.
    transforms = InputTransforms(
        list(spec.mean) * opts.seq, list(spec.std) * opts.seq, spec.img_size, cfg.task.augment, seed=cfg.seed + 101
    )
    targets = np.asarray(data.train.all_targets, dtype=np.float32).copy()
    if opts.pseudo_labels:
        rows, values = pseudo_targets(opts.pseudo_labels, list(data.train.ids), list(data.label_names))
        targets[data.train.rows[rows]] = values
        _log(f"pseudo-labels: {len(rows)} training rows take their targets from {opts.pseudo_labels}")
    teacher, teacher_weights = None, ()
    if opts.distill:
        t = load_run(opts.distill, device=rt.device)
        if tuple(t.inputs.spec.label_names) != tuple(spec.label_names):
            raise UsageError(f"--distill {opts.distill} predicts other labels", hint="use a run of the same labels")
        teacher, teacher_weights = t.model.eval(), tuple(t.inputs.spec.neighbours)
    metric = build_metric(cfg.task.metric)
    if frozen:
        _log(f"frozen: {frozen} parameter tensors match {', '.join(opts.freeze)}")
    return _Stage(
        cfg, opts, rt, data, index, window, model, loss_fn, optimizer, transforms, spec, metric,
        greater_is_better(metric), targets, teacher, teacher_weights, batch,
        InputTransforms(spec.mean, spec.std, spec.img_size).eval, opt_stage,
    )  # fmt: skip


def _own_group(optimizer: Any, param: Any, lr: float) -> None:
    """Move ``param`` out of the optimizer's groups into a group of its own with learning rate ``lr``, no decay."""
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if p is not param]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    optimizer.add_param_group({"params": [param], "lr": lr, "weight_decay": 0.0})


def _freeze(model: Any, patterns: tuple[str, ...]) -> int:
    """Switch off the gradients of parameters whose name matches a pattern; how many were frozen.

    Raises:
        UsageError: A pattern that matches no parameter.
    """
    n = 0
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        hit = [name for name in names if fnmatch.fnmatch(name, pattern)]
        if not hit:
            raise UsageError(f"--freeze {pattern!r} matches no parameter", hint=f"names look like {names[0]!r}")
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            p.requires_grad_(False)
            n += 1
    return n


def _stack(st: _Stage, centre_rows: np.ndarray, train: bool) -> Any:
    """Model input ``(B, N, C, H, W)`` of the stacks centred on ``centre_rows``."""
    import torch

    rows = st.window[centre_rows]  # (B, N)
    b, n = rows.shape
    u8 = st.data.train.source.get_batch(rows.reshape(-1))  # (B*N, H, W, C)
    h, w, c = u8.shape[1:]
    x = torch.from_numpy(np.ascontiguousarray(u8)).to(st.rt.device)
    x = x.reshape(b, n, h, w, c).permute(0, 1, 4, 2, 3).reshape(b, n * c, h, w)
    x = st.transforms.augmenter(x, generator=st.transforms.generator, train=True) if train else st.transforms.eval(x)
    return x.reshape(b, n, c, *x.shape[-2:])


def _train_epoch(st: _Stage) -> float:
    """One epoch over the training slices (each the centre of a stack) in a seeded order; the mean loss."""
    from medkit.console import Progress

    st.model.train()
    if not st.opts.update_bn:
        _freeze_bn_statistics(st.model)
    rng = np.random.default_rng([st.cfg.seed, st.epoch, 29])
    order = st.data.train.rows[rng.permutation(len(st.data.train.rows))]
    total, n = 0.0, 0
    with Progress(total=len(order), description=f"refine epoch {st.epoch + 1}", unit="stacks") as bar:
        for start in range(0, len(order), st.batch):
            rows = order[start : start + st.batch]
            value = _train_step(st, rows)
            total += value * len(rows)
            n += len(rows)
            bar.update(len(rows), train_loss=total / n)
            if st.opts.dry_run:
                break
    return total / max(n, 1)


def _freeze_bn_statistics(model: Any) -> None:
    """Batch norm layers of ``model`` to evaluation mode (running statistics used and kept)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _train_step(st: _Stage, rows: np.ndarray) -> float:
    """One optimizer step on the stacks centred on ``rows``; the loss."""
    import torch

    from medkit.errors import MedkitError

    x = _stack(st, rows, train=True)
    y = torch.from_numpy(st.targets[rows]).to(st.rt.device)
    with st.rt.autocast():
        logits = st.model(x)
    loss = st.loss_fn(logits.float(), y)
    if st.teacher is not None:
        soft = torch.sigmoid(_teacher_logits(st, x))
        loss = loss + st.opts.distill_weight * torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), soft
        )
    value = float(loss.item())  # one sync per step: small next to N forward passes per stack
    if not np.isfinite(value):
        raise MedkitError(f"the refinement loss is {value}", hint="lower --lr, or check the labels")
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    st.optimizer.step()
    st.steps += 1
    return value


def _teacher_logits(st: _Stage, x: Any) -> Any:
    """The teacher's logits of the centre slices: its neighbour weights over the stack, else the centre alone."""
    import torch

    b, n = x.shape[:2]
    with torch.no_grad():
        z = st.teacher(x.flatten(0, 1)).float().reshape(b, n, -1)
    w = st.teacher_weights
    if not w:
        return z[:, n // 2]
    r, m = len(w) // 2, n // 2
    out = torch.zeros_like(z[:, 0])
    for j, wj in enumerate(w):
        out = out + float(wj) * z[:, min(max(m + j - r, 0), n - 1)]
    return out


def _slice_logits(st: _Stage, rows: np.ndarray) -> np.ndarray:
    """Per-slice logits of the refined CNN on single slices (the centre of a stack of one)."""
    import torch

    out = []
    st.model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            u8 = st.data.train.source.get_batch(chunk)
            x = torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).to(st.rt.device)
            with st.rt.autocast():
                out.append(st.model.cnn(st.norm(x)).float().cpu().numpy())
            if st.opts.dry_run:
                break
    return np.concatenate(out) if out else np.zeros((0, st.data.num_outputs), dtype=np.float32)


def _evaluate(st: _Stage) -> tuple[np.ndarray, np.ndarray, float]:
    """Validation probabilities ``(M, K)`` with their source rows and loss: per-slice logits, then aggregated
    over each series with the learned weights (what `medkit predict` does with the stage's spec)."""
    import torch

    from medkit.engine.aggregate import aggregate_neighbours

    val = st.data.val.rows
    z = _slice_logits(st, val)
    rows = val[: len(z)]
    w = tuple(float(v) for v in st.model.weights.detach().cpu().tolist())
    agg = aggregate_neighbours(z, st.index.series[rows], st.index.order[rows], w)
    y = np.asarray(st.data.train.all_targets, dtype=np.float32)[rows]
    with torch.no_grad():
        loss = float(st.loss_fn(torch.from_numpy(agg).float(), torch.from_numpy(y)).item())
    return 1.0 / (1.0 + np.exp(-agg)), rows, loss


def _score(st: _Stage, rows: np.ndarray, probs: np.ndarray) -> float:
    from medkit.metrics import score

    y = np.asarray(st.data.train.all_targets)[rows]
    try:
        return float(score(st.metric, st.data.target, y, probs))
    except (ValueError, DataError, UsageError) as exc:
        _log(f"validation {st.cfg.task.metric} not computable: {exc}")
        return float("nan")


def _stage_spec(st: _Stage) -> Any:
    w = tuple(float(v) for v in st.model.weights.detach().cpu().tolist())
    return replace(st.spec, neighbours=w, stages=(*st.spec.stages, st.stage.to_dict()))


def _record(st: _Stage, parent: Path) -> dict[str, Any]:
    from medkit.config import provenance

    record = provenance(st.cfg.to_dict())
    record.update(
        data_hash=st.data.data_hash,
        data=st.data.description,
        label_names=st.data.label_names,
        target=st.data.target.name,
        metric=st.cfg.task.metric,
        greater_is_better=st.greater,
        in_chans=st.data.in_chans,
        img_size=st.spec.img_size,
        spec=_stage_spec(st).to_dict(),
        refine=st.opts.to_dict(),
        parent=str(parent.resolve()),
    )
    return record


def _write_epoch(st: _Stage, run: Any, rows: np.ndarray, probs: np.ndarray, finished: bool) -> None:
    """best.pt and oof.csv on the best epoch, last.pt, metrics.csv and run.json every epoch."""
    import medkit
    from medkit.engine.checkpoint import save_checkpoint
    from medkit.engine.run import draw_curves, write_metrics, write_oof

    spec = _stage_spec(st)
    ckpt = {
        "model": st.model.cnn.state_dict(),
        "model_stack": st.model.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "augment": st.transforms.generator.get_state(),
        "epoch": st.epoch,
        "steps": st.steps,
        "best": st.best,
        "best_epoch": st.best_epoch,
        "history": st.history,
        "spec": spec.to_dict(),
        "config": st.cfg.to_dict(),
        "refine": st.opts.to_dict(),
        "label_names": st.data.label_names,
        "target": st.data.target.name,
        "medkit_version": medkit.__version__,
        "finished": finished,
    }
    if st.best_epoch == st.epoch or not run.best.exists():
        save_checkpoint(run.best, ckpt)
        val = st.data.val
        pos = val.positions(rows)
        extra: dict[str, Any] = {}
        if val.groups:
            extra["patient_id"] = [val.groups[p] for p in pos]
        extra["series"] = [str(st.index.series[r]) for r in rows]
        extra["order"] = [float(st.index.order[r]) for r in rows]
        y = np.asarray(st.data.train.all_targets)[rows]
        write_oof(run.oof_csv, [val.ids[p] for p in pos], y, probs, st.data.label_names, extra)
    save_checkpoint(run.last, ckpt)
    rows_csv = [{k: v for k, v in h.items()} for h in st.history]
    write_metrics(run.metrics_csv, rows_csv)
    draw_curves(run.curve_png, st.history, ["train_loss", "val_loss", st.cfg.task.metric])
    record = json.loads(run.run_json.read_text()) if run.run_json.is_file() else {}
    record["spec"] = spec.to_dict()
    record["results"] = {
        "best": st.best,
        "best_epoch": st.best_epoch,
        "epochs": st.epoch,
        "neighbours": list(spec.neighbours),
    }
    run.write_run_json(record)

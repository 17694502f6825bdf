"""The sequence model's training (`medkit train ct --seq-model gru`): series batches, multitask terms, stages.

A run reads whole CT series: one item is one series (its slices in slice order), long series are cropped to
``max_len`` slices at a random offset in training, a batch is padded and carries a padding mask. The model
(`medkit.models.sequence.SequenceModel`) labels every slice; the loss is the weighted sum of LOSS_TERMS
(`medkit.losses.multitask`), and the slice embeddings can be masked (``seq_mask``) and changed by diversity
transfer (``diversity``) before the reader sees them.

Two modes: end to end (the CNN trains with the reader), or on cached embeddings (``cached``): the CNN of a trained
run (``from_run``) or of ``--weights`` embeds every slice once, the embeddings are stored next to the run
(``embeddings.npy``), and only the reader, the heads and the loss terms train -- far faster.

A recipe is a list of `SeqStage`s; each stage is its own run directory (``OUT/<k>-<name>`` when there are several)
with run.json, metrics.csv, checkpoints and a per-slice oof.csv; its run.json names its ``parent`` (the previous
stage, whose best weights it starts from), so `medkit ensemble` blends the stages' oof.csv. `predict_series` is
how `medkit predict` reads a sequence run's series.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = [
    "SeqStage",
    "SeqOptions",
    "SeriesSet",
    "STAGE_KEYS",
    "parse_stage",
    "read_recipe",
    "plan_seq_stages",
    "series_of",
    "crop_series",
    "pad_batch",
    "fit_sequence",
    "cached_embeddings",
    "predict_series",
]

#: Keys of a stage besides the loss-term weights (a LOSS_TERMS name as key sets that term's weight).
STAGE_KEYS = ("name", "epochs", "lr", "optimizer", "weight_decay", "scheduler", "seq_mask", "diversity")


# ---------------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class SeqStage:
    """One stage of a sequence recipe.

    Attributes:
        name: Short label; the stage folder is ``<k>-<name>``.
        epochs: Epochs of the stage.
        lr: Learning rate.
        optimizer: OPTIMIZERS name.
        weight_decay: Weight decay.
        scheduler: SCHEDULERS name.
        terms: LOSS_TERMS name -> weight.
        seq_mask: Rate of slice-embedding masking in training.
        diversity: Rate of diversity transfer in training.
    """

    name: str
    epochs: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    terms: dict[str, float] = field(default_factory=lambda: {"main": 1.0})
    seq_mask: float = 0.0
    diversity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_stage(text: str) -> dict[str, Any]:
    """``--stage "name=all epochs=2 cpc=0.1 seq_mask=0.15"`` -> a dict (items split on spaces, commas or ';').

    Raises:
        UsageError: An item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in re.split(r"[\s,;]+", text.strip()):
        if not item:
            continue
        if "=" not in item:
            raise UsageError(f"--stage expects KEY=VALUE items, got '{item}'", hint='e.g. --stage "epochs=2 cpc=0.1"')
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def read_recipe(path: str | Path) -> list[dict[str, Any]]:
    """The ``[[stage]]`` tables of a recipe TOML file (a ``losses`` sub-table gives the term weights).

    Raises:
        ConfigError: A missing or invalid file. UsageError: A file without ``[[stage]]`` tables.
    """
    from medkit.config import load_toml

    doc = load_toml(path)
    stages = doc.get("stage")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise UsageError(f"{path}: no [[stage]] tables", hint="see docs/sequence.md for the recipe layout")
    out = []
    for s in stages:
        s = dict(s)
        losses = s.pop("losses", {}) or {}
        if not isinstance(losses, dict):
            raise UsageError(f"{path}: 'losses' must be a table of NAME = WEIGHT")
        out.append({**s, **losses})
    return out


def plan_seq_stages(base: SeqStage, items: Sequence[Mapping[str, Any]]) -> list[SeqStage]:
    """The stages of a recipe: each item changes the stage before it (the first changes ``base``).

    A key that is a LOSS_TERMS name sets that term's weight (0 switches it off); the others are `STAGE_KEYS`.
    Without items the recipe is ``[base]``.

    Raises:
        UsageError: An unknown key (with a suggestion), a bad rate, or a stage without epochs.
    """
    from medkit.errors import did_you_mean
    from medkit.losses.multitask import parse_term_weights
    from medkit.registries import LOSS_TERMS

    if not items:
        _check_stage(base)
        return [base]
    stages: list[SeqStage] = []
    prev = base
    for k, item in enumerate(items, start=1):
        changes: dict[str, Any] = {}
        weights = dict(prev.terms)
        for key, value in item.items():
            if key in STAGE_KEYS:
                changes[key] = value
            elif key in LOSS_TERMS:
                weights.update(parse_term_weights({key: value}))
            else:
                known = list(STAGE_KEYS) + LOSS_TERMS.names()
                raise UsageError(
                    f"stage {k}: unknown key '{key}'{did_you_mean(key, known)}",
                    hint=f"keys: {', '.join(STAGE_KEYS)} and the loss terms {', '.join(LOSS_TERMS.names())}",
                )
        changes.setdefault("name", f"stage{k}")
        stage = replace(prev, **changes, terms=weights)
        stage = replace(stage, epochs=int(stage.epochs), lr=float(stage.lr), name=str(stage.name))
        _check_stage(stage)
        stages.append(stage)
        prev = stage
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise UsageError(f"stage names must differ, got {names}", hint="give each stage name=...")
    return stages


def _check_stage(stage: SeqStage) -> None:
    if stage.epochs < 1:
        raise UsageError(f"stage '{stage.name}' needs epochs >= 1, got {stage.epochs}")
    for key in ("seq_mask", "diversity"):
        rate = float(getattr(stage, key))
        if not 0.0 <= rate < 1.0:
            raise UsageError(f"stage '{stage.name}': {key} must be in [0, 1), got {rate}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stage.name):
        raise UsageError(f"stage name '{stage.name}' must be letters, digits, '_', '-' or '.'")


# ---------------------------------------------------------------------------------------------------- options
@dataclass
class SeqOptions:
    """What ``--seq-*`` flags add to a `medkit.engine.fit.TrainConfig`.

    Attributes:
        reader: SEQ_READERS name (``gru``, ``lstm``, ``transformer``).
        stages: The recipe (`plan_seq_stages`).
        hidden_size: Reader width.
        num_layers: Reader layers.
        dropout: Reader dropout.
        max_len: Training crop of a long series (slices); evaluation reads whole series.
        cached: Train on cached slice embeddings (the CNN frozen).
        from_run: A trained slice run whose model (and weights) is the CNN.
        loss: LOSSES name of the ``main`` and ``aux`` terms.
        term_options: Term name -> factory options.
    """

    reader: str = "gru"
    stages: list[SeqStage] = field(default_factory=list)
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    max_len: int = 64
    cached: bool = False
    from_run: str | None = None
    loss: str = "asl"
    term_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- series
@dataclass
class SeriesSet:
    """The series of one split.

    Attributes:
        rows: Source rows of each series, in slice order.
        names: Series id of each series.
    """

    rows: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.rows)


def series_of(split: Any, series: Sequence[Any], order: Sequence[Any]) -> SeriesSet:
    """Group a split's rows into series sorted by slice order.

    Args:
        split: A `medkit.data.dataset.Split`.
        series: Series id of every row of the source.
        order: Slice position of every row of the source (sortable numbers).
    """
    groups: dict[str, list[int]] = {}
    for r in split.rows:
        groups.setdefault(str(series[int(r)]), []).append(int(r))
    names = sorted(groups)
    rows = [np.array(sorted(groups[n], key=lambda r: (float(order[r]), r)), dtype=np.int64) for n in names]
    return SeriesSet(rows, names)


def _table_series(cfg: Any, data: Any) -> tuple[list[str], np.ndarray]:
    """Series id and slice order of every row of the dataset table (the rows of the source).

    From the table's series and slice-order columns (`medkit.data.series.series_from_table`); a table of DICOM
    files without a series column is grouped and ordered from the DICOM headers (`series_from_dicom`).
    """
    from medkit.data.series import series_from_dicom, series_from_table
    from medkit.data.table import detect_spec, load_table, resolve_paths

    df = load_table(cfg.labels)
    spec = detect_spec(df, image=cfg.image_col, labels=list(data.label_cols) or None)
    if spec.series is None:
        paths = resolve_paths(df, Path(cfg.data), spec.image)
        if not paths or not all(str(p).lower().endswith((".dcm", ".dicom")) for p in paths):
            raise DataError(
                f"{cfg.labels}: the sequence model needs a series column (series_id or SeriesInstanceUID)",
                hint="add the series of every slice, and its slice_index (or InstanceNumber) as the slice order",
            )
        index = series_from_dicom([str(p) for p in paths])
    else:
        index = series_from_table(df, spec)
    if index.findings:
        from medkit.console import warn

        kinds = sorted({f.kind for f in index.findings})
        warn(f"series: {len(index.findings)} finding(s) ({', '.join(kinds)}), e.g. {index.findings[0].detail}")
    _log(f"series: {len(set(index.series.tolist()))} series, slice order from {index.method}")
    return [str(v) for v in index.series], np.asarray(index.order, dtype=np.float64)


def crop_series(rows: np.ndarray, max_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most ``max_len`` consecutive slices: a random window in training (``rng``), the first ones otherwise."""
    if len(rows) <= max_len:
        return rows
    start = int(rng.integers(0, len(rows) - max_len + 1)) if rng is not None else 0
    return rows[start : start + max_len]


def pad_batch(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (B, T) with -1 for padding, valid (B, T))`` of a batch of series (T: the longest)."""
    t = max(len(s) for s in series)
    rows = np.full((len(series), t), -1, dtype=np.int64)
    for i, s in enumerate(series):
        rows[i, : len(s)] = s
    return rows, rows >= 0


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class _Job:
    """A sequence run in progress: everything the epoch functions share."""

    cfg: Any
    opts: SeqOptions
    rt: Any
    data: Any
    train_series: SeriesSet
    val_series: SeriesSet
    series_ids: list[str]
    order: np.ndarray
    mspec: Any
    transforms: Any
    mean: list[float]
    std: list[float]
    metric: Any
    greater: bool
    embeddings: Any = None  # (N, D) tensor on the device in cached mode
    batch_series: int = 4


def fit_sequence(cfg: Any, opts: SeqOptions) -> list[Any]:
    """Train every stage of a sequence recipe; returns one `medkit.engine.fit.FitResult` per stage.

    Raises:
        UsageError: Options that do not fit (DDP, a non-multilabel target, a bad ``from_run``).
        DataError: A table without series or slice order.
    """
    from medkit.data.dataset import build_data
    from medkit.device import seed_everything
    from medkit.engine.runtime import resolve_runtime

    rt = resolve_runtime(cfg.device, cfg.amp, cfg.workers, deterministic=cfg.deterministic)
    if rt.dist.enabled:
        raise UsageError("--seq-model trains on one process", hint="drop --gpus / torchrun for the sequence model")
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.labels is None:
        raise UsageError("--seq-model needs --labels: a table with series and slice order columns")
    data = build_data(
        cfg.task,
        cfg.data,
        cfg.labels,
        cfg.folds,
        cfg.fold,
        cfg.label_cols,
        cfg.image_col,
        cfg.cache_dir,
        cfg.cache_workers,
        cfg.seed,
        None,
    )
    if not data.target.multi_hot:
        raise UsageError(f"--seq-model labels slices with 0/1 labels; target '{data.target.name}' is not multi-hot")
    job = _prepare(cfg, opts, rt, data)
    root = Path(cfg.out)
    stages = opts.stages
    results = []
    parent: Path | None = None
    for k, stage in enumerate(stages, start=1):
        run_dir = root if len(stages) == 1 else root / f"{k}-{stage.name}"
        results.append(_fit_stage(job, stage, k, run_dir, parent))
        parent = run_dir
    if len(stages) > 1:
        from medkit._io import write_json

        write_json(
            root / "stages.json",
            {"stages": [str(root / f"{k}-{s.name}") for k, s in enumerate(stages, 1)], "recipe": _recipe(stages)},
        )
    return results


def _recipe(stages: Sequence[SeqStage]) -> list[dict[str, Any]]:
    return [s.to_dict() for s in stages]


def _prepare(cfg: Any, opts: SeqOptions, rt: Any, data: Any) -> _Job:
    """Series, the model spec, the transforms, the metric; the cached embeddings in cached mode."""
    from medkit.data.dataset import channel_mean_std
    from medkit.engine.components import InputTransforms
    from medkit.metrics import build_metric, greater_is_better

    task = cfg.task
    series_ids, order = _table_series(cfg, data)
    train_series, val_series = series_of(data.train, series_ids, order), series_of(data.val, series_ids, order)
    shared = set(train_series.names) & set(val_series.names)
    if shared:
        raise DataError(
            f"{len(shared)} series have slices in both the training and the validation split "
            f"(e.g. {sorted(shared)[0]})",
            hint="give the table a patient_id column, or folds that keep every series in one fold",
        )
    mean, std = channel_mean_std(task.mean, task.std, data.in_chans, False)
    transforms = InputTransforms(mean, std, task.img_size, task.augment, seed=cfg.seed + 1)
    metric = build_metric(task.metric)
    job = _Job(
        cfg,
        opts,
        rt,
        data,
        train_series,
        val_series,
        series_ids,
        order,
        _model_spec(cfg, opts, data),
        transforms,
        mean,
        std,
        metric,
        greater_is_better(metric),
        batch_series=max(1, int(task.batch_size)),
    )
    _log(
        f"sequence model {job.mspec.name} on {job.mspec.kwargs['backbone']}: {len(train_series)} train / "
        f"{len(val_series)} val series; {len(opts.stages)} stage(s)"
        + ("; cached embeddings" if opts.cached else "; end to end")
    )
    return job


def _log(message: str) -> None:
    from medkit.console import info

    info(message)


def _model_spec(cfg: Any, opts: SeqOptions, data: Any) -> Any:
    """The ``seq/<reader>`` ModelSpec: the encoder is the task's model, or the ``from_run`` run's model."""
    from medkit.engine.components import ModelSpec

    backbone, backbone_kwargs = cfg.task.model, {}
    if opts.from_run:
        spec = _from_run_spec(opts.from_run, cfg, data)
        backbone = spec.model.name
        backbone_kwargs = {k: v for k, v in spec.model.kwargs.items() if k not in ("num_classes", "in_chans")}
    if backbone.startswith("seq/"):
        raise UsageError(f"--model {backbone}: the slice encoder must be a CNN", hint="e.g. --model resnet18")
    kwargs = {
        "num_classes": data.num_outputs,
        "in_chans": data.in_chans,
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "hidden_size": opts.hidden_size,
        "num_layers": opts.num_layers,
        "dropout": opts.dropout,
    }
    return ModelSpec(f"seq/{opts.reader}", kwargs)


def _from_run_spec(run_dir: str, cfg: Any, data: Any) -> Any:
    """The RunSpec of a ``--from-run`` slice run, after checking that it fits this data."""
    from medkit.engine.checkpoint import load_checkpoint
    from medkit.engine.run import RunDir
    from medkit.engine.spec import RunSpec

    state = load_checkpoint(RunDir(run_dir).best, map_location="cpu")
    if "spec" not in state:
        raise DataError(f"{run_dir}: the checkpoint records no run spec", hint="train the run again with this medkit")
    spec = RunSpec.from_dict(state["spec"])
    if spec.model.name.startswith("seq/"):
        raise UsageError(f"--from-run {run_dir} is a sequence run", hint="give a single-slice run (medkit train ct)")
    problems = []
    if spec.img_size != cfg.task.img_size:
        problems.append(f"image size {spec.img_size} vs {cfg.task.img_size}")
    if int(spec.model.kwargs.get("in_chans", data.in_chans)) != data.in_chans:
        problems.append(f"{spec.model.kwargs.get('in_chans')} vs {data.in_chans} input channels")
    if tuple(spec.label_names) != tuple(data.label_names):
        problems.append(f"labels {list(spec.label_names)} vs {list(data.label_names)}")
    if spec.preprocess is not None and data.preprocess is not None:
        now = json.loads(json.dumps({k: v for k, v in data.preprocess.params().items() if k != "masks"}))
        then = json.loads(json.dumps(spec.preprocess))
        problems += [
            f"{k} {then.get(k)!r} vs {now.get(k)!r}" for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)
        ]
    if problems:
        raise UsageError(
            f"--from-run {run_dir} does not fit this data: " + "; ".join(problems),
            hint=f"train with the flags of {Path(run_dir) / 'run.json'} (--img-size, --windows, --label-cols)",
        )
    return spec


def _build(job: _Job, stage_weights: Path | None) -> Any:
    """The model on the device: from the previous stage's best weights, else from --from-run / --weights."""
    import torch

    from medkit.engine.components import build_model

    cfg, opts = job.cfg, job.opts
    torch.manual_seed(cfg.seed)
    model = build_model(job.mspec, cfg.pretrained and stage_weights is None and not opts.from_run)
    if stage_weights is not None:
        from medkit.engine.checkpoint import load_checkpoint
        from medkit.engine.spec import evaluated_weights

        model.load_state_dict(evaluated_weights(load_checkpoint(stage_weights, map_location="cpu")))
    elif opts.from_run:
        from medkit.engine.spec import load_run

        model.encoder.load_state_dict(load_run(opts.from_run).model.state_dict())
        _log(f"slice encoder: weights of {opts.from_run}")
    elif cfg.weights:
        from medkit.models.sequence import _load_into

        _load_into(model, cfg.weights)
    if opts.cached:
        for p in model.encoder.backbone.parameters():
            p.requires_grad_(False)
    return job.rt.place_model(model)


# ---------------------------------------------------------------------------------------------------- embeddings
def _embedding_key(job: _Job) -> str:
    cfg, opts = job.cfg, job.opts
    source = ""
    if opts.from_run:
        best = Path(opts.from_run) / "checkpoints" / "best.pt"
        source = f"{best.resolve()}:{best.stat().st_mtime_ns}"
    elif cfg.weights:
        w = Path(cfg.weights)
        source = f"{w.resolve()}:{w.stat().st_mtime_ns}"
    parts = [
        job.data.data_hash,
        json.dumps(job.mspec.kwargs, sort_keys=True),
        source,
        str(cfg.seed),
        str(cfg.pretrained),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cached_embeddings(job: _Job, model: Any, root: Path) -> Any:
    """The slice embeddings ``(N, D)`` of every row of the train and validation splits, computed once.

    They are stored in ``root/embeddings.npy`` with their key (data, encoder, weights) in ``embeddings.json`` and
    reused by the later stages and by a resumed run; a changed key computes them again.
    """
    import torch

    from medkit._io import atomic_write, write_json

    npy, meta = root / "embeddings.npy", root / "embeddings.json"
    key = _embedding_key(job)
    if npy.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        _log(f"cached slice embeddings: {npy}")
        return torch.from_numpy(np.load(npy)).to(job.rt.device)
    rows = np.concatenate([job.data.train.rows, job.data.val.rows])
    n = len(job.data.train.source)
    out = np.zeros((n, model.embed_dim), dtype=np.float32)
    model.eval()
    t0 = time.perf_counter()
    bs = max(8, job.batch_series * 8)
    with torch.no_grad():
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            x = _images(job, chunk, train=False)
            with job.rt.autocast():
                out[chunk] = model.embed(x).float().cpu().numpy()
    _log(f"embedded {len(rows)} slices in {time.perf_counter() - t0:.1f} s -> {npy}")
    root.mkdir(parents=True, exist_ok=True)
    with atomic_write(npy, "wb") as fh:
        np.save(fh, out)
    write_json(meta, {"key": key, "rows": int(n), "dim": int(model.embed_dim), "model": job.mspec.kwargs})
    return torch.from_numpy(out).to(job.rt.device)


def _images(job: _Job, rows: np.ndarray, train: bool) -> Any:
    """Float model inputs ``(N, C, H, W)`` of source rows, augmented in training."""
    import torch

    batch = job.data.train.source.get_batch(rows)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(job.rt.device, non_blocking=True)
    tf = job.transforms
    if train:
        return tf.augmenter(x, generator=tf.generator, train=True)
    return tf.eval(x)


# ---------------------------------------------------------------------------------------------------- one stage
@dataclass
class _StageState:
    epoch: int = 0
    steps: int = 0
    best: float = float("nan")
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _fit_stage(job: _Job, stage: SeqStage, number: int, run_dir: Path, parent: Path | None) -> Any:
    """Train one stage into ``run_dir`` (resumed, or kept when it finished before and ``--resume`` is given)."""
    from medkit.engine.fit import FitResult
    from medkit.engine.run import RunDir

    cfg = job.cfg
    run = RunDir(run_dir)
    resume = _resume_state(cfg, run)
    if resume is not None and resume.get("finished"):
        _log(f"stage {number} ({stage.name}) finished before: {run.root}")
        return FitResult(
            run.root, resume["best"], resume["best_epoch"], resume["epoch"], resume["steps"], cfg.task.metric,
            resume.get("history", []),
        )  # fmt: skip
    parts, st, epochs = _stage_parts(job, stage, number, parent, resume)
    spec = _spec(job, stage)
    run.write_run_json(_run_record(job, stage, number, parent, spec))
    _log(
        f"stage {number} ({stage.name}): {epochs} epoch(s), lr {stage.lr:g}, terms "
        + ", ".join(f"{k}={v:g}" for k, v in stage.terms.items())
        + f", seq_mask {stage.seq_mask:g}, diversity {stage.diversity:g} -> {run.root}"
    )
    while st.epoch < epochs:
        t0 = time.perf_counter()
        train_loss = _train_epoch(job, stage, parts, st)
        probs, rows, val_loss = _predict_val(job, parts.model, parts.terms)
        value = _score(job, rows, probs)
        st.epoch += 1
        if parts.schedule is not None and hasattr(parts.schedule, "step_epoch"):
            parts.schedule.step_epoch(value if math.isfinite(value) else None)
        st.history.append(
            {
                "epoch": st.epoch,
                "stage": number,
                "train_loss": train_loss,
                "val_loss": val_loss,
                cfg.task.metric: value,
                "lr": float(parts.optimizer.param_groups[0]["lr"]),
                "epoch_s": time.perf_counter() - t0,
            }
        )
        _end_epoch(job, st, value)
        _write_epoch(job, run, parts, st, spec, rows, probs, finished=st.epoch >= epochs and not cfg.dry_run)
        if cfg.dry_run:
            break
    stopped = "dry_run" if cfg.dry_run else ""
    return FitResult(run.root, st.best, st.best_epoch, st.epoch, st.steps, cfg.task.metric, st.history, stopped=stopped)


def _resume_state(cfg: Any, run: Any) -> dict[str, Any] | None:
    """The stage's last.pt with ``--resume``; a run folder that holds one without ``--resume`` is refused."""
    from medkit.engine.checkpoint import load_checkpoint

    if not run.last.exists():
        return None
    if not cfg.resume:
        raise UsageError(
            f"{run.root} already holds a run (checkpoints/last.pt)",
            hint="pass --resume to continue it, or choose another --out",
        )
    return load_checkpoint(run.last)


def _stage_parts(
    job: _Job, stage: SeqStage, number: int, parent: Path | None, resume: dict[str, Any] | None
) -> tuple[_Parts, _StageState, int]:
    """Model (from the parent stage's best weights), loss terms, optimizer, schedule and counters of a stage."""
    import torch

    from medkit.engine.components import build_optimizer, build_schedule
    from medkit.engine.run import RunDir
    from medkit.engine.stages import Stage
    from medkit.losses.multitask import build_terms
    from medkit.models.sequence import DiversityPool

    cfg, opts = job.cfg, job.opts
    model = _build(job, RunDir(parent).best if parent is not None else None)
    if opts.cached and job.embeddings is None:
        job.embeddings = cached_embeddings(job, model, Path(cfg.out))
    info = model.medkit_info
    terms = build_terms(
        stage.terms,
        num_labels=job.data.num_outputs,
        embed_dim=info["num_features"],
        hidden_size=info["hidden_size"],
        context_size=info["context_size"],
        loss=opts.loss,
        loss_kwargs=dict(cfg.task.loss_kwargs),
        label_prevalence=job.data.label_prevalence(),
        options=opts.term_options,
    ).to(job.rt.device)
    epochs = 1 if cfg.dry_run else stage.epochs
    steps_per_epoch = 1 if cfg.dry_run else math.ceil(len(job.train_series) / job.batch_series)
    opt_stage = Stage(
        stage.name, epochs, stage.optimizer, stage.lr, stage.weight_decay, stage.scheduler,
        dict(cfg.optimizer_kwargs), dict(cfg.scheduler_kwargs),
    )  # fmt: skip
    # the loss terms' own parameters (count head, label embeddings, CPC predictors) train with the model
    trainable = torch.nn.ModuleDict({"model": model, "terms": terms})
    optimizer = build_optimizer(opt_stage, trainable, epochs * steps_per_epoch)
    schedule = build_schedule(stage.scheduler, optimizer, epochs, steps_per_epoch, cfg.scheduler_kwargs, job.greater)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + number)
    # every stage draws its augmentation from its own seed, so a stage resumed after a finished one draws the same
    job.transforms.generator.manual_seed(cfg.seed + 1 + 1000 * number)
    parts = _Parts(model, terms, optimizer, schedule, generator, DiversityPool(), job.rt.grad_scaler())
    st = _StageState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        terms.load_state_dict(resume["terms"])
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("schedule") is not None and hasattr(schedule, "load_state_dict"):
            schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        job.transforms.generator.set_state(resume["augment"])
        st = _StageState(resume["epoch"], resume["steps"], resume["best"], resume["best_epoch"], resume["history"])
        _log(f"resuming stage {number} ({stage.name}) at epoch {st.epoch + 1}")
    return parts, st, epochs


def _end_epoch(job: _Job, st: _StageState, value: float) -> None:
    """Keep the best metric and say how the epoch went."""
    improved = math.isnan(st.best) or (value > st.best if job.greater else value < st.best)
    if improved and math.isfinite(value):
        st.best, st.best_epoch = value, st.epoch
    row = st.history[-1]
    metric = job.cfg.task.metric
    _log(
        f"stage {row['stage']} epoch {st.epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"{metric} {value:.4f}{' (best)' if st.best_epoch == st.epoch else ''}"
    )


def _write_epoch(
    job: _Job,
    run: Any,
    parts: _Parts,
    st: _StageState,
    spec: Any,
    rows: np.ndarray,
    probs: np.ndarray,
    finished: bool,
) -> None:
    """best.pt and oof.csv when the epoch is the best (or the first), last.pt, metrics.csv and curve.png."""
    from medkit.engine.checkpoint import save_checkpoint
    from medkit.engine.run import draw_curves, write_metrics

    ckpt = _checkpoint(job, parts, st, spec, finished=finished)
    if st.best_epoch == st.epoch or not run.best.exists():
        save_checkpoint(run.best, ckpt)
        _write_oof(job, run, rows, probs)
    save_checkpoint(run.last, ckpt)
    write_metrics(run.metrics_csv, st.history)
    draw_curves(run.curve_png, st.history, ["train_loss", "val_loss", job.cfg.task.metric])


@dataclass
class _Parts:
    model: Any
    terms: Any
    optimizer: Any
    schedule: Any
    generator: Any
    pool: Any
    scaler: Any = None


def _spec(job: _Job, stage: SeqStage) -> Any:
    from medkit.engine.spec import spec_of

    return spec_of(job.cfg.task, job.data, job.mspec, job.mean, job.std, [stage], job.greater, False)


def _run_record(job: _Job, stage: SeqStage, number: int, parent: Path | None, spec: Any) -> dict[str, Any]:
    from medkit.config import provenance

    record = provenance(job.cfg.to_dict())
    record.update(
        data_hash=job.data.data_hash,
        data=job.data.description,
        label_names=job.data.label_names,
        target=job.data.target.name,
        metric=job.cfg.task.metric,
        greater_is_better=job.greater,
        in_chans=job.data.in_chans,
        img_size=job.cfg.task.img_size,
        runtime={"device": str(job.rt.device), "amp_dtype": str(job.rt.amp_dtype).removeprefix("torch.")},
        spec=spec.to_dict(),
        sequence={**job.opts.to_dict(), "stage": stage.to_dict(), "stage_number": number},
        parent=str(parent.resolve()) if parent is not None else None,
    )
    return record


def _checkpoint(job: _Job, parts: _Parts, st: _StageState, spec: Any, finished: bool) -> dict[str, Any]:
    import medkit

    return {
        "model": parts.model.state_dict(),
        "terms": parts.terms.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict() if hasattr(parts.schedule, "state_dict") else None,
        "generator": parts.generator.get_state(),
        "augment": job.transforms.generator.get_state(),
        "epoch": st.epoch,
        "steps": st.steps,
        "best": st.best,
        "best_epoch": st.best_epoch,
        "history": st.history,
        "spec": spec.to_dict(),
        "config": job.cfg.to_dict(),
        "sequence": job.opts.to_dict(),
        "label_names": job.data.label_names,
        "target": job.data.target.name,
        "medkit_version": medkit.__version__,
        "finished": finished,
    }


def _embeddings_of(job: _Job, model: Any, rows: np.ndarray, valid: np.ndarray, train: bool) -> Any:
    """Slice embeddings ``(B, T, D)`` of a padded batch (zeros on padding)."""
    import torch

    flat = rows[valid]
    if job.embeddings is not None:
        feats = job.embeddings[torch.from_numpy(flat).to(job.embeddings.device)]
    else:
        with job.rt.autocast():
            feats = model.embed(_images(job, flat, train)).float()
    out = feats.new_zeros((*rows.shape, feats.shape[-1]))
    out[torch.from_numpy(valid).to(feats.device)] = feats
    return out


def _targets(job: _Job, rows: np.ndarray, valid: np.ndarray) -> Any:
    import torch

    y = np.zeros((*rows.shape, job.data.num_outputs), dtype=np.float32)
    y[valid] = np.asarray(job.data.train.all_targets, dtype=np.float32)[rows[valid]]
    return torch.from_numpy(y).to(job.rt.device)


def _train_epoch(job: _Job, stage: SeqStage, parts: _Parts, st: _StageState) -> float:
    """One epoch over the training series in a seeded random order; the mean training loss."""
    from medkit.console import Progress

    cfg, model = job.cfg, parts.model
    model.train()
    if job.opts.cached:
        model.encoder.eval()  # frozen: its batch norm statistics stay those of the slice model
    rng = np.random.default_rng([cfg.seed, st.epoch, 17])
    order = rng.permutation(len(job.train_series))
    total, n = 0.0, 0
    bar_cm = Progress(total=len(order), description=f"{stage.name} epoch {st.epoch + 1}", unit="series")
    with bar_cm as bar:
        for start in range(0, len(order), job.batch_series):
            picked = [
                crop_series(job.train_series.rows[i], job.opts.max_len, rng)
                for i in order[start : start + job.batch_series]
            ]
            loss = _train_step(job, stage, parts, picked)
            st.steps += 1
            total += loss * len(picked)
            n += len(picked)
            bar.update(len(picked), train_loss=total / n)
            if cfg.dry_run:
                break
    return total / max(n, 1)


def _train_step(job: _Job, stage: SeqStage, parts: _Parts, picked: list[np.ndarray]) -> float:
    """One optimizer step on a batch of (cropped) series: embeddings, diversity transfer, masking, the terms."""
    import torch

    from medkit.errors import MedkitError
    from medkit.models.sequence import diversity_pairs, mask_slices, transfer_diversity

    model = parts.model
    rows, valid_np = pad_batch(picked)
    valid = torch.from_numpy(valid_np).to(job.rt.device)
    target = _targets(job, rows, valid_np)
    emb = _embeddings_of(job, model, rows, valid_np, train=True)
    if stage.diversity > 0:
        parts.pool.add(*diversity_pairs(emb, target, valid))
        if parts.pool.labels is not None:
            emb, target, _ = transfer_diversity(
                emb, target, valid, parts.pool.labels, parts.pool.deltas, stage.diversity, parts.generator
            )
    if stage.seq_mask > 0:
        emb, _ = mask_slices(emb, valid, stage.seq_mask, model.mask_token, parts.generator)
    with job.rt.autocast():
        out = model.read(emb, valid)
    # the terms run in fp32: log-sigmoid and distances lose precision under bf16
    out.logits, out.aux_logits, out.hidden = out.logits.float(), out.aux_logits.float(), out.hidden.float()
    out.context, out.embeddings = out.context.float(), out.embeddings.float()
    loss, _ = parts.terms(out, target, valid)
    value = float(loss.item())  # one sync per series batch: cheap next to embedding every slice of a batch
    if not np.isfinite(value):
        raise MedkitError(f"the training loss is {value}", hint="lower --lr, or check the labels")
    parts.optimizer.zero_grad(set_to_none=True)
    scaler = parts.scaler
    if scaler is not None:  # fp16 autocast on a GPU
        scaler.scale(loss).backward()
        scaler.unscale_(parts.optimizer)
    else:
        loss.backward()
    if job.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.cfg.grad_clip)
    if scaler is not None:
        scaler.step(parts.optimizer)
        scaler.update()
    else:
        parts.optimizer.step()
    if parts.schedule is not None and hasattr(parts.schedule, "step_batch"):
        parts.schedule.step_batch()
    return value


def _predict_val(job: _Job, model: Any, terms: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-slice probabilities of every validation series read whole: ``(probs (N, L), source rows (N,), loss)``."""
    import torch

    model.eval()
    probs, rows_out, losses, n = [], [], 0.0, 0
    main = terms.terms["main"] if "main" in terms.terms else None  # noqa: SIM401 (a ModuleDict)
    with torch.no_grad():
        for start in range(0, len(job.val_series), job.batch_series):
            rows, valid_np = pad_batch(job.val_series.rows[start : start + job.batch_series])
            valid = torch.from_numpy(valid_np).to(job.rt.device)
            emb = _embeddings_of(job, model, rows, valid_np, train=False)
            with job.rt.autocast():
                out = model.read(emb, valid)
            out.logits = out.logits.float()
            if main is not None:
                losses += float(main(out, _targets(job, rows, valid_np), valid)) * int(valid_np.sum())
                n += int(valid_np.sum())
            probs.append(torch.sigmoid(out.logits[valid]).cpu().numpy())
            rows_out.append(rows[valid_np])
            if job.cfg.dry_run:
                break
    return np.concatenate(probs), np.concatenate(rows_out), (losses / n if n else float("nan"))


def _score(job: _Job, rows: np.ndarray, probs: np.ndarray) -> float:
    from medkit.metrics import score

    y = np.asarray(job.data.train.all_targets)[rows]
    try:
        return float(score(job.metric, job.data.target, y, probs))
    except (ValueError, DataError, UsageError) as exc:  # a dry run's single series may hold one class only
        _log(f"validation {job.cfg.task.metric} not computable: {exc}")
        return float("nan")


def _write_oof(job: _Job, run: Any, rows: np.ndarray, probs: np.ndarray) -> None:
    """oof.csv per slice in the prediction-table convention: image, patient_id, series, order, targets, probs."""
    from medkit.engine.run import write_oof

    val = job.data.val
    pos = val.positions(rows)
    extra: dict[str, Any] = {}
    if val.groups:
        extra["patient_id"] = [val.groups[p] for p in pos]
    extra["series"] = [job.series_ids[r] for r in rows]
    extra["order"] = [int(job.order[r]) if float(job.order[r]).is_integer() else float(job.order[r]) for r in rows]
    y = np.asarray(job.data.train.all_targets)[rows]
    write_oof(run.oof_csv, [val.ids[p] for p in pos], y, probs, job.data.label_names, extra)


# ---------------------------------------------------------------------------------------------------- prediction
def predict_series(
    model: Any,
    normalize: Any,
    source: Any,
    series: Sequence[Any],
    order: Sequence[Any],
    views: Sequence[Any],
    rt: Any,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-slice logits ``(views, N, K)`` of a sequence model, every series read whole (`medkit predict`).

    Args:
        model: A `medkit.models.sequence.SequenceModel` on ``rt.device``, in eval mode.
        normalize: uint8 ``(B, C, H, W)`` -> the model's float input (the run's ``transforms.eval``).
        source: The images, ``get_batch(rows) -> uint8 (B, H, W, C)``, rows in the order of ``series``.
        series: Series id of every row.
        order: Slice position of every row.
        views: `medkit.engine.tta.View`s; each view is applied to every slice of a series before it is read.
        rt: The runtime (device, autocast).
        batch_size: Slices embedded at once.

    Raises:
        DataError: Slice positions that are not numbers.
    """
    import torch

    try:
        pos = np.asarray(order, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("the slice order of a series must be numeric", hint="check the slice order column") from None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        groups.setdefault(str(s), []).append(i)
    out: np.ndarray | None = None
    with torch.no_grad():
        for rows in groups.values():
            rows_np = np.array(sorted(rows, key=lambda r: (pos[r], r)), dtype=np.int64)
            for v, view in enumerate(views):
                feats = []
                for start in range(0, len(rows_np), batch_size):
                    x = torch.from_numpy(source.get_batch(rows_np[start : start + batch_size]))
                    x = normalize(view.apply(x.permute(0, 3, 1, 2).to(rt.device)))
                    with rt.autocast():
                        feats.append(model.embed(x).float())
                with rt.autocast():
                    logits = model.read(torch.cat(feats)[None]).logits[0].float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(views), len(series), logits.shape[-1]), dtype=np.float32)
                out[v, rows_np] = logits
    if out is None:
        raise DataError("no images to predict")
    return out

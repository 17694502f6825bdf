"""A reloadable run: `RunSpec` records how a run's model and inputs were made; `load_run` makes them again.

The spec is written into run.json (``"spec"``) and into every checkpoint, so predict, refine, ensemble and submit
can rebuild the exact model (registry name and construction keywords) and the exact inputs (preprocessing of the
files, per-channel normalisation) from a run folder alone, without the flags of the command that trained it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medkit.engine.components import ModelSpec
from medkit.errors import DataError

__all__ = ["RunSpec", "RunInputs", "LoadedRun", "load_run", "SPEC_VERSION"]

#: Bumped when the meaning of a spec field changes.
SPEC_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """What a trained model needs to be rebuilt and fed.

    Attributes:
        task: Task preset name.
        model: The `ModelSpec` (name and exact construction keyword arguments).
        preprocess: `medkit.data.pipeline.Preprocess` parameters for files (size, channels, windows, bit depth,
            interpolation, margin); None when archive images were used as they are.
        mask_col: Table column whose masks were stacked as the last channel, or None.
        mean: Per-channel normalisation mean (after scaling to 0..1), one value per input channel or one for all.
        std: Per-channel normalisation std.
        img_size: Input size (square side).
        target: Target kind name.
        label_names: Names of the model outputs.
        label_cols: Label columns of the table the targets came from.
        num_classes: Classes or grades (0 for 0/1 labels).
        metric: METRICS name that picked the best checkpoint.
        greater_is_better: Direction of that metric.
        batch_size: Global batch size of training (predictions use it too).
        stages: The `medkit.engine.stages.Stage` records of the run.
        ema: Whether the evaluated weights are an EMA.
        neighbours: Odd-length weights that combine each CT slice's logits with its neighbours' in the series
            (`medkit.engine.aggregate.aggregate_neighbours`) at prediction time; empty: no aggregation.
        context: The 2.5D stacks the model reads (`medkit.data.context.ContextPlan.to_dict`: slices, mode,
            channels per slice, in_chans), or None for single slices.
        version: `SPEC_VERSION` of the writer.
    """

    task: str
    model: ModelSpec
    preprocess: dict[str, Any] | None
    mask_col: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    target: str
    label_names: tuple[str, ...]
    label_cols: tuple[str, ...] = ()
    num_classes: int = 0
    metric: str = ""
    greater_is_better: bool = True
    batch_size: int = 32
    stages: tuple[dict[str, Any], ...] = ()
    ema: bool = False
    neighbours: tuple[float, ...] = ()
    context: dict[str, Any] | None = None
    version: int = SPEC_VERSION

    def context_plan(self) -> Any:
        """The `medkit.data.context.ContextPlan` of a 2.5D run, or None."""
        if not self.context:
            return None
        from medkit.data.context import ContextPlan

        c = self.context
        return ContextPlan(int(c["slices"]), str(c["mode"]), int(c["channels"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["model"] = {"name": self.model.name, "kwargs": dict(self.model.kwargs)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Inverse of `to_dict`.

        Raises:
            DataError: A record that is not a run spec.
        """
        try:
            kw = dict(d)
            kw["model"] = ModelSpec(d["model"]["name"], dict(d["model"]["kwargs"]))
            for key in ("mean", "std", "label_names", "label_cols", "stages", "neighbours"):
                kw[key] = tuple(kw.get(key) or ())
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in kw.items() if k in known})
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a medkit run spec ({exc})", hint="train the run again with this medkit") from exc


def spec_of(
    task: Any, data: Any, model: ModelSpec, mean: Any, std: Any, stages: Any, greater: bool, ema: bool
) -> RunSpec:
    """The spec of a run being trained on ``data`` (a `medkit.data.dataset.TrainData`)."""
    pre = None
    if data.preprocess is not None:
        pre = {k: v for k, v in data.preprocess.params().items() if k != "masks"}
    return RunSpec(
        task=task.name,
        model=model,
        preprocess=pre,
        mask_col=data.mask_col,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        img_size=int(task.img_size),
        target=data.target.name,
        label_names=tuple(data.label_names),
        label_cols=tuple(data.label_cols),
        num_classes=int(data.num_classes),
        metric=task.metric,
        greater_is_better=bool(greater),
        batch_size=int(task.batch_size),
        stages=tuple(s.to_dict() for s in stages),
        ema=bool(ema),
        context=data.context.to_dict() if getattr(data, "context", None) is not None else None,
    )


@dataclass
class RunInputs:
    """How images reach a reloaded model.

    Attributes:
        spec: The run's spec.
        preprocess: The `Preprocess` for files (None: archive images used as they are).
        transforms: `medkit.engine.components.InputTransforms`; its ``eval`` normalises a uint8 batch.
    """

    spec: RunSpec
    preprocess: Any
    transforms: Any

    @property
    def target(self) -> Any:
        """The `medkit.target.TargetKind` of the outputs."""
        from medkit.target import target_kind

        return target_kind(self.spec.target)

    def file_source(self, paths: list[str | os.PathLike[str]], masks: dict[str, str] | None = None) -> Any:
        """A `medkit.data.pipeline.FileSource` that prepares ``paths`` exactly as in training.

        Raises:
            DataError: The run was trained on archive images (no file preprocessing recorded), or with a mask
                channel and no ``masks`` were given.
        """
        from medkit.data.pipeline import FileSource

        if self.spec.preprocess is None:
            raise DataError("this run was trained on archive images: it records no file preprocessing")
        if self.spec.mask_col is not None and not masks:
            raise DataError(
                f"this run stacks the masks of column '{self.spec.mask_col}' as a channel",
                hint="pass the mask file of every image",
            )
        pre = self.preprocess if masks is None else preprocess_from(self.spec.preprocess, masks)
        return FileSource(paths, pre)


@dataclass
class LoadedRun:
    """A model rebuilt from a run folder, with its inputs.

    Attributes:
        model: The model with the checkpoint's evaluated weights (EMA when the run kept one), in eval mode.
        inputs: The `RunInputs`.
        checkpoint: Path of the checkpoint read.
    """

    model: Any
    inputs: RunInputs
    checkpoint: Path

    def __iter__(self) -> Any:  # ``model, inputs = load_run(...)``
        return iter((self.model, self.inputs))


def load_run(run_dir: str | os.PathLike[str], which: str = "best", device: Any = "cpu") -> LoadedRun:
    """Rebuild a trained model and its inputs from a run folder.

    Args:
        run_dir: The run folder (holding ``checkpoints/best.pt``).
        which: ``best`` or ``last``.
        device: Where to put the model.

    Raises:
        DataError: No checkpoint, or a checkpoint written before runs recorded their spec.
    """
    from medkit.engine.checkpoint import load_checkpoint
    from medkit.engine.components import InputTransforms, build_model
    from medkit.engine.run import RunDir

    run = RunDir(run_dir)
    path = run.best if which == "best" else run.last
    state = load_checkpoint(path, map_location="cpu")
    if "spec" not in state:
        raise DataError(f"{path}: the checkpoint records no run spec", hint="train the run again with this medkit")
    spec = RunSpec.from_dict(state["spec"])
    model = build_model(spec.model)
    model.load_state_dict(evaluated_weights(state))
    model = model.to(device).eval()
    transforms = InputTransforms(spec.mean, spec.std, spec.img_size)
    pre = preprocess_from(spec.preprocess) if spec.preprocess is not None else None
    return LoadedRun(model, RunInputs(spec, pre, transforms), path)


def preprocess_from(params: dict[str, Any], masks: dict[str, str] | None = None) -> Any:
    """The `medkit.data.pipeline.Preprocess` of recorded parameters (lists back to tuples)."""
    from medkit.data.pipeline import Preprocess

    p = dict(params)
    p["size"], p["percentiles"] = tuple(p["size"]), tuple(p["percentiles"])
    p["windows"] = tuple(p["windows"]) if p.get("windows") else None
    return Preprocess(**p, masks=masks)


def evaluated_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint evaluates: the EMA's (without its ``module.`` prefix) when it has one."""
    ema = state.get("ema")
    if ema:
        return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")} or dict(ema)
    return state["model"]

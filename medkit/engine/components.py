"""Building the parts of a run by name from the registries: model, loss, optimizer and schedule, EMA, transforms.

Each builder takes what it needs and nothing more, so `fit`, `refine`, `predict` and the tests build the same
parts the same way. The model is described by a `ModelSpec` (its registry name and the exact keyword arguments it
was built with), which is what a run directory records so that `medkit.engine.spec.load_run` can build it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medkit.errors import DataError, UsageError

__all__ = [
    "ModelSpec",
    "LossCaps",
    "InputTransforms",
    "model_spec",
    "build_model",
    "build_loss",
    "build_optimizer",
    "build_schedule",
    "build_ema",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model as the registry builds it.

    Attributes:
        name: MODELS name (``resnet34``, ``timm/convnext_tiny``, ...).
        kwargs: The exact keyword arguments of ``MODELS.create`` (``num_classes``, ``in_chans``, ``heads``,
            ``head``), without ``pretrained`` and ``weights``, which only decide the starting weights.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def model_spec(task: Any, data: Any) -> ModelSpec:
    """The model a task needs for this data: outputs and input channels from the data, heads from the labels.

    Raises:
        UsageError: ``heads="groups"`` without label groups.
        DataError: A label group whose columns are not next to each other in the label order.
    """
    kw: dict[str, Any] = {}
    if task.heads == "groups":
        kw["heads"] = _group_heads(data.label_names, data.label_groups)
    if data.target.cumulative:
        kw["head"] = "ordinal"
    num_classes = data.num_classes if data.target.cumulative else data.num_outputs
    return ModelSpec(task.model, {"num_classes": num_classes, "in_chans": data.in_chans, **kw})


def _group_heads(label_names: Sequence[str], groups: dict[str, Sequence[str]]) -> dict[str, int]:
    if not groups:
        raise UsageError(
            "--heads groups needs label groups",
            hint="use a table with RANZCR columns, name your groups with --heads 'NAME=COL,COL;NAME=COL', "
            "or --heads single",
        )
    order = {name: i for i, name in enumerate(label_names)}
    grouped = {c for cols in groups.values() for c in cols}
    if alone := [name for name in label_names if name not in grouped]:
        raise UsageError(
            f"--heads groups: label column(s) {', '.join(alone)} belong to no group",
            hint="name every label column in a group, or leave it out of --label-cols",
        )
    for g, cols in groups.items():
        idx = [order[c] for c in cols]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise DataError(
                f"label group {g} is not contiguous in the label order",
                hint="order the label columns group by group",
            )
    starts = [order[cols[0]] for cols in groups.values()]
    if starts != sorted(starts):  # the heads' logits are concatenated group by group: that must be label order
        raise DataError(
            f"label groups {', '.join(groups)} are not in the order of the label columns",
            hint="give the groups in the order of --label-cols (or leave --label-cols out)",
        )
    return {g: len(c) for g, c in groups.items()}


def build_model(spec: ModelSpec, pretrained: bool = False, weights: str | None = None) -> Any:
    """Build the model of a `ModelSpec`, starting from timm's pretrained weights or a local state dict."""
    from medkit.registries import MODELS

    return MODELS.create(spec.name, pretrained=pretrained or None, weights=weights, **spec.kwargs)


@dataclass(frozen=True)
class LossCaps:
    """What a loss needs from the training step (its registry flags, read once).

    Attributes:
        needs_indices: ``forward`` takes ``index=`` (the source rows of the batch; ELR keeps per-sample state).
        needs_model: ``forward`` takes ``model=`` (weight penalties).
        takes_grades: An ordinal loss that takes the integer grades as they are (not the cumulative columns).
    """

    needs_indices: bool = False
    needs_model: bool = False
    takes_grades: bool = False

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> LossCaps:
        """Capabilities from a LOSSES entry's flags."""
        return cls(bool(flags.get("needs_indices")), bool(flags.get("needs_model")), bool(flags.get("ordinal")))

    def extra(self, index: Any, model: Any) -> dict[str, Any]:
        """The keyword arguments this loss takes besides logits and targets."""
        out: dict[str, Any] = {}
        if self.needs_indices and index is not None:
            out["index"] = index
        if self.needs_model:
            out["model"] = model
        return out


def build_loss(task: Any, data: Any) -> tuple[Any, LossCaps]:
    """The task's loss for this data (class count, label prevalence, examples for ELR) and its capabilities.

    Raises:
        UsageError: A loss that does not fit the target kind.
    """
    from medkit.registries import LOSSES

    entry = LOSSES.get(task.loss)
    caps = LossCaps.from_flags(dict(entry.flags))
    data.target.check_loss(task.loss, dict(entry.flags))
    kw = dict(task.loss_kwargs)
    kw.setdefault("label_prevalence", data.label_prevalence())
    kw.setdefault("num_classes", data.num_classes if data.target.integer else data.num_outputs)
    if caps.needs_indices:
        # ELR keeps one running target per row of the source (the batch index is the source row).
        kw.setdefault("num_examples", len(data.train.source))
    return LOSSES.create(task.loss, **kw), caps


def build_optimizer(stage: Any, model: Any, total_steps: int) -> Any:
    """The optimizer of a `medkit.engine.stages.Stage` over ``model``.

    The module (not a parameter list) is passed so the factory can exempt biases and norm weights from weight
    decay.
    """
    from medkit.registries import OPTIMIZERS

    return OPTIMIZERS.create(
        stage.optimizer,
        model,
        lr=stage.lr,
        weight_decay=stage.weight_decay,
        total_steps=total_steps,
        **stage.optimizer_kwargs,
    )


def build_schedule(
    name: str,
    optimizer: Any,
    epochs: int,
    steps_per_epoch: int,
    extra: dict[str, Any] | None = None,
    greater: bool = True,
) -> Any:
    """A SCHEDULERS entry over ``optimizer``; a schedule that watches the metric follows its direction.

    Args:
        name: SCHEDULERS name.
        optimizer: The optimizer.
        epochs: Epochs the schedule spans.
        steps_per_epoch: Optimizer steps per epoch.
        extra: Scheduler keyword arguments (``--scheduler-arg``); an explicit ``mode`` wins.
        greater: Whether the watched metric improves upwards (a log loss must fall).
    """
    from medkit.registries import SCHEDULERS

    extra = dict(extra or {})
    if SCHEDULERS.get(name).flags.get("needs_metric"):
        extra.setdefault("mode", "max" if greater else "min")
    return SCHEDULERS.create(name, optimizer, epochs=max(1, epochs), steps_per_epoch=max(1, steps_per_epoch), **extra)


def build_ema(model: Any, decay: float) -> Any:
    """An exponential moving average of ``model``'s weights (timm ``ModelEmaV3``)."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


class InputTransforms:
    """uint8 batches on the device -> the model's float inputs: augmentation and mixing in training, normalisation
    alone in evaluation. All randomness comes from one ``torch.Generator`` (saved in checkpoints).

    Args:
        mean: Per-channel mean (after scaling to 0..1).
        std: Per-channel std.
        size: Output size (square side or (h, w)).
        augment: `medkit.data.augment.AugmentConfig` keyword arguments for training (empty: none).
        image_channels: Channels that photometric changes touch (the rest: a mask channel); None = all.
        mixup: Mixup alpha (0: off).
        cutmix: CutMix alpha (0: off).
        num_classes: Classes for one-hot mixing of multiclass targets (None: targets are already 0/1 columns).
        seed: Seed of the generator.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        size: Any,
        augment: dict[str, Any] | None = None,
        image_channels: int | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        from medkit.data.augment import AugmentConfig, BatchAugment

        norm = {"mean": tuple(mean), "std": tuple(std)}
        self.augmenter = BatchAugment(
            AugmentConfig(**{**(augment or {}), **norm, "image_channels": image_channels}), size=size
        )
        self.normalizer = BatchAugment(AugmentConfig(**norm), size=size)
        self.mixup, self.cutmix, self.num_classes = float(mixup), float(cutmix), num_classes
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def train(self, images: Any, target: Any) -> tuple[Any, Any]:
        """Augment a training batch and mix it (mixup / CutMix, one of them at random when both are on)."""
        import torch

        from medkit.data.augment import cutmix, mixup

        x = self.augmenter(images, generator=self.generator, train=True)
        g = self.generator
        if self.mixup > 0 and self.cutmix > 0:
            use_mix = bool(torch.rand(1, generator=g).item() < 0.5)
            if use_mix:
                return mixup(x, target, self.mixup, g, self.num_classes)
            return cutmix(x, target, self.cutmix, g, self.num_classes)
        if self.mixup > 0:
            return mixup(x, target, self.mixup, g, self.num_classes)
        if self.cutmix > 0:
            return cutmix(x, target, self.cutmix, g, self.num_classes)
        return x, target

    def eval(self, images: Any) -> Any:
        """Normalise an evaluation batch (no randomness)."""
        return self.normalizer(images, train=False)

"""Tasks: presets for a kind of data (how it is read, labelled, modelled and scored), registered in TASKS.

A `Task` is a plain dataclass. ``TASKS.create("cxr", epochs=3)`` returns the preset with the given fields
overridden (None means "keep the preset's value"), so every ``medkit train`` flag can override it one by one.
This module imports neither torch nor typer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from medkit.competitions.ranzcr import RANZCR_GROUPS
from medkit.competitions.rsna import RSNA_SUBTYPES
from medkit.errors import UsageError
from medkit.registries import TASKS
from medkit.target import TARGETS

__all__ = ["Task", "TARGET_KINDS", "task_fields", "parse_label_groups", "Recipe", "RECIPES", "recipe"]

TARGET_KINDS = tuple(TARGETS)


@dataclass(frozen=True)
class Task:
    """A training preset; every field can be overridden by a flag of ``medkit train``.

    Attributes:
        name: Registry name of the preset.
        description: One line for `medkit list tasks`.
        target: ``binary`` / ``multilabel`` (sigmoid per label), ``multiclass`` (softmax over classes of one
            integer column) or ``ordinal`` (a grade 0..G-1 learnt as G-1 cumulative "grade > k" outputs).
        labels: Default label columns (empty: detected from the table).
        num_classes: Classes for ``multiclass``, grades for ``ordinal`` (0: counted from the data).
        in_chans: Image channels the model sees (1 gray, 3 RGB or CT windows, 4 image + mask).
        windows: CT window names (`medkit.io.windows.WINDOWS`) stacked as channels; empty for non-CT data. Checked
            when set, so a mistyped ``--windows brian`` fails before any image is read.
        img_size: Training image size (square).
        model: MODELS name.
        heads: ``single`` (one linear head) or ``groups`` (one head per label group).
        label_groups: Named groups of label columns for ``heads="groups"``.
        loss: LOSSES name.
        loss_kwargs: Extra keyword arguments for the loss.
        metric: METRICS name that picks the best checkpoint and drives early stopping.
        optimizer: OPTIMIZERS name.
        lr: Learning rate.
        weight_decay: Weight decay.
        scheduler: SCHEDULERS name.
        epochs: Training epochs.
        batch_size: Batch size (global: split across processes under DDP).
        mean: Normalisation mean per channel (one value is repeated).
        std: Normalisation std per channel.
        augment: Keyword arguments for `medkit.data.augment.AugmentConfig` (normalisation comes from mean/std).
        group_aware: Whether rows of one patient/series must stay together (folds, OOF).
        context: Slices per 2.5D stack (odd): each slice with its ``context // 2`` neighbours on each side of its
            CT series as input channels (`medkit.data.context`); 1 = single slices.
        context_mode: ``all`` (every slice in every window) or ``middle`` (the centre slice in every window, its
            neighbours in the first window only).
    """

    name: str = "binary"
    description: str = ""
    target: str = "binary"
    labels: tuple[str, ...] = ()
    num_classes: int = 0
    in_chans: int = 3
    windows: tuple[str, ...] = ()
    img_size: int = 224
    model: str = "resnet18"
    heads: str = "single"
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loss: str = "bce"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    metric: str = "auc"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    epochs: int = 10
    batch_size: int = 32
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    augment: dict[str, Any] = field(default_factory=dict)
    group_aware: bool = False
    context: int = 1
    context_mode: str = "all"

    def __post_init__(self) -> None:
        if self.target not in TARGET_KINDS:
            raise UsageError(f"task '{self.name}': unknown target kind '{self.target}'", hint=f"use {TARGET_KINDS}")
        if self.heads not in ("single", "groups"):
            raise UsageError(f"task '{self.name}': heads must be 'single' or 'groups', not '{self.heads}'")
        if self.in_chans < 1:
            raise UsageError(f"task '{self.name}': in_chans must be at least 1, not {self.in_chans}")
        if self.context != 1 or self.context_mode != "all":
            from medkit.data.context import check_context

            check_context(self.context, self.context_mode)

    def with_(self, **overrides: Any) -> Task:
        """A copy with the given fields changed; None values keep the preset's value.

        New ``windows`` are checked by name, and give one input channel each unless ``in_chans`` is also given.

        Raises:
            UsageError: For a field the task does not have, or an unknown window name.
        """
        known = task_fields()
        bad = [k for k in overrides if k not in known]
        if bad:
            raise UsageError(f"task '{self.name}' has no field {bad[0]!r}", hint=f"fields: {', '.join(sorted(known))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(changes.get("heads"), str) and "=" in changes["heads"]:
            changes["label_groups"] = parse_label_groups(changes["heads"])
            changes["heads"] = "groups"
            changes.setdefault("labels", tuple(c for cols in changes["label_groups"].values() for c in cols))
        for key in ("labels", "mean", "std"):
            if key in changes and isinstance(changes[key], str):
                changes[key] = tuple(s.strip() for s in changes[key].split(",") if s.strip())
        if "windows" in changes:
            from medkit.io.windows import parse_windows

            changes["windows"] = tuple(parse_windows(changes["windows"]))
            if changes["windows"] and "in_chans" not in changes:
                changes["in_chans"] = len(changes["windows"])
        for key in ("mean", "std"):
            if key in changes:
                changes[key] = tuple(float(v) for v in changes[key])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of `to_dict` (unknown keys are ignored, so older run.json files still load)."""
        known = task_fields()
        kw = {k: v for k, v in data.items() if k in known}
        for key in ("labels", "windows", "mean", "std"):
            if key in kw and kw[key] is not None:
                kw[key] = tuple(kw[key])
        if "label_groups" in kw and kw["label_groups"]:
            kw["label_groups"] = {g: tuple(c) for g, c in kw["label_groups"].items()}
        return cls(**kw)


def parse_label_groups(text: str) -> dict[str, tuple[str, ...]]:
    """Label groups from ``--heads "NAME=COL,COL;NAME=COL"`` (one head per group, groups in this order).

    Raises:
        UsageError: An item without ``=``, an empty group, or a column named twice.
    """
    groups: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        name, sep, cols = item.partition("=")
        columns = tuple(c.strip() for c in cols.split(",") if c.strip())
        if not sep or not name.strip() or not columns:
            raise UsageError(
                f"--heads: '{item}' is not NAME=COL,COL",
                hint='e.g. --heads "ETT=ETT - Abnormal,ETT - Normal;NGT=NGT - Normal,NGT - Abnormal"',
            )
        twice = [c for c in columns if c in seen]
        if twice or name.strip() in groups:
            what = f"column '{twice[0]}'" if twice else f"group '{name.strip()}'"
            raise UsageError(f"--heads: {what} is named twice", hint="each label column belongs to one group")
        seen.update(columns)
        groups[name.strip()] = columns
    if not groups:
        raise UsageError("--heads: no label group given", hint="NAME=COL,COL;NAME=COL")
    return groups


def task_fields() -> set[str]:
    """Names of the fields a task preset has (what ``TASKS.create(name, **overrides)`` accepts)."""
    return {f.name for f in fields(Task)}


def _preset(name: str, **defaults: Any) -> Any:
    def factory(**overrides: Any) -> Task:
        return Task(name=name, **defaults).with_(**overrides)

    factory.__name__ = name
    factory.__doc__ = defaults.get("description", name)
    return factory


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_PRESETS: dict[str, dict[str, Any]] = {
    "ct": dict(
        description="Head CT slices (DICOM or PNG): brain/subdural/soft-tissue windows, 5 hemorrhage subtypes + any",
        target="multilabel",
        labels=RSNA_SUBTYPES,
        in_chans=3,
        windows=("brain", "subdural", "soft_tissue"),
        img_size=256,
        model="resnet34",
        loss="bce",
        metric="rsna_logloss",
        optimizer="adam",
        lr=2e-4,
        weight_decay=0.0,
        epochs=5,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        augment={"hflip": 0.5, "affine_p": 0.5, "rotate": 15.0, "scale": (0.9, 1.1)},
        group_aware=True,
    ),
    "cxr": dict(
        description="Chest radiographs, multi-label; label groups (RANZCR ETT/NGT/CVC/Swan-Ganz) for one head each",
        target="multilabel",
        in_chans=3,
        img_size=512,
        model="efficientnet_b2",
        heads="single",
        label_groups=dict(RANZCR_GROUPS),
        loss="bce",
        metric="auc",
        optimizer="adam",
        lr=5e-4,
        weight_decay=0.0,
        epochs=10,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        augment={"affine_p": 0.5, "rotate": 10.0, "scale": (0.9, 1.1), "brightness": 0.1, "contrast": 0.1},
        group_aware=True,
    ),
    "wsi": dict(
        description="Tile mosaics of whole-slide images (medkit tile): ISUP grade 0-5 as ordinal targets, QWK",
        target="ordinal",
        labels=("isup_grade",),
        num_classes=6,
        in_chans=3,
        img_size=768,
        model="efficientnet_b0",
        loss="ordinal",
        metric="qwk",
        optimizer="adam",
        lr=3e-4,
        weight_decay=0.0,
        epochs=10,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        augment={"hflip": 0.5, "vflip": 0.5},
        group_aware=True,
    ),
    "scan": dict(
        description="Small scans (64x64): several binary tasks at once, scored by F1",
        target="multilabel",
        in_chans=1,
        img_size=64,
        model="cnn_small",
        loss="bce",
        metric="f1",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        epochs=20,
        batch_size=64,
        augment={"hflip": 0.5},
    ),
    "binary": dict(
        description="Any table with one 0/1 label column (or a MedMNIST binary npz), scored by AUC",
        target="binary",
        in_chans=1,
        img_size=224,
        model="resnet18",
        loss="bce",
        metric="auc",
    ),
    "multiclass": dict(
        description="Any table with one integer class column (softmax over classes), scored by accuracy",
        target="multiclass",
        in_chans=1,
        img_size=224,
        model="resnet18",
        loss="ce",
        metric="accuracy",
    ),
    "multilabel": dict(
        description="Any table with several 0/1 label columns (sigmoid per label), scored by macro AUC",
        target="multilabel",
        in_chans=1,
        img_size=224,
        model="resnet18",
        loss="bce",
        metric="auc",
    ),
}

for _name, _defaults in _PRESETS.items():
    TASKS.register(_name, _preset(_name, **_defaults), description=_defaults["description"], target=_defaults["target"])


@dataclass(frozen=True)
class Recipe:
    """A recommended training recipe: task-field overrides plus run settings, chosen by ``medkit train --recipe``.

    A recipe sits between the task preset and the flags: ``medkit train binary --recipe small-image --epochs 60``
    takes the ``binary`` preset, then the recipe's fields, then ``--epochs``.

    Attributes:
        name: Name given to ``--recipe``.
        description: One line for the help and the docs.
        task: Task fields the recipe sets (`Task.with_` keywords).
        ema: Keep an EMA of the weights (evaluated and saved instead of the raw weights).
        ema_decay: EMA decay per optimizer step.
        tta: Test-time views recommended for ``medkit predict --tta`` with runs of this recipe.
    """

    name: str
    description: str
    task: dict[str, Any] = field(default_factory=dict)
    ema: bool = False
    ema_decay: float = 0.999
    tta: str = ""


# Chosen on the BreastMNIST validation split (benchmarks/quality.py, docs/quality.md), never on its test split. No EMA:
# with decay 0.99 its BatchNorm statistics did not fit its averaged weights (validation AUC 0.68 vs 0.92 raw).
RECIPES: dict[str, Recipe] = {
    "small-image": Recipe(
        name="small-image",
        description="28-64 px images (MedMNIST): CIFAR-stem ResNet-18, flips + small affine, AdamW, cosine",
        task=dict(
            model="resnet18_cifar",
            optimizer="adamw",
            lr=1e-3,
            weight_decay=5e-4,
            scheduler="cosine",
            epochs=15,
            batch_size=32,
            mean=(0.5,),
            std=(0.5,),
            augment={
                "hflip": 0.5,
                "affine_p": 0.8,
                "rotate": 10.0,
                "scale": (0.9, 1.1),
                "translate": 0.0625,
                "padding": "reflection",
            },
        ),
        tta="hflip",
    ),
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        UnknownNameError: For a name that is not a recipe (with a suggestion).
    """
    from medkit.errors import UnknownNameError, did_you_mean

    if name not in RECIPES:
        raise UnknownNameError(
            f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}", hint=f"recipes: {', '.join(RECIPES)}"
        )
    return RECIPES[name]

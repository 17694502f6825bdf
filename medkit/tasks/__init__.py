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

__all__ = ["Task", "TARGET_KINDS", "task_fields"]

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

    def __post_init__(self) -> None:
        if self.target not in TARGET_KINDS:
            raise UsageError(f"task '{self.name}': unknown target kind '{self.target}'", hint=f"use {TARGET_KINDS}")
        if self.heads not in ("single", "groups"):
            raise UsageError(f"task '{self.name}': heads must be 'single' or 'groups', not '{self.heads}'")
        if self.in_chans < 1:
            raise UsageError(f"task '{self.name}': in_chans must be at least 1, not {self.in_chans}")

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

"""MODELS: curated timm backbones, ``timm/<name>`` delegation, medkit heads and small baselines for 64x64 scans.

Every entry follows one factory signature::

    f(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw) -> torch.nn.Module

and returns a `MedkitClassifier`: a feature extractor (a timm backbone built with ``num_classes=0``, or a small
baseline) followed by a medkit head, whose ``forward(x)`` returns logits ``(B, num_outputs)``. Common keywords:

- ``heads``: ``{"ETT": 3, "NGT": 4, ...}``: one linear head per label group, logits concatenated in that order
  (``"single"`` or None: one linear head);
- ``head="ordinal"``: CORAL-style cumulative logits ``(B, num_classes - 1)`` for grades;
- ``drop_rate``: dropout on the pooled features before the head;
- ``weights``: a local state dict (.pth/.pt/.bin/.safetensors) loaded after construction.

Curated timm entries and ``timm/<name>`` also pass other keywords (``drop_path_rate``, ``global_pool``, ...) to
``timm.create_model``. This module imports neither torch nor timm: they load when a model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medkit.registries import MODELS

__all__ = [
    "CURATED",
    "CIFAR_RESNETS",
    "BASELINES",
    "MedkitClassifier",
    "GroupHeads",
    "OrdinalHead",
    "build_head",
    "load_weights",
    "ordinal_decode",
    "CnnSmall",
    "LstmRows",
    "Mlp",
]

# registry name -> (timm architecture, family, default image size, description)
CURATED: dict[str, tuple[str, str, int, str]] = {
    "resnet18": ("resnet18", "resnet", 224, "ResNet-18: small, fast baseline CNN"),
    "resnet34": ("resnet34", "resnet", 224, "ResNet-34: the common Kaggle medical baseline"),
    "resnet101": ("resnet101", "resnet", 224, "ResNet-101: deep ResNet"),
    "resnest50d": ("resnest50d", "resnest", 224, "ResNeSt-50d: split-attention ResNet"),
    "inception_v3": ("inception_v3", "inception", 299, "Inception-v3 (needs inputs of at least 75 px)"),
    "densenet169": ("densenet169", "densenet", 224, "DenseNet-169: the CheXNet-style chest X-ray backbone"),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet", 224, "EfficientNet-B0: small EfficientNet"),
    "efficientnet_b2": ("efficientnet_b2", "efficientnet", 256, "EfficientNet-B2: mid-size EfficientNet"),
    "efficientnet_b5": ("efficientnet_b5", "efficientnet", 448, "EfficientNet-B5: large EfficientNet"),
    "xception": ("legacy_xception", "xception", 299, "Xception (original Chollet architecture, timm legacy_xception)"),
}

# registry name -> (timm architecture, description): timm ResNets with the CIFAR-style stem of MedMNIST v2
CIFAR_RESNETS: dict[str, tuple[str, str]] = {
    "resnet18_cifar": (
        "resnet18",
        "ResNet-18 (28) of MedMNIST v2 (Yang et al., Sci Data 2023): 3x3 stride-1 stem, no max-pool; 28-64 px",
    ),
    "resnet50_cifar": (
        "resnet50",
        "ResNet-50 (28) of MedMNIST v2 (Yang et al., Sci Data 2023): 3x3 stride-1 stem, no max-pool; 28-64 px",
    ),
}

# registry name -> (class name in medkit.models._baselines, description)
BASELINES: dict[str, tuple[str, str]] = {
    "cnn_small": ("CnnSmall", "Small CNN baseline: conv-bn-relu-pool blocks, global pooling (any input size)"),
    "lstm_rows": ("LstmRows", "LSTM baseline over image rows (sequence of H rows of W*C values)"),
    "mlp": ("Mlp", "MLP baseline: image pooled to a fixed size, flattened, hidden layers"),
}

_LAZY = {
    "MedkitClassifier": "medkit.models._build",
    "GroupHeads": "medkit.models._build",
    "OrdinalHead": "medkit.models._build",
    "build_head": "medkit.models._build",
    "load_weights": "medkit.models._build",
    "ordinal_decode": "medkit.models._build",
    "CnnSmall": "medkit.models._baselines",
    "LstmRows": "medkit.models._baselines",
    "Mlp": "medkit.models._baselines",
}


def __getattr__(name: str) -> Any:
    # torch is imported only when one of these is used, so `medkit list models` stays fast
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medkit.models' has no attribute {name!r}")


def _timm_factory(registry_name: str, timm_name: str, description: str) -> Callable[..., Any]:
    def factory(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> Any:
        from medkit.models._build import build_timm_classifier

        return build_timm_classifier(
            registry_name, timm_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw
        )

    factory.__name__ = registry_name
    factory.__doc__ = description
    return factory


def _cifar_factory(registry_name: str, timm_name: str, description: str) -> Callable[..., Any]:
    def factory(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> Any:
        from medkit.models._build import build_cifar_resnet

        return build_cifar_resnet(
            registry_name, timm_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw
        )

    factory.__name__ = registry_name
    factory.__doc__ = description
    return factory


def _baseline_factory(registry_name: str, class_name: str, description: str) -> Callable[..., Any]:
    def factory(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> Any:
        from medkit.models._build import build_baseline_classifier

        return build_baseline_classifier(
            registry_name, class_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw
        )

    factory.__name__ = registry_name
    factory.__doc__ = description
    return factory


for _name, (_timm_name, _family, _size, _desc) in CURATED.items():
    MODELS.register(
        _name,
        _timm_factory(_name, _timm_name, _desc),
        description=_desc,
        family=_family,
        img_size=_size,
        timm=_timm_name,
        pretrained=True,
    )

for _name, (_timm_name, _desc) in CIFAR_RESNETS.items():
    MODELS.register(
        _name,
        _cifar_factory(_name, _timm_name, _desc),
        description=_desc,
        family="resnet",
        img_size=28,
        timm=_timm_name,
        pretrained=True,
    )

for _name, (_cls, _desc) in BASELINES.items():
    MODELS.register(_name, _baseline_factory(_name, _cls, _desc), description=_desc, family="baseline", img_size=64)

del _name, _timm_name, _family, _size, _desc, _cls


def _timm_arch(name: str) -> str:
    return name.split(".", 1)[0]  # "resnet18.a1_in1k" names a pretrained tag of "resnet18"


def _resolve_timm(rest: str) -> Callable[..., Any]:
    import timm

    if not rest or not timm.is_model(_timm_arch(rest)):
        raise KeyError(rest)
    return _timm_factory(f"timm/{rest}", rest, f"timm model {rest}")


def _list_timm(pattern: str) -> list[str]:
    import timm

    return list(timm.list_models(pattern or "*"))


MODELS.add_prefix(
    "timm",
    resolve=_resolve_timm,
    list_names=_list_timm,
    description="any timm model (e.g. timm/convnext_tiny, timm/resnet50.a1_in1k) with medkit heads",
)


def _resolve_seq(rest: str) -> Callable[..., Any]:
    from medkit.registries import SEQ_READERS

    if not rest or rest not in SEQ_READERS:
        raise KeyError(rest)

    def factory(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> Any:
        from medkit.models.sequence import build_sequence_model

        return build_sequence_model(rest, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)

    factory.__name__ = f"seq/{rest}"
    factory.__doc__ = f"sequence model: slice encoder + {rest} reader + per-slice head"
    return factory


def _list_seq(pattern: str) -> list[str]:
    from medkit.registries import SEQ_READERS

    return SEQ_READERS.names(pattern or "*")


MODELS.add_prefix(
    "seq",
    resolve=_resolve_seq,
    list_names=_list_seq,
    description="sequence model over a CT series (seq/gru, seq/lstm, seq/transformer): CNN per slice + reader",
)

"""Building medkit models: timm or baseline features + medkit head, pretrained download, local weights."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from medkit.console import info, warn
from medkit.errors import DataError, MedkitError, OfflineError, UsageError

__all__ = [
    "MedkitClassifier",
    "GroupHeads",
    "OrdinalHead",
    "build_head",
    "build_timm_classifier",
    "build_cifar_resnet",
    "build_baseline_classifier",
    "load_weights",
    "ordinal_decode",
]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


# ---------------------------------------------------------------------------------------------------- heads
class GroupHeads(nn.Module):
    """One linear head per label group; logits concatenated in the order of the groups.

    Args:
        in_features: Width of the pooled features.
        groups: Group name -> number of outputs, in label order (e.g. ``{"ETT": 3, "NGT": 4, "CVC": 3}``).
    """

    def __init__(self, in_features: int, groups: Mapping[str, int]) -> None:
        super().__init__()
        self.groups = dict(groups)
        self.heads = nn.ModuleDict({name: nn.Linear(in_features, n) for name, n in self.groups.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.heads[name](x) for name in self.groups], dim=1)


class OrdinalHead(nn.Module):
    """CORAL-style ordinal head: one shared weight vector and K-1 biases give K-1 cumulative logits.

    Output ``(B, K-1)``: column ``k`` is the logit of ``P(grade > k)``. Sharing the weight keeps the K-1 binary
    tasks rank-consistent (their probabilities can only decrease with k); the predicted grade is the number of
    columns with probability above 0.5 (`ordinal_decode`).

    Args:
        in_features: Width of the pooled features.
        num_classes: Number of grades K (at least 2).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 1, bias=False)
        # decreasing start biases so the initial cumulative probabilities are already ordered
        self.bias = nn.Parameter(torch.linspace(1.0, -1.0, num_classes - 1) if num_classes > 2 else torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.bias


def ordinal_decode(logits: torch.Tensor) -> torch.Tensor:
    """Grades ``(B,)`` from cumulative ordinal logits ``(B, K-1)``: the count of ``P(grade > k) > 0.5``."""
    return (logits > 0).sum(dim=1)


def build_head(
    in_features: int,
    num_classes: int,
    heads: Mapping[str, int] | str | None = None,
    head: str = "linear",
) -> tuple[nn.Module, int, dict[str, int] | None]:
    """The head module for pooled features, its number of outputs and the label groups it serves.

    Args:
        in_features: Width of the pooled features.
        num_classes: Number of classes (labels, or grades for an ordinal head).
        heads: Label groups (name -> size, summing to ``num_classes``), or ``"single"``/None for one head.
        head: ``"linear"`` or ``"ordinal"``.

    Returns:
        ``(module, num_outputs, groups)``.

    Raises:
        UsageError: For sizes that do not add up or an unknown head kind.
    """
    if isinstance(heads, str):
        if heads in ("single", "linear", ""):
            heads = None
        elif heads == "ordinal":
            heads, head = None, "ordinal"
        else:
            raise UsageError(f"unknown heads '{heads}'", hint="use 'single', 'ordinal' or a mapping {group: size}")
    if head not in ("linear", "ordinal"):
        raise UsageError(f"unknown head '{head}'", hint="use head='linear' or head='ordinal'")
    if head == "ordinal":
        if heads:
            raise UsageError("an ordinal head cannot be combined with label groups", hint="drop heads= or head=")
        if num_classes < 2:
            raise UsageError(f"an ordinal head needs at least 2 grades, got num_classes={num_classes}")
        return OrdinalHead(in_features, num_classes), num_classes - 1, None
    if heads:
        groups = {str(k): int(v) for k, v in dict(heads).items()}
        bad = {k: v for k, v in groups.items() if v < 1}
        if bad:
            raise UsageError(f"label groups need at least one output each, got {bad}")
        if sum(groups.values()) != num_classes:
            raise UsageError(
                f"label groups {groups} give {sum(groups.values())} outputs but num_classes={num_classes}",
                hint="num_classes must be the sum of the group sizes",
            )
        return GroupHeads(in_features, groups), num_classes, groups
    return nn.Linear(in_features, num_classes), num_classes, None


class MedkitClassifier(nn.Module):
    """Feature extractor + dropout + head; ``forward(x)`` returns logits ``(B, num_outputs)``.

    Args:
        backbone: Module mapping ``(B, C, H, W)`` to pooled features ``(B, num_features)``.
        num_features: Width of the pooled features.
        num_classes: Number of classes (or grades).
        heads: Label groups, ``"single"`` or None (see `build_head`).
        head: ``"linear"`` or ``"ordinal"``.
        drop_rate: Dropout probability on the pooled features.
        info: Extra facts recorded in ``medkit_info`` (registry name, architecture, creation arguments).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        *,
        num_classes: int,
        heads: Mapping[str, int] | str | None = None,
        head: str = "linear",
        drop_rate: float = 0.0,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = int(num_features)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head, num_outputs, groups = build_head(self.num_features, num_classes, heads, head)
        kind = "ordinal" if isinstance(self.head, OrdinalHead) else "linear"
        self.medkit_info: dict[str, Any] = {
            **dict(info or {}),
            "num_classes": num_classes,
            "num_outputs": num_outputs,
            "num_features": self.num_features,
            "head": kind,
            "heads": groups,
            "drop_rate": float(drop_rate),
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` (for embeddings, duplicate search, sequence models)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


# ---------------------------------------------------------------------------------------------------- checks
def _check_common(name: str, num_classes: Any, in_chans: Any, drop_rate: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise UsageError(f"model '{name}': in_chans must be a positive integer, got {in_chans!r}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise UsageError(f"model '{name}': drop_rate must be in [0, 1), got {drop_rate!r}")


# ---------------------------------------------------------------------------------------------------- timm
def _hub_endpoint_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens; huggingface_hub otherwise retries for most of a minute."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hf_offline(enabled: bool) -> Iterator[None]:
    """Force huggingface_hub to the local cache (it reads this flag at call time), restoring it afterwards."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


_OFFLINE_ERRORS = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "URLError",
    "gaierror",
    "TimeoutError",
    "ReadTimeout",
}


def _is_offline_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(cls.__name__ in _OFFLINE_ERRORS for cls in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _hf_offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _create_timm(name: str, timm_name: str, *, in_chans: int, pretrained: bool, **kw: Any) -> nn.Module:
    import timm

    if not pretrained:
        try:
            return timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans, **kw)
        except TypeError as exc:
            raise UsageError(f"model '{name}': {exc}", hint="remove the option the model does not take") from exc
    # an unreachable hub makes huggingface_hub retry for most of a minute: check once, then use the cache only
    force_offline = not _hf_offline_mode() and not _hub_reachable(_hub_endpoint_host())
    try:
        with _hf_offline(force_offline):
            return timm.create_model(timm_name, pretrained=True, num_classes=0, in_chans=in_chans, **kw)
    except TypeError as exc:
        raise UsageError(f"model '{name}': {exc}", hint="remove the option the model does not take") from exc
    except Exception as exc:
        if "No pretrained weights" in str(exc):
            raise UsageError(f"model '{name}' has no pretrained weights in timm", hint="drop --pretrained") from exc
        if force_offline or _is_offline_error(exc):
            raise OfflineError(
                f"pretrained weights for {name} could not be downloaded: no network",
                hint="use --weights FILE with a local .pth/.safetensors, or run once with internet to fill the "
                "cache ~/.cache/huggingface",
            ) from exc
        raise MedkitError(
            f"pretrained weights for {name} could not be loaded: {type(exc).__name__}: {exc}",
            hint="use --weights FILE with a local .pth/.safetensors",
        ) from exc


def build_timm_classifier(
    name: str,
    timm_name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    heads: Mapping[str, int] | str | None = None,
    head: str = "linear",
    drop_rate: float = 0.0,
    weights: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> MedkitClassifier:
    """A timm backbone (pooled features, ``num_classes=0``) with a medkit head.

    Args:
        name: Registry name, recorded in ``medkit_info`` and used in messages.
        timm_name: timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        num_classes: Number of classes (sum of the label groups; grades for an ordinal head).
        in_chans: Input channels; timm adapts pretrained first-layer weights when it is not 3.
        pretrained: Download timm's pretrained weights (Hugging Face hub; cached in ~/.cache/huggingface).
        heads: Label groups or ``"single"`` (see `build_head`).
        head: ``"linear"`` or ``"ordinal"``.
        drop_rate: Dropout on the pooled features.
        weights: Local state dict loaded after construction (see `load_weights`).
        **kw: Passed to ``timm.create_model`` (``drop_path_rate``, ``global_pool``, ...).

    Returns:
        The model; ``model.medkit_info`` records how it was built.

    Raises:
        UsageError: For invalid sizes or options. OfflineError: When pretrained weights cannot be downloaded.
    """
    _check_common(name, num_classes, in_chans, drop_rate)
    backbone = _create_timm(name, timm_name, in_chans=in_chans, pretrained=bool(pretrained), **kw)
    create_kwargs = {"num_classes": num_classes, "in_chans": in_chans, "heads": heads, "head": head}
    create_kwargs.update({"drop_rate": drop_rate, **kw})
    model = MedkitClassifier(
        backbone,
        backbone.num_features,
        num_classes=num_classes,
        heads=heads,
        head=head,
        drop_rate=drop_rate,
        info={
            "name": name,
            "backbone": timm_name,
            "in_chans": in_chans,
            "pretrained": bool(pretrained),
            "weights": str(weights) if weights else None,
            "pretrained_cfg": _pretrained_facts(backbone),
            "create_kwargs": create_kwargs,
        },
    )
    if weights:
        load_weights(model, weights)
    return model


def build_cifar_resnet(
    name: str,
    timm_name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> MedkitClassifier:
    """A timm ResNet with a CIFAR-style stem (3x3 stride-1 conv, no max-pool) for 28-64 px images.

    This is the ResNet of the MedMNIST v2 benchmark (Yang et al., Sci Data 2023, "ResNet-18 (28)"): timm's
    ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) shrinks a 28 px image to 7 px before the first stage,
    while this stem keeps 28 px there, so the four stages see 28, 14, 7 and 4 px. The stages, pooling and the
    medkit head are timm's and medkit's as for the other curated models.

    Args:
        name: Registry name.
        timm_name: timm ResNet architecture (``resnet18``, ``resnet50``).
        num_classes: Number of classes.
        in_chans: Input channels of the new stem.
        pretrained: Load timm's ImageNet weights into the stages; the stem is always new (its 7x7 kernel does not
            fit a 3x3 one), so this is a partial transfer.
        weights: Local state dict loaded after construction (a state dict of this model loads fully).
        **kw: As `build_timm_classifier` (``heads``, ``head``, ``drop_rate``, ``drop_path_rate``, ...).

    Returns:
        The model; ``medkit_info["stem"]`` is ``"cifar"``.

    Raises:
        UsageError: For invalid sizes or options, or a timm architecture without ``conv1``/``maxpool``.
    """
    # the paper's ResNet does not zero the last batch-norm of each block (timm does by default)
    kw.setdefault("zero_init_last", False)
    model = build_timm_classifier(
        name, timm_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw
    )
    backbone = model.backbone
    if not isinstance(getattr(backbone, "conv1", None), nn.Conv2d) or not hasattr(backbone, "maxpool"):
        raise UsageError(f"model '{name}': timm '{timm_name}' has no conv1/maxpool stem to replace")
    width = backbone.conv1.out_channels
    # a fresh conv with PyTorch's default init: no pretrained 3x3 kernel exists to start from
    backbone.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    backbone.maxpool = nn.Identity()
    model.medkit_info["stem"] = "cifar"
    model.medkit_info["weights"] = str(weights) if weights else None
    if weights:
        load_weights(model, weights)
    return model


def _pretrained_facts(backbone: nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "hf_hub_id", "tag")
    return {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]) for k in keys if k in cfg}


# ---------------------------------------------------------------------------------------------------- baselines
def build_baseline_classifier(
    name: str,
    class_name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    heads: Mapping[str, int] | str | None = None,
    head: str = "linear",
    drop_rate: float = 0.0,
    weights: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> MedkitClassifier:
    """A small baseline feature extractor (`medkit.models._baselines`) with a medkit head.

    Raises:
        UsageError: With ``pretrained=True`` (baselines have no pretrained weights) or an unknown option.
    """
    from medkit.models import _baselines

    _check_common(name, num_classes, in_chans, drop_rate)
    if pretrained:
        raise UsageError(f"model '{name}' has no pretrained weights", hint="drop --pretrained or use --weights FILE")
    try:
        backbone = getattr(_baselines, class_name)(in_chans=in_chans, **kw)
    except TypeError as exc:
        raise UsageError(f"model '{name}': {exc}", hint="remove the option the model does not take") from exc
    create_kwargs = {"num_classes": num_classes, "in_chans": in_chans, "heads": heads, "head": head}
    create_kwargs.update({"drop_rate": drop_rate, **kw})
    model = MedkitClassifier(
        backbone,
        backbone.num_features,
        num_classes=num_classes,
        heads=heads,
        head=head,
        drop_rate=drop_rate,
        info={
            "name": name,
            "backbone": name,
            "in_chans": in_chans,
            "pretrained": False,
            "weights": str(weights) if weights else None,
            "create_kwargs": create_kwargs,
        },
    )
    if weights:
        load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------------------------------- weights
_NUMPY_DATA_GLOBALS = {"_reconstruct", "ndarray", "dtype", "scalar"}


def _numpy_data_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module.split(".")[0] == "numpy" and (attr in _NUMPY_DATA_GLOBALS or module == "numpy.dtypes")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, also for training checkpoints that carry numpy arrays (RNG states).

    Only numpy array and dtype reconstruction is allowed on top of torch's safe set; any other global in the
    file still refuses to load, so a weights file can never run code.
    """
    import importlib
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if not names or not all(_numpy_data_global(n) for n in names):
            raise
        import numpy as np

        allowed = [getattr(importlib.import_module(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
        # dtype classes (numpy.dtypes.UInt32DType, ...) are not listed by the scan but rebuilt by numpy.dtype
        allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist", hint="check the --weights path")
    suffix = path.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise DataError(
            f"weights file {path} has an unknown suffix '{suffix}'",
            hint="use a state dict saved as .pth/.pt/.bin (torch.save) or .safetensors",
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = _torch_load(path)
    except Exception as exc:
        raise DataError(
            f"weights file {path} could not be read: {type(exc).__name__}: {exc}",
            hint="save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file",
        ) from exc
    # training checkpoints nest the state dict (medkit: "model"; Lightning: "state_dict"; others: "model_state_dict")
    for key in ("model", "state_dict", "model_state_dict", "model_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise DataError(f"weights file {path} does not hold a state dict", hint="save model.state_dict()")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise DataError(f"weights file {path} holds no tensors", hint="save model.state_dict()")
    return state


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel / torch.compile wrappers
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_weights(model: MedkitClassifier, path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Load a local state dict into a medkit model, adapting the first convolution to ``in_chans``.

    Keys may be a medkit model's own (``backbone.*``, ``head.*``) or a bare backbone's (a timm state dict, whose
    classifier is then ignored). Tensors whose shape differs are skipped, except a 4-D convolution weight whose
    input channels differ: it is adapted like timm does for pretrained weights (sum for 1 channel, repeated and
    rescaled otherwise). Missing and unused keys are reported on stderr.

    Args:
        model: The model to fill (built by a MODELS factory).
        path: .pth/.pt/.bin/.ckpt (``torch.load(weights_only=True)``) or .safetensors file.

    Returns:
        ``{"loaded": [...], "adapted": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.

    Raises:
        DataError: When the file is missing or unreadable, or no tensor matched the model.
    """
    from timm.models import adapt_input_conv

    path = Path(path)
    state = {_strip(k): v for k, v in _read_state_dict(path).items()}
    own = model.state_dict()
    medkit_layout = any(k.startswith(("backbone.", "head.")) for k in state)
    report: dict[str, list[str]] = {"loaded": [], "adapted": [], "missing": [], "unexpected": [], "mismatched": []}
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = key if medkit_layout else f"backbone.{key}"
        if target not in own:
            report["unexpected"].append(key)
            continue
        want = own[target]
        if value.shape == want.shape:
            new[target] = value.to(want.dtype)
            report["loaded"].append(target)
        elif (
            value.ndim == 4 and want.ndim == 4 and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]
        ):
            new[target] = adapt_input_conv(want.shape[1], value.float(), base_chans=value.shape[1]).to(want.dtype)
            report["adapted"].append(target)
        else:
            report["mismatched"].append(f"{key} {tuple(value.shape)} vs {tuple(want.shape)}")
    if not new:
        raise DataError(
            f"weights file {path} matched none of the parameters of model '{model.medkit_info.get('name')}'",
            hint="the file must come from the same architecture (check the model name and in_chans)",
        )
    report["missing"] = [k for k in own if k not in new]
    model.load_state_dict(new, strict=False)
    info(
        f"weights {path.name}: {len(report['loaded'])} tensors loaded"
        + (f", first conv adapted to {model.medkit_info.get('in_chans')} channels" if report["adapted"] else "")
    )
    if report["missing"]:
        warn(f"weights {path.name}: {len(report['missing'])} model tensors not in the file: {_few(report['missing'])}")
    if report["unexpected"]:
        warn(f"weights {path.name}: {len(report['unexpected'])} tensors unused: {_few(report['unexpected'])}")
    if report["mismatched"]:
        warn(f"weights {path.name}: {len(report['mismatched'])} tensors skipped (shape): {_few(report['mismatched'])}")
    return report


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n})" if len(items) > n else "")

"""OPTIMIZERS and SCHEDULERS: torch, pytorch-optimizer and timm.optim behind one registry, and the `Schedule` wrapper.

Factory signatures::

    OPTIMIZERS: f(params, *, lr: float, weight_decay: float = 0.0, **kw) -> torch.optim.Optimizer
    SCHEDULERS: f(optimizer, *, epochs: int, steps_per_epoch: int, **kw) -> medkit.optim.Schedule

``params`` is what torch optimizers take (parameters or param-group dicts); an ``nn.Module`` is split with
`param_groups` (no weight decay on biases and normalisation weights). Every built-in optimizer accepts a
``total_steps`` keyword (the engine passes ``epochs * steps_per_epoch``); only the Demon entries (flag
``needs_total_steps``) use it. ``timm/<name>`` delegates to ``timm.optim.create_optimizer_v2``.

This module imports neither torch nor timm: they load when an optimizer or schedule is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medkit.registries import OPTIMIZERS, SCHEDULERS

__all__ = ["Schedule", "param_groups", "DemonAdam", "DemonSGD", "demon_beta"]

_LAZY = {
    "Schedule": "medkit.optim._schedule",
    "param_groups": "medkit.optim._optimizers",
    "DemonAdam": "medkit.optim._optimizers",
    "DemonSGD": "medkit.optim._optimizers",
    "demon_beta": "medkit.optim._optimizers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medkit.optim' has no attribute {name!r}")


# (name, function in medkit.optim._optimizers, description, flags)
_OPTIMIZERS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("adam", "adam", "Adam (torch.optim.Adam; betas, eps, amsgrad)", {"source_lib": "torch"}),
    ("adamw", "adamw", "AdamW: Adam with decoupled weight decay (torch.optim.AdamW)", {"source_lib": "torch"}),
    ("sgd", "sgd", "SGD with momentum 0.9 (nesterov=True for Nesterov momentum)", {"source_lib": "torch"}),
    (
        "adabelief",
        "adabelief",
        "AdaBelief: Adam stepping by the belief in the gradient",
        {"source_lib": "pytorch_optimizer"},
    ),
    ("yogi", "yogi", "Yogi: Adam with additive second-moment updates", {"source_lib": "pytorch_optimizer"}),
    ("adabound", "adabound", "AdaBound: Adam bounded towards SGD (final_lr)", {"source_lib": "pytorch_optimizer"}),
    (
        "demon_adam",
        "demon_adam",
        "Adam with Demon decaying momentum (beta1 -> 0 over total_steps)",
        {"needs_total_steps": True},
    ),
    (
        "demon_sgd",
        "demon_sgd",
        "SGD with Demon decaying momentum (momentum -> 0 over total_steps)",
        {"needs_total_steps": True},
    ),
]


def _optimizer_factory(func: str, description: str) -> Callable[..., Any]:
    def factory(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> Any:
        from medkit.optim import _optimizers

        return getattr(_optimizers, func)(params, lr=lr, weight_decay=weight_decay, **kw)

    factory.__name__ = func
    factory.__doc__ = description
    return factory


for _name, _func, _desc, _flags in _OPTIMIZERS:
    OPTIMIZERS.register(_name, _optimizer_factory(_func, _desc), description=_desc, **_flags)


def _resolve_timm_optimizer(rest: str) -> Callable[..., Any]:
    import timm.optim

    if rest not in timm.optim.list_optimizers():
        raise KeyError(rest)

    def factory(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> Any:
        from medkit.optim._optimizers import timm_optimizer

        return timm_optimizer(rest, params, lr=lr, weight_decay=weight_decay, **kw)

    return factory


def _list_timm_optimizers(pattern: str) -> list[str]:
    import fnmatch

    import timm.optim

    return [n for n in timm.optim.list_optimizers() if fnmatch.fnmatchcase(n, pattern or "*")]


OPTIMIZERS.add_prefix(
    "timm",
    resolve=_resolve_timm_optimizer,
    list_names=_list_timm_optimizers,
    description="any timm.optim optimizer (e.g. timm/lamb, timm/lion, timm/madgrad) via create_optimizer_v2",
)


# (name, function in medkit.optim._schedule, description, flags, aliases)
_SCHEDULERS: list[tuple[str, str, str, dict[str, Any], tuple[str, ...]]] = [
    ("none", "constant", "Constant learning rate", {"interval": "none"}, ("constant",)),
    (
        "step",
        "step",
        "Step decay by gamma at milestones (epochs or fractions of the run) or every step_size epochs",
        {"interval": "epoch"},
        ("multistep",),
    ),
    (
        "cosine",
        "cosine",
        "Cosine decay to min_lr per batch, after linear warmup (warmup_epochs / warmup_steps)",
        {"interval": "batch"},
        (),
    ),
    (
        "onecycle",
        "onecycle",
        "One-cycle: warm up to max_lr then anneal, per batch (torch OneCycleLR)",
        {"interval": "batch"},
        (),
    ),
    (
        "plateau",
        "plateau",
        "Reduce on plateau of the validation metric (mode max or min, factor, patience)",
        {"interval": "metric", "needs_metric": True},
        (),
    ),
]


def _schedule_factory(func: str, description: str) -> Callable[..., Any]:
    def factory(optimizer: Any, *, epochs: int, steps_per_epoch: int, **kw: Any) -> Any:
        from medkit.optim import _schedule

        return getattr(_schedule, func)(optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch, **kw)

    factory.__name__ = func
    factory.__doc__ = description
    return factory


for _name, _func, _desc, _flags, _aliases in _SCHEDULERS:
    SCHEDULERS.register(_name, _schedule_factory(_func, _desc), description=_desc, aliases=_aliases, **_flags)

del _name, _func, _desc, _flags, _aliases

"""Optimizer factories: torch built-ins, pytorch-optimizer (AdaBelief, Yogi, AdaBound), Demon, timm.optim."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from medkit.errors import UsageError

__all__ = [
    "param_groups",
    "demon_beta",
    "DemonAdam",
    "DemonSGD",
    "adam",
    "adamw",
    "sgd",
    "adabelief",
    "yogi",
    "adabound",
    "demon_adam",
    "demon_sgd",
    "timm_optimizer",
]


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True) -> list[dict[str, Any]]:
    """Parameter groups with weight decay on weights only (biases and normalisation weights get none).

    Decaying a bias or a norm scale pulls it towards 0 for no regularisation benefit, which is why torchvision
    and timm train without it. Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: The model.
        weight_decay: Decay for the weight group.
        no_decay_norm_bias: Put 1-D parameters (biases, norm scales) in a group with ``weight_decay=0``; when
            False every parameter gets ``weight_decay``.

    Returns:
        One or two groups (empty groups are dropped); each holds ``params`` and ``weight_decay``.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if no_decay_norm_bias and (param.ndim <= 1 or name.endswith(".bias")):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _params(params: Any, weight_decay: float) -> Any:
    if isinstance(params, nn.Module):
        return param_groups(params, weight_decay)
    params = list(params)
    if not params:
        raise UsageError("the optimizer got no parameters", hint="pass model.parameters() or param_groups(model, wd)")
    return params


def _check_lr(name: str, lr: Any, weight_decay: Any) -> None:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise UsageError(f"optimizer '{name}': lr must be a positive number, got {lr!r}")
    if not isinstance(weight_decay, int | float) or weight_decay < 0:
        raise UsageError(f"optimizer '{name}': weight_decay must be >= 0, got {weight_decay!r}")


def _build(name: str, cls: Callable[..., torch.optim.Optimizer], params: Any, lr: float, wd: float, **kw: Any) -> Any:
    _check_lr(name, lr, wd)
    if not isinstance(cls, type) or not issubclass(cls, DemonAdam | DemonSGD):
        kw.pop("total_steps", None)  # accepted by every built-in so the engine can pass it uniformly
    try:
        return cls(_params(params, wd), lr=lr, weight_decay=wd, **kw)
    except TypeError as exc:
        raise UsageError(f"optimizer '{name}': {exc}", hint="remove the option this optimizer does not take") from exc
    except ValueError as exc:
        raise UsageError(f"optimizer '{name}': {exc}") from exc


# ---------------------------------------------------------------------------------------------------- Demon
def demon_beta(beta_init: float, step: int, total_steps: int) -> float:
    """Demon momentum at ``step`` of ``total_steps`` (Chen et al. 2019, "Demon: Decaying Momentum").

    ``beta_t = beta_init * (1 - t/T) / ((1 - beta_init) + beta_init * (1 - t/T))``: ``beta_init`` at t = 0,
    decaying to 0 at t = T (and staying 0 after). It decays the total contribution of a gradient to all future
    updates, ``beta / (1 - beta)``, linearly to 0.
    """
    frac = 1.0 - min(max(step, 0), total_steps) / total_steps
    denom = (1.0 - beta_init) + beta_init * frac
    return beta_init * frac / denom if denom > 0 else 0.0


def _check_total_steps(name: str, total_steps: Any) -> int:
    if total_steps is None:
        raise UsageError(
            f"optimizer '{name}' needs total_steps (epochs * steps_per_epoch)",
            hint=f"OPTIMIZERS.create('{name}', params, lr=..., total_steps=N)",
        )
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise UsageError(f"optimizer '{name}': total_steps must be a positive integer, got {total_steps!r}")
    return total_steps


class DemonAdam(torch.optim.Adam):
    """torch Adam whose beta1 follows the Demon schedule: set from `demon_beta` before every step.

    The schedule position is kept in each param group (``demon_step``), so it survives
    ``state_dict()`` / ``load_state_dict()`` with the optimizer.

    Args:
        params: Parameters or param groups.
        total_steps: Steps T over which beta1 decays to 0.
        lr: Learning rate.
        betas: ``(beta1_init, beta2)``.
        **kw: Other torch.optim.Adam options (eps, weight_decay, amsgrad, ...).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        total_steps: int,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        **kw: Any,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, **kw)
        self.total_steps = _check_total_steps("demon_adam", total_steps)
        for group in self.param_groups:
            group.setdefault("beta_init", float(group["betas"][0]))
            group.setdefault("demon_step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        for group in self.param_groups:
            beta_init = group.setdefault("beta_init", float(group["betas"][0]))
            t = group.setdefault("demon_step", 0)
            group["betas"] = (demon_beta(beta_init, t, self.total_steps), group["betas"][1])
            group["demon_step"] = t + 1
        return super().step(closure)


class DemonSGD(torch.optim.SGD):
    """torch SGD (momentum, no dampening) whose momentum follows the Demon schedule, set before every step.

    Args:
        params: Parameters or param groups.
        total_steps: Steps T over which the momentum decays to 0.
        lr: Learning rate.
        momentum: Initial momentum.
        **kw: Other torch.optim.SGD options (weight_decay, nesterov).
    """

    def __init__(
        self, params: Iterable[Any], *, total_steps: int, lr: float = 1e-2, momentum: float = 0.9, **kw: Any
    ) -> None:
        if not 0 < momentum < 1:
            raise UsageError(f"optimizer 'demon_sgd': momentum must be in (0, 1), got {momentum!r}")
        super().__init__(params, lr=lr, momentum=momentum, **kw)
        self.total_steps = _check_total_steps("demon_sgd", total_steps)
        for group in self.param_groups:
            group.setdefault("beta_init", float(group["momentum"]))
            group.setdefault("demon_step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        for group in self.param_groups:
            beta_init = group.setdefault("beta_init", float(group["momentum"]))
            t = group.setdefault("demon_step", 0)
            group["momentum"] = demon_beta(beta_init, t, self.total_steps)
            group["demon_step"] = t + 1
        return super().step(closure)


# ---------------------------------------------------------------------------------------------------- factories
def adam(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """Adam (torch.optim.Adam; betas, eps, amsgrad)."""
    return _build("adam", torch.optim.Adam, params, lr, weight_decay, **kw)


def adamw(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay (torch.optim.AdamW)."""
    return _build("adamw", torch.optim.AdamW, params, lr, weight_decay, **kw)


def sgd(
    params: Any, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, nesterov: bool = False, **kw: Any
) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (nesterov=True for Nesterov momentum)."""
    return _build("sgd", torch.optim.SGD, params, lr, weight_decay, momentum=momentum, nesterov=nesterov, **kw)


def _pytorch_optimizer(name: str) -> Callable[..., torch.optim.Optimizer]:
    import pytorch_optimizer

    return {
        "adabelief": pytorch_optimizer.AdaBelief,
        "yogi": pytorch_optimizer.Yogi,
        "adabound": pytorch_optimizer.AdaBound,
    }[name]


def adabelief(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """AdaBelief (pytorch-optimizer; decoupled weight decay by default)."""
    return _build("adabelief", _pytorch_optimizer("adabelief"), params, lr, weight_decay, **kw)


def yogi(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """Yogi (pytorch-optimizer)."""
    return _build("yogi", _pytorch_optimizer("yogi"), params, lr, weight_decay, **kw)


def adabound(params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """AdaBound (pytorch-optimizer; final_lr, gamma)."""
    return _build("adabound", _pytorch_optimizer("adabound"), params, lr, weight_decay, **kw)


def demon_adam(
    params: Any, *, lr: float, weight_decay: float = 0.0, total_steps: int | None = None, **kw: Any
) -> torch.optim.Optimizer:
    """Adam with Demon decaying momentum (needs total_steps)."""
    steps = _check_total_steps("demon_adam", total_steps)
    return _build("demon_adam", DemonAdam, params, lr, weight_decay, total_steps=steps, **kw)


def demon_sgd(
    params: Any, *, lr: float, weight_decay: float = 0.0, total_steps: int | None = None, **kw: Any
) -> torch.optim.Optimizer:
    """SGD with Demon decaying momentum (needs total_steps)."""
    steps = _check_total_steps("demon_sgd", total_steps)
    return _build("demon_sgd", DemonSGD, params, lr, weight_decay, total_steps=steps, **kw)


def timm_optimizer(opt: str, params: Any, *, lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
    """Any timm.optim optimizer through ``timm.optim.create_optimizer_v2`` (a model gets timm's no-decay split)."""
    from timm.optim import create_optimizer_v2

    _check_lr(f"timm/{opt}", lr, weight_decay)
    kw.pop("total_steps", None)
    target = params if isinstance(params, nn.Module) else _params(params, weight_decay)
    try:
        return create_optimizer_v2(target, opt=opt, lr=lr, weight_decay=weight_decay, **kw)
    except TypeError as exc:
        raise UsageError(
            f"optimizer 'timm/{opt}': {exc}", hint="remove the option this optimizer does not take"
        ) from exc

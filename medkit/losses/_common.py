"""Helpers shared by the loss modules: option checking, entry flags, target shapes, weight penalties."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from medkit.errors import UsageError
from medkit.registry import keyword_options

__all__ = [
    "FLAG_NAMES",
    "CONTEXT_OPTIONS",
    "flags",
    "checked_options",
    "match_target",
    "as_vector",
    "penalised_parameters",
    "weight_penalty",
]

F = TypeVar("F", bound=Callable[..., Any])

FLAG_NAMES = ("multilabel", "multiclass", "ordinal", "regression", "needs_indices", "needs_model")

# facts about the training data the engine may pass to any loss; a factory that has no use for one ignores it
CONTEXT_OPTIONS = frozenset({"label_prevalence", "num_classes", "num_examples"})


def flags(**on: bool) -> dict[str, bool]:
    """Every entry flag spelled out (False unless named), so the engine can read any flag without a default."""
    unknown = set(on) - set(FLAG_NAMES)
    if unknown:
        raise ValueError(f"unknown loss flags {sorted(unknown)}")
    return {name: bool(on.get(name, False)) for name in FLAG_NAMES}


def checked_options(kind: str) -> Callable[[F], F]:
    """Turn an unknown keyword option into a `UsageError` listing the valid ones (instead of a `TypeError`).

    The context options (`CONTEXT_OPTIONS`) are dropped when the factory does not declare them, so the engine
    can pass the same training-set facts to every loss.

    Args:
        kind: Word used in the message (``"loss"``).
    """
    return keyword_options(kind, ignore=CONTEXT_OPTIONS, doc="docs/losses-metrics.md")  # type: ignore[return-value]


def match_target(logits: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """The target as float with the logits' shape; (B,) against (B, 1) and the reverse are accepted.

    Raises:
        UsageError: When the element counts differ (a wrong number of labels or a wrong head).
    """
    if target.shape != logits.shape:
        if target.numel() != logits.numel() or target.shape[:1] != logits.shape[:1]:
            raise UsageError(
                f"loss '{name}': target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}",
                hint="the model needs one output per label column; check --labels and the model's num_classes",
            )
        target = target.reshape(logits.shape)
    return target.to(torch.float32)


def as_vector(values: float | Sequence[float], name: str, option: str) -> torch.Tensor:
    """A float32 tensor from a number or a list, rejecting NaN and negative values."""
    vec = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if not torch.isfinite(vec).all() or (vec < 0).any():
        raise UsageError(f"loss '{name}': {option} must be finite and >= 0, got {list(vec.tolist())}")
    return vec


def _head_module(model: nn.Module) -> nn.Module:
    getter = getattr(model, "get_classifier", None)  # timm models name their head
    candidates = [getter() if callable(getter) else None, getattr(model, "head", None)]  # medkit models: .head
    for head in candidates:
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    last: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise UsageError(
            "head_only=True but the model has no get_classifier(), no .head and no nn.Linear layer",
            hint="use head_only=False to penalise every weight",
        )
    return last


def penalised_parameters(model: nn.Module, head_only: bool = False) -> Iterator[torch.Tensor]:
    """The weights a penalty applies to: matrices and kernels, never biases or normalisation scales.

    The rule is timm's weight-decay rule (a parameter with one dimension is a bias or a norm scale), so the
    penalty and weight decay agree on what counts as a weight.

    Args:
        model: The model being trained.
        head_only: Only the classifier head: ``model.get_classifier()`` (timm), else ``model.head`` (medkit
            models, every label group's head), else the last ``nn.Linear``.
    """
    source = _head_module(model) if head_only else model
    for param in source.parameters():
        if param.requires_grad and param.ndim > 1:
            yield param


def weight_penalty(model: nn.Module, l1: float, l2: float, head_only: bool = False) -> torch.Tensor:
    """``l1 * sum|w| + l2 * sum w**2`` over `penalised_parameters`."""
    total: torch.Tensor | None = None
    for param in penalised_parameters(model, head_only):
        term = param.new_zeros((), dtype=torch.float32)
        if l1:
            term = term + l1 * param.float().abs().sum()
        if l2:
            term = term + l2 * param.float().pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise UsageError("the weight penalty found no weights to penalise", hint="check head_only and requires_grad")
    return total

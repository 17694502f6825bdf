"""Loss terms of the sequence model (`medkit.models.sequence`), registered in LOSS_TERMS, weighted by ``--aux-loss``.

Every term reads one pass of the model (a `medkit.models.sequence.SeqOutput`), the per-slice targets ``(B, T, L)``
and the padding mask ``valid (B, T)``, and returns a scalar; padded slices never count. A factory follows::

    f(*, num_labels: int, embed_dim: int, hidden_size: int, context_size: int, **kw) -> torch.nn.Module

and ignores the sizes it has no use for. Terms with parameters (the count head, the label embeddings, the CPC
predictors) are trained with the model and saved in its checkpoint. `MultitaskLoss` sums the weighted terms.

| term | what it adds |
|---|---|
| ``main`` | the per-slice loss of the head's logits (a LOSSES name, ``asl`` by default) |
| ``aux`` | the same loss on the encoder head's logits: classification from the backbone features alone |
| ``count`` | cross-entropy of a linear head over 0..L: how many labels a slice has |
| ``embed`` | distance-based classification: ``logit_j = b_j - scale * ||h - e_j||^2`` against learnt label embeddings |
| ``cpc`` | contrastive predictive coding: InfoNCE of the slice k steps ahead among the slices of its series |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medkit.errors import UsageError
from medkit.registries import LOSS_TERMS, LOSSES
from medkit.registry import keyword_options

__all__ = [
    "SIZES",
    "MainTerm",
    "AuxTerm",
    "CountTerm",
    "EmbedTerm",
    "CpcTerm",
    "MultitaskLoss",
    "build_terms",
    "parse_term_weights",
]

#: The sizes the engine passes to every term factory; a factory that does not declare one ignores it.
SIZES = frozenset({"num_labels", "embed_dim", "hidden_size", "context_size", "label_prevalence"})


def _term(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return keyword_options("loss term", ignore=SIZES, doc="docs/sequence.md")(fn)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (a term with nothing to score this batch)."""
    return like.sum() * 0.0


class MainTerm(nn.Module):
    """A LOSSES loss on the per-slice logits of the real slices.

    Args:
        loss: The LOSSES module (``forward(logits (N, L), target (N, L))``).
        field: Which logits of the output: ``logits`` (the head) or ``aux_logits`` (the encoder head).
    """

    def __init__(self, loss: nn.Module, field: str = "logits") -> None:
        super().__init__()
        self.loss, self.field = loss, field

    def forward(self, out: Any, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = getattr(out, self.field)
        keep = valid.bool()
        if not keep.any():
            return _zero(logits)
        return self.loss(logits[keep], target[keep])


class AuxTerm(MainTerm):
    """`MainTerm` on the encoder head's logits (classification from the backbone features)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__(loss, field="aux_logits")


class CountTerm(nn.Module):
    """Cross-entropy of a linear head on the reader output over the number of positive labels (0..L) of a slice.

    Args:
        hidden_size: Width of the reader output.
        num_labels: L.
    """

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_size, num_labels + 1)

    def forward(self, out: Any, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid.bool()
        logits = self.head(out.hidden[keep])
        if not keep.any():
            return _zero(logits)
        counts = (target[keep] > 0.5).sum(dim=-1).long()
        return F.cross_entropy(logits.float(), counts)


class EmbedTerm(nn.Module):
    """Binary cross-entropy of distance logits ``b_j - scale * ||h - e_j||^2`` against learnt label embeddings.

    Args:
        hidden_size: Width of the reader output h (and of each label embedding e_j).
        num_labels: L.
        scale: Multiplies the squared distance (None: 1 / hidden_size, so logits stay O(1) at any width).
    """

    def __init__(self, hidden_size: int, num_labels: int, scale: float | None = None) -> None:
        super().__init__()
        self.embeddings = nn.Parameter(torch.randn(num_labels, hidden_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.scale = float(scale) if scale is not None else 1.0 / hidden_size

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Distance logits ``(N, L)`` of reader outputs ``(N, H)``."""
        d2 = (hidden.float()[:, None, :] - self.embeddings[None].float()).pow(2).sum(dim=-1)
        return self.bias - self.scale * d2

    def forward(self, out: Any, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid.bool()
        logits = self.logits(out.hidden[keep])
        if not keep.any():
            return _zero(logits)
        return F.binary_cross_entropy_with_logits(logits, target[keep].float())


class CpcTerm(nn.Module):
    """InfoNCE over future slice embeddings within a series (contrastive predictive coding, van den Oord 2018).

    For every real slice t and step k with t + k real, ``W_k c_t`` (c: the reader's causal context) should pick
    the embedding of slice t + k among the embeddings of every real slice of the same series; similarities are
    cosines divided by ``temperature``. The mean over all such (t, k) is returned.

    Args:
        context_size: Width of the context.
        embed_dim: Width of the slice embeddings.
        steps: How many slices ahead to predict (1..steps).
        temperature: Softmax temperature of the cosine similarities.
    """

    def __init__(self, context_size: int, embed_dim: int, steps: int = 1, temperature: float = 0.1) -> None:
        super().__init__()
        if steps < 1 or temperature <= 0:
            raise UsageError(f"loss term 'cpc': need steps >= 1 and temperature > 0, got {steps}, {temperature}")
        self.predictors = nn.ModuleList([nn.Linear(context_size, embed_dim, bias=False) for _ in range(steps)])
        self.temperature = float(temperature)

    def forward(self, out: Any, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        valid = valid.bool()
        z = F.normalize(out.embeddings.float(), dim=-1)  # (B, T, D)
        total, count = _zero(out.context), 0
        t_len = z.shape[1]
        for k, predictor in enumerate(self.predictors, start=1):
            if t_len <= k:
                break
            pred = F.normalize(predictor(out.context.float()), dim=-1)  # (B, T, D)
            scores = torch.einsum("btd,bsd->bts", pred, z) / self.temperature
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))  # candidates: real slices of the series
            anchors = valid[:, :-k] & valid[:, k:]  # (B, T-k)
            if not anchors.any():
                continue
            rows = scores[:, :-k][anchors]  # (N, T)
            goal = (torch.arange(t_len - k, device=z.device) + k).expand_as(anchors)[anchors]
            total = total + F.cross_entropy(rows, goal, reduction="sum")
            count += int(anchors.sum())
        return total / max(count, 1)


def _base_loss(name: str, label_prevalence: Sequence[float] | None, options: Mapping[str, Any] | None) -> nn.Module:
    entry = LOSSES.get(name)
    if not entry.flags.get("multilabel"):
        raise UsageError(f"loss '{name}' is not a multi-label loss", hint="the sequence terms need e.g. asl or bce")
    return LOSSES.create(name, label_prevalence=label_prevalence, **dict(options or {}))


@LOSS_TERMS.register("main")
@_term
def main(
    *,
    loss: str = "asl",
    loss_kwargs: Mapping[str, Any] | None = None,
    label_prevalence: Sequence[float] | None = None,
) -> nn.Module:
    """Per-slice loss of the sequence head (a LOSSES name; asl by default)."""
    return MainTerm(_base_loss(loss, label_prevalence, loss_kwargs))


@LOSS_TERMS.register("aux")
@_term
def aux(
    *,
    loss: str = "asl",
    loss_kwargs: Mapping[str, Any] | None = None,
    label_prevalence: Sequence[float] | None = None,
) -> nn.Module:
    """Auxiliary classification of each slice from the backbone features alone (the encoder's head)."""
    return AuxTerm(_base_loss(loss, label_prevalence, loss_kwargs))


@LOSS_TERMS.register("count")
@_term
def count(*, hidden_size: int, num_labels: int) -> nn.Module:
    """Number of positive labels of a slice: cross-entropy over 0..L from the reader output."""
    return CountTerm(hidden_size, num_labels)


@LOSS_TERMS.register("embed")
@_term
def embed(*, hidden_size: int, num_labels: int, scale: float | None = None) -> nn.Module:
    """Distance-based classification against learnable label embeddings (BCE of b_j - scale ||h - e_j||^2)."""
    return EmbedTerm(hidden_size, num_labels, scale)


@LOSS_TERMS.register("cpc")
@_term
def cpc(*, context_size: int, embed_dim: int, steps: int = 1, temperature: float = 0.1) -> nn.Module:
    """Contrastive predictive coding: InfoNCE of the embeddings 1..steps slices ahead within the series."""
    return CpcTerm(context_size, embed_dim, steps, temperature)


class MultitaskLoss(nn.Module):
    """The weighted sum of loss terms.

    Args:
        terms: Term name -> module.
        weights: Term name -> weight (terms with weight 0 are skipped).
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float(weights[k]) for k in terms}

    def forward(self, out: Any, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(total, {name: term value})``; the values stay tensors (read back by the caller when it logs)."""
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, term in self.terms.items():
            w = self.weights[name]
            if w == 0:
                continue
            value = term(out, target, valid)
            parts[name] = value.detach()
            total = w * value if total is None else total + w * value
        if total is None:
            raise UsageError("every loss term has weight 0", hint="give main a weight, e.g. --aux-loss main=1")
        return total, parts


def parse_term_weights(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, float]:
    """``["aux=0.5", "cpc=0.1"]`` (``--aux-loss``) or a mapping -> ``{"aux": 0.5, "cpc": 0.1}``, names checked.

    Raises:
        UsageError: A malformed item, a negative weight, or an unknown term (with a suggestion).
    """
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items or []:
            if "=" not in item:
                raise UsageError(f"--aux-loss expects NAME=WEIGHT, got '{item}'", hint="e.g. --aux-loss cpc=0.1")
            key, value = item.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    out: dict[str, float] = {}
    for key, value in pairs:
        LOSS_TERMS.get(key)  # unknown names fail here with "did you mean"
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--aux-loss {key}: weight '{value}' is not a number") from None
        if not w >= 0:
            raise UsageError(f"--aux-loss {key}: weight must be >= 0, got {value}")
        out[key] = w
    return out


def build_terms(
    weights: Mapping[str, float],
    *,
    num_labels: int,
    embed_dim: int,
    hidden_size: int,
    context_size: int,
    loss: str = "asl",
    loss_kwargs: Mapping[str, Any] | None = None,
    label_prevalence: Sequence[float] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultitaskLoss:
    """Every registered term named in ``weights`` (weight 0 included, so a later stage can switch it on with the
    same parameters), built with the model's sizes.

    Args:
        weights: Term name -> weight.
        num_labels: Labels per slice.
        embed_dim: Width of the slice embeddings.
        hidden_size: Width of the reader output.
        context_size: Width of the reader's causal context.
        loss: LOSSES name of ``main`` and ``aux``.
        loss_kwargs: Options of that loss (``--loss-arg``).
        label_prevalence: Per-label positive rates of the training slices.
        options: Term name -> extra factory options.
    """
    sizes = {"num_labels": num_labels, "embed_dim": embed_dim, "hidden_size": hidden_size}
    sizes["context_size"] = context_size
    terms = {}
    for name in weights:
        kw: dict[str, Any] = {**sizes, "label_prevalence": label_prevalence, **dict((options or {}).get(name, {}))}
        if name in ("main", "aux"):
            kw.setdefault("loss", loss)
            kw.setdefault("loss_kwargs", loss_kwargs)
        terms[name] = LOSS_TERMS.create(name, **kw)
    return MultitaskLoss(terms, weights)

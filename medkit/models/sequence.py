"""Sequence models for CT series: a CNN embeds each slice, a sequence reader reads the series, a head labels each slice.

``MODELS.create("seq/gru", num_classes=6, in_chans=3, backbone="resnet18")`` builds a `SequenceModel`:

1. the **encoder**, any MODELS entry (a timm backbone or a medkit baseline with its medkit head), turns each slice
   into pooled features: ``(B, T, C, H, W) -> (B, T, D)``; its own head gives the auxiliary per-slice logits;
2. the **reader**, a SEQ_READERS entry (``gru`` and ``lstm``: bidirectional RNNs; ``transformer``), reads the
   embeddings of a series under a padding mask: ``(B, T, D) -> (B, T, H)``;
3. a linear **head** gives per-slice logits ``(B, T, L)``.

A reader factory follows ``f(*, input_size: int, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0,
**kw) -> nn.Module`` whose ``forward(x, valid)`` takes ``x (B, T, input_size)`` and a boolean ``valid (B, T)`` (True
on real slices; padding only at the end of a series) and returns ``(hidden (B, T, out_size), context (B, T,
context_size))``; ``context`` at slice t may only depend on slices up to t (contrastive predictive coding predicts
the next slices from it). The module has the attributes ``out_size`` and ``context_size``. A plugin adds a reader
through the entry-point group ``medkit.seq_readers``; it is then built as ``seq/<name>``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkit.errors import UsageError
from medkit.registries import SEQ_READERS

__all__ = [
    "SeqOutput",
    "SequenceModel",
    "GruReader",
    "LstmReader",
    "TransformerReader",
    "build_sequence_model",
    "lengths_of",
    "mask_slices",
    "diversity_pairs",
    "DiversityPool",
    "transfer_diversity",
]


def lengths_of(valid: torch.Tensor) -> torch.Tensor:
    """Number of real slices per series ``(B,)`` from a padding mask ``(B, T)`` (True = real slice).

    Raises:
        UsageError: When a mask has a gap (padding must come after the last slice).
    """
    valid = valid.bool()
    lengths = valid.sum(dim=1)
    steps = torch.arange(valid.shape[1], device=valid.device)
    if not torch.equal(valid, steps[None, :] < lengths[:, None]):
        raise UsageError("a series padding mask must be True for the first slices and False after them")
    return lengths


class _RnnReader(nn.Module):
    """Bidirectional RNN over the real slices of each series (packed, so padding never enters the backward pass)."""

    rnn_class: type[nn.RNNBase] = nn.GRU

    def __init__(self, input_size: int, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise UsageError(f"reader: hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}")
        self.rnn = self.rnn_class(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.hidden_size = hidden_size
        self.out_size = 2 * hidden_size
        self.context_size = hidden_size  # the forward direction has seen slices up to t only

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        lengths = lengths_of(valid).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return hidden, hidden[..., : self.hidden_size]


class GruReader(_RnnReader):
    """Bidirectional GRU reader; output width 2 x hidden_size."""

    rnn_class = nn.GRU


class LstmReader(_RnnReader):
    """Bidirectional LSTM reader; output width 2 x hidden_size."""

    rnn_class = nn.LSTM


class TransformerReader(nn.Module):
    """Transformer encoder over the slices (sinusoidal slice positions, padding masked out of attention).

    Args:
        input_size: Width of the slice embeddings.
        hidden_size: Model width (divisible by ``heads``).
        num_layers: Encoder layers.
        dropout: Dropout inside the layers.
        heads: Attention heads.
    """

    def __init__(
        self, input_size: int, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0, heads: int = 4
    ) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1 or heads < 1 or hidden_size % heads:
            raise UsageError(
                f"reader 'transformer': hidden_size ({hidden_size}) must be a positive multiple of heads ({heads})"
            )
        self.proj = nn.Linear(input_size, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size, heads, dim_feedforward=2 * hidden_size, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out_size = hidden_size
        self.context_size = hidden_size  # the projected slice itself: attention sees the future

    @staticmethod
    def positions(length: int, width: int, device: torch.device) -> torch.Tensor:
        """Sinusoidal position codes ``(length, width)``."""
        pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
        codes = torch.zeros(length, width, device=device)
        codes[:, 0::2] = torch.sin(pos * freq)
        codes[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
        return codes

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj(x)
        h = z + self.positions(x.shape[1], z.shape[-1], x.device)[None]
        h = self.encoder(h, src_key_padding_mask=~valid.bool())
        return h.masked_fill(~valid.bool()[..., None], 0.0), z


def _reader_factory(cls: type[nn.Module]) -> Any:
    def factory(*, input_size: int, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0, **kw: Any):  # noqa: ANN202
        try:
            return cls(input_size, hidden_size, num_layers, dropout, **kw)
        except TypeError as exc:
            raise UsageError(
                f"reader '{cls.__name__}': {exc}", hint="remove the option the reader does not take"
            ) from exc

    factory.__doc__ = cls.__doc__
    return factory


SEQ_READERS.register("gru", _reader_factory(GruReader), description="Bidirectional GRU over the slice embeddings")
SEQ_READERS.register("lstm", _reader_factory(LstmReader), description="Bidirectional LSTM over the slice embeddings")
SEQ_READERS.register(
    "transformer", _reader_factory(TransformerReader), description="Transformer encoder over the slice embeddings"
)


@dataclass
class SeqOutput:
    """What one pass of a `SequenceModel` gives, for the loss terms (`medkit.losses.multitask`).

    Attributes:
        logits: Per-slice logits ``(B, T, L)``.
        hidden: Reader output ``(B, T, H)``.
        context: Causal context ``(B, T, Hc)`` (contrastive predictive coding).
        embeddings: The slice embeddings the reader read ``(B, T, D)`` (after masking / diversity transfer).
        aux_logits: The encoder head's logits on those embeddings ``(B, T, L)``.
        valid: Padding mask ``(B, T)``, True on real slices.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    context: torch.Tensor
    embeddings: torch.Tensor
    aux_logits: torch.Tensor
    valid: torch.Tensor


class SequenceModel(nn.Module):
    """Slice encoder + sequence reader + per-slice head (see the module docstring).

    Args:
        encoder: A MODELS model with ``features(x) -> (N, D)``, ``num_features`` and ``head``.
        reader: A SEQ_READERS module.
        num_classes: Labels per slice.
        dropout: Dropout on the reader output before the head.
        info: Recorded in ``medkit_info``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        reader: nn.Module,
        num_classes: int,
        dropout: float = 0.0,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.reader = reader
        self.embed_dim = int(encoder.num_features)
        # the learnt embedding that replaces a masked slice (--seq-mask), as BERT's [MASK] token
        self.mask_token = nn.Parameter(torch.zeros(self.embed_dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(reader.out_size, num_classes)
        self.medkit_info: dict[str, Any] = {
            **dict(info or {}),
            "sequence": True,
            "num_classes": num_classes,
            "num_outputs": num_classes,
            "num_features": self.embed_dim,
            "hidden_size": int(reader.out_size),
            "context_size": int(reader.context_size),
        }

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Slice embeddings: ``(B, T, C, H, W) -> (B, T, D)`` or ``(N, C, H, W) -> (N, D)``."""
        if images.ndim == 4:
            return self.encoder.features(images)
        b, t = images.shape[:2]
        return self.encoder.features(images.flatten(0, 1)).reshape(b, t, -1)

    def aux(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The encoder head's logits for embeddings ``(..., D) -> (..., L)``: classification from the features."""
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        out = self.encoder.head(self.encoder.dropout(flat))
        return out.reshape(*embeddings.shape[:-1], out.shape[-1])

    def read(self, embeddings: torch.Tensor, valid: torch.Tensor | None = None) -> SeqOutput:
        """Read series of embeddings ``(B, T, D)`` under ``valid (B, T)`` (None: every slice is real)."""
        if valid is None:
            valid = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        hidden, context = self.reader(embeddings, valid)
        logits = self.head(self.dropout(hidden))
        return SeqOutput(logits, hidden, context, embeddings, self.aux(embeddings), valid)

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Per-slice logits ``(B, T, L)`` of series ``(B, T, C, H, W)``; a ``(B, C, H, W)`` batch is read as one
        series of B slices in the given order."""
        if images.ndim == 4:
            return self.read(self.embed(images)[None]).logits[0]
        return self.read(self.embed(images), valid).logits


def _load_into(model: SequenceModel, path: str | os.PathLike[str]) -> None:
    """A sequence model's own state dict loads whole; anything else (a slice model) goes into the encoder."""
    from medkit.models._build import _read_state_dict, _strip, load_weights

    state = {_strip(k): v for k, v in _read_state_dict(Path(path)).items()}
    if any(k.startswith(("encoder.", "reader.")) for k in state):
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or len(missing) == len(model.state_dict()):
            raise UsageError(f"weights file {path} does not fit this sequence model", hint="check --seq-model")
        return
    load_weights(model.encoder, path)


def build_sequence_model(
    reader: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    backbone: str = "resnet18",
    backbone_kwargs: Mapping[str, Any] | None = None,
    hidden_size: int = 256,
    num_layers: int = 1,
    dropout: float = 0.0,
    reader_kwargs: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> SequenceModel:
    """A `SequenceModel`: a MODELS backbone as the slice encoder, a SEQ_READERS reader and a per-slice head.

    Args:
        reader: SEQ_READERS name (``gru``, ``lstm``, ``transformer``).
        num_classes: Labels per slice.
        in_chans: Input channels of a slice.
        pretrained: Start the encoder from timm's pretrained weights.
        backbone: MODELS name of the encoder (``resnet18``, ``timm/<name>``, ``cnn_small``, ...).
        backbone_kwargs: Extra keyword arguments of the encoder (``drop_rate``, ...).
        hidden_size: Reader width (per direction for the RNNs).
        num_layers: Reader layers.
        dropout: Dropout in the reader and before the head.
        reader_kwargs: Extra keyword arguments of the reader (``heads`` of the transformer).
        weights: A state dict: a sequence model's own (loaded whole) or a slice model's (into the encoder).

    Raises:
        UsageError: Bad sizes, an unknown backbone or reader.
    """
    from medkit.registries import MODELS

    if backbone.startswith("seq/"):
        raise UsageError(f"the encoder of a sequence model cannot be '{backbone}'", hint="use e.g. backbone=resnet18")
    if not 0.0 <= float(dropout) < 1.0:
        raise UsageError(f"sequence model: dropout must be in [0, 1), got {dropout}")
    encoder = MODELS.create(
        backbone,
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained=pretrained or None,
        **dict(backbone_kwargs or {}),
    )
    if not hasattr(encoder, "features") or not hasattr(encoder, "num_features"):
        raise UsageError(f"model '{backbone}' has no features(): it cannot embed slices", hint="use a medkit model")
    module = SEQ_READERS.create(
        reader,
        input_size=int(encoder.num_features),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        dropout=float(dropout),
        **dict(reader_kwargs or {}),
    )
    create_kwargs = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "backbone": backbone,
        "backbone_kwargs": dict(backbone_kwargs or {}),
        "hidden_size": int(hidden_size),
        "num_layers": int(num_layers),
        "dropout": float(dropout),
        "reader_kwargs": dict(reader_kwargs or {}),
    }
    model = SequenceModel(
        encoder,
        module,
        num_classes,
        dropout,
        info={
            "name": f"seq/{reader}",
            "reader": reader,
            "backbone": backbone,
            "in_chans": in_chans,
            "pretrained": bool(pretrained),
            "weights": str(weights) if weights else None,
            "create_kwargs": create_kwargs,
        },
    )
    if weights:
        _load_into(model, weights)
    return model


# ---------------------------------------------------------------------------------------------------- augmentations
def mask_slices(
    embeddings: torch.Tensor, valid: torch.Tensor, rate: float, token: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time masking (``--seq-mask``): each real slice's embedding is replaced by ``token`` with
    probability ``rate``, so the reader learns to label a slice from its neighbours.

    Args:
        embeddings: ``(B, T, D)``.
        valid: ``(B, T)`` padding mask.
        rate: Probability of masking a real slice.
        token: The mask embedding ``(D,)``.
        generator: CPU generator of the draws (saved with the run).

    Returns:
        ``(embeddings, masked)``: the new embeddings and the ``(B, T)`` boolean mask of replaced slices; the
        draw is ``torch.rand((B, T), generator=generator) < rate`` restricted to real slices.
    """
    draw = torch.rand(valid.shape, generator=generator).to(valid.device) < rate
    masked = draw & valid.bool()
    if not masked.any():
        return embeddings, masked
    out = torch.where(masked[..., None], token.to(embeddings.dtype).expand_as(embeddings), embeddings)
    return out, masked


def diversity_pairs(
    embeddings: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacent real slices of a series whose labels differ by exactly one finding, as label changes.

    For slices t, t+1 whose 0/1 labels differ in label j only, the difference ``e(with j) - e(without j)`` is what
    switching finding j on does to the embedding.

    Returns:
        ``(labels (P,), deltas (P, D))``, detached, in the order of (series, t).
    """
    y = (target > 0.5).float()
    diff = y[:, 1:] - y[:, :-1]  # (B, T-1, L)
    one = (diff.abs().sum(dim=-1) == 1) & valid[:, 1:].bool() & valid[:, :-1].bool()
    if not one.any():
        return torch.zeros(0, dtype=torch.long, device=target.device), embeddings.new_zeros(0, embeddings.shape[-1])
    d = diff[one]  # (P, L): +1 or -1 at one label
    labels = d.abs().argmax(dim=-1)
    sign = d.gather(1, labels[:, None])  # +1: the finding appears at t+1
    delta = (embeddings[:, 1:] - embeddings[:, :-1])[one] * sign
    return labels, delta.detach()


class DiversityPool:
    """The pool of single-finding embedding changes of diversity transfer (``--diversity``), fed batch by batch.

    Args:
        capacity: Changes kept (the newest win).
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = int(capacity)
        self.labels: torch.Tensor | None = None
        self.deltas: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def add(self, labels: torch.Tensor, deltas: torch.Tensor) -> None:
        """Append changes (``diversity_pairs``), dropping the oldest beyond the capacity."""
        if len(labels) == 0:
            return
        if self.labels is None or self.deltas is None:
            self.labels, self.deltas = labels, deltas
        else:
            self.labels = torch.cat([self.labels, labels.to(self.labels.device)])
            self.deltas = torch.cat([self.deltas, deltas.to(self.deltas.device)])
        self.labels, self.deltas = self.labels[-self.capacity :], self.deltas[-self.capacity :]


def transfer_diversity(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    labels: torch.Tensor,
    deltas: torch.Tensor,
    rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diversity transfer: add a pooled single-finding change to random slices and switch that finding on.

    Each real slice is picked with probability ``rate`` (``torch.rand((B, T), generator) < rate``) and given a
    pool entry ``torch.randint(P, (B, T), generator)``; a picked slice whose label j of that entry is off gets
    ``embedding + delta`` and label j set to 1 (a slice that already has the finding is left alone).

    Returns:
        ``(embeddings, target, changed)``; ``changed (B, T)`` marks the slices that were changed.
    """
    changed = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    pick = torch.rand(valid.shape, generator=generator).to(valid.device) < rate
    if len(labels) == 0:
        return embeddings, target, changed
    entry = torch.randint(len(labels), valid.shape, generator=generator).to(valid.device)
    j = labels.to(valid.device)[entry]  # (B, T)
    off = target.gather(-1, j[..., None])[..., 0] < 0.5
    changed = pick & valid.bool() & off
    if not changed.any():
        return embeddings, target, changed
    add = deltas.to(embeddings.device, embeddings.dtype)[entry] * changed[..., None]
    new_target = target.clone()
    new_target[changed, j[changed]] = 1.0
    return embeddings + add, new_target, changed

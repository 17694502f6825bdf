"""Siamese pretraining (``medkit train cxr --pretrain siamese``): the backbone learns to bring images that share a
label close together and push images with disjoint labels apart, before the classifier is trained.

Pairs come from the training split only. An image's label set is its positive labels, or the set ``{none}`` when
it has none (a normal study), so two normal studies count as sharing. A pair is *shared* when the two sets
intersect and *disjoint* when they do not. Every epoch each training image is an anchor once, in a shuffled order,
paired with a shared partner or (with probability 1/2) a disjoint one; the pairs of an epoch depend only on
(seed, epoch), so a resumed run sees the pairs it would have seen.

The loss is the contrastive loss of Hadsell, Chopra and LeCun (2006) on L2-normalised embeddings (the backbone's
pooled features through a linear projection, dropped afterwards): ``d^2`` for a shared pair and
``max(0, margin - d)^2`` for a disjoint one, averaged over the pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.engine.pretrain import PretrainJob
from medkit.errors import DataError
from medkit.registries import PRETRAINERS

__all__ = ["PairBatch", "label_sets", "sample_pairs", "contrastive_loss", "siamese_pretrain"]

MARGIN = 1.0
EMBED_DIM = 128
_TRIES = 64  # random draws before an anchor is declared to have no disjoint partner


@dataclass
class PairBatch:
    """Pairs of rows of a split: ``left[i]`` with ``right[i]``; ``same[i]`` is 1.0 for a shared pair, else 0.0."""

    left: np.ndarray
    right: np.ndarray
    same: np.ndarray


def label_sets(targets: np.ndarray) -> list[frozenset[int]]:
    """The label set of each row of a multi-hot matrix ``(N, K)``: its positive columns, or ``{-1}`` for none."""
    y = np.asarray(targets).reshape(len(targets), -1) > 0.5
    return [frozenset(np.flatnonzero(row).tolist()) or frozenset({-1}) for row in y]


def sample_pairs(targets: np.ndarray, seed: int, epoch: int, p_disjoint: float = 0.5) -> PairBatch:
    """One epoch of pairs: every row is an anchor once (shuffled), with a shared or a disjoint partner.

    A shared partner is drawn by picking one of the anchor's labels, then a row carrying it (the anchor itself
    only when no other row does). A disjoint partner is drawn at random until its label set misses the anchor's;
    an anchor without one (every row shares a label with it) gets a shared partner.

    Args:
        targets: Multi-hot targets ``(N, K)`` (or ``(N,)``) of the training split.
        seed: Seed of the run.
        epoch: 0-based epoch (the pairs of an epoch depend only on seed and epoch).
        p_disjoint: Probability of asking for a disjoint partner.

    Returns:
        The pairs, as positions in ``targets``.
    """
    sets = label_sets(targets)
    n = len(sets)
    if n < 2:
        raise DataError("siamese pretraining needs at least 2 training images", hint="check the training split")
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A])
    carriers: dict[int, np.ndarray] = {}
    for i, s in enumerate(sets):
        for label in s:
            carriers.setdefault(label, []).append(i)  # type: ignore[attr-defined]
    carriers = {k: np.asarray(v) for k, v in carriers.items()}
    anchors = rng.permutation(n)
    right = np.empty(n, dtype=np.int64)
    same = np.empty(n, dtype=np.float32)
    for k, i in enumerate(anchors):
        partner = -1
        if rng.random() < p_disjoint:
            for j in rng.integers(0, n, _TRIES):
                if not sets[i] & sets[j]:
                    partner = int(j)
                    break
        if partner >= 0:
            right[k], same[k] = partner, 0.0
            continue
        label = sorted(sets[i])[rng.integers(len(sets[i]))]
        pool = carriers[label]
        others = pool[pool != i]
        right[k] = int(rng.choice(others)) if len(others) else int(i)
        same[k] = 1.0
    return PairBatch(anchors.astype(np.int64), right, same)


def contrastive_loss(a: Any, b: Any, same: Any, margin: float = MARGIN) -> Any:
    """Mean contrastive loss of embedding pairs ``(B, D)``: ``d^2`` when ``same`` is 1, ``relu(margin - d)^2`` when 0.

    The embeddings are used as given (normalise them first); ``d`` is their Euclidean distance.
    """
    import torch

    d = torch.sqrt(((a - b) ** 2).sum(dim=1).clamp_min(1e-12))  # the clamp keeps the gradient finite at d = 0
    same = same.to(a.dtype)
    return (same * d**2 + (1 - same) * torch.relu(margin - d) ** 2).mean()


class _Siamese:
    """The model being pretrained, its projection head, and how a batch of pairs becomes a loss."""

    def __init__(self, model: Any, device: Any, seed: int) -> None:
        import torch

        self.model = model
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(model.num_features, EMBED_DIM).to(device)

    def parameters(self) -> list[Any]:
        return [*self.model.backbone.parameters(), *self.proj.parameters()]

    def embed(self, x: Any) -> Any:
        import torch.nn.functional as F

        return F.normalize(self.proj(self.model.features(x)), dim=1)

    def train(self, mode: bool) -> None:
        self.model.train(mode)
        self.proj.train(mode)


def _images(split: Any, rows: np.ndarray, device: Any) -> Any:
    import torch

    batch = split.source.get_batch(split.rows[rows])  # uint8 (B, H, W, C)
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)


def _pair_loss(net: _Siamese, split: Any, pairs: PairBatch, sl: slice, view: Any, device: Any) -> Any:
    import torch

    left = view(_images(split, pairs.left[sl], device))
    right = view(_images(split, pairs.right[sl], device))
    emb = net.embed(torch.cat([left, right]))
    a, b = emb.chunk(2)
    return contrastive_loss(a, b, torch.from_numpy(pairs.same[sl]).to(device))


def _val_loss(net: _Siamese, split: Any, seed: int, pair_batch: int, transforms: Any, device: Any) -> float:
    """Contrastive loss on pairs of the validation split (fixed pairs, no augmentation): for watching only."""
    import torch

    if len(split) < 2:
        return float("nan")
    pairs = sample_pairs(split.targets, seed, 0)
    net.train(False)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs.left), pair_batch):
            sl = slice(start, start + pair_batch)
            n = len(pairs.left[sl])
            total += float(_pair_loss(net, split, pairs, sl, transforms.eval, device)) * n
    return total / len(pairs.left)


def _transforms(cfg: Any, data: Any) -> Any:
    """The run's augmentation and normalisation, without mixing (a pair keeps its own two images)."""
    from medkit.engine.components import InputTransforms

    has_mask = data.mask_col is not None
    mean, std = data.mean_std(cfg.task.mean, cfg.task.std)
    image_channels = len(mean) - 1 if has_mask else None
    return InputTransforms(mean, std, cfg.task.img_size, cfg.task.augment, image_channels, seed=cfg.seed + 7)


@dataclass
class _Pretraining:
    """A siamese pretraining in progress: the network, its optimizer and augmentation, the epochs done."""

    net: _Siamese
    optimizer: Any
    transforms: Any
    pair_batch: int
    history: list[dict[str, Any]]
    start: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.net.model.state_dict(),
            "proj": self.net.proj.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "augment_rng": self.transforms.generator.get_state(),
            "history": self.history,
            "epoch": len(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.model.load_state_dict(state["model"])
        self.net.proj.load_state_dict(state["proj"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.transforms.generator.set_state(state["augment_rng"])
        self.history, self.start = list(state["history"]), int(state["epoch"])


def _build(job: PretrainJob) -> _Pretraining:
    """The run's own model (same architecture and starting weights as the classifier) plus a projection head."""
    from medkit.engine import components as C
    from medkit.registries import OPTIMIZERS

    cfg, data, device = job.cfg, job.data, job.runtime.device
    model = C.build_model(C.model_spec(cfg.task, data), cfg.pretrained, cfg.weights).to(device)
    net = _Siamese(model, device, cfg.seed)
    task = cfg.task
    opt = OPTIMIZERS.create(task.optimizer, net.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    # two images per pair: a batch holds as many images as the run's batches
    return _Pretraining(net, opt, _transforms(cfg, data), max(1, task.batch_size // 2), [])


def _train_epoch(p: _Pretraining, job: PretrainJob, epoch: int) -> dict[str, Any]:
    """One epoch over the pairs of (seed, epoch); returns its metrics.csv row."""
    cfg, data, device = job.cfg, job.data, job.runtime.device
    t0 = time.perf_counter()
    pairs = sample_pairs(data.train.targets, cfg.seed, epoch)
    steps = 1 if cfg.dry_run else math.ceil(len(pairs.left) / p.pair_batch)

    def augment(x: Any) -> Any:
        return p.transforms.augmenter(x, generator=p.transforms.generator, train=True)

    p.net.train(True)
    total, seen = 0.0, 0
    for step in range(steps):
        sl = slice(step * p.pair_batch, (step + 1) * p.pair_batch)
        loss = _pair_loss(p.net, data.train, pairs, sl, augment, device)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        n = len(pairs.left[sl])
        total, seen = total + float(loss.detach()) * n, seen + n
    return {
        "epoch": epoch + 1,
        "stage": "pretrain",
        "train_loss": total / seen,
        "val_loss": _val_loss(p.net, data.val, cfg.seed, p.pair_batch, p.transforms, device),
        "lr": p.optimizer.param_groups[0]["lr"],
        "epoch_s": time.perf_counter() - t0,
    }


def siamese_pretrain(job: PretrainJob) -> Path:
    """Pretrain the run's backbone on pairs of training images; write ``backbone.pt`` and return its path.

    Writes ``run.json`` (``"parent"``: the run), ``metrics.csv`` (epoch, train_loss, val_loss, lr, seconds) and
    ``checkpoints/last.pt`` after every epoch, so an interrupted pretraining resumes at the next epoch. Single
    process (no DDP).

    Raises:
        DataError: Fewer than two training images.
    """
    from medkit.config import provenance
    from medkit.console import info
    from medkit.engine.checkpoint import load_checkpoint, save_checkpoint
    from medkit.engine.run import write_metrics

    run = job.run
    p = _build(job)
    if job.resume:
        p.load_state_dict(load_checkpoint(run.last))
        info(f"resuming pretraining {run.root} at epoch {p.start + 1}")
    else:
        method = {"method": "siamese", "epochs": job.epochs, "margin": MARGIN, "embed_dim": EMBED_DIM}
        run.write_run_json(
            {**provenance(job.cfg.to_dict()), "parent": str(run.root.parent.resolve()), "pretrain": method}
        )
    for epoch in range(p.start, job.epochs):
        row = _train_epoch(p, job, epoch)
        p.history.append(row)
        info(f"pretrain epoch {epoch + 1}/{job.epochs}: train_loss {row['train_loss']:.4f} val {row['val_loss']:.4f}")
        write_metrics(run.metrics_csv, p.history)
        save_checkpoint(run.last, p.state_dict())
    # The classifier loads this file as it would --weights (medkit.models.load_weights): the backbone only.
    save_checkpoint(job.weights, {f"backbone.{k}": v for k, v in p.net.model.backbone.state_dict().items()})
    return job.weights


PRETRAINERS.register(
    "siamese",
    siamese_pretrain,
    description="Contrastive pairs of training images with shared vs disjoint labels (multi-label 2D tasks)",
)

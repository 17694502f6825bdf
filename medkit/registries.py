"""The registries every medkit command shares, one per kind of pluggable component.

Factory signatures (the contract a plugin follows; see docs/plugins.md):

- ``models``: ``f(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw) -> torch.nn.Module``
- ``losses``: ``f(**kw) -> torch.nn.Module`` whose ``forward(logits, targets, **batch)`` returns a scalar
- ``optimizers``: ``f(params, *, lr: float, weight_decay: float = 0.0, **kw) -> torch.optim.Optimizer``
- ``schedulers``: ``f(optimizer, *, epochs: int, steps_per_epoch: int, **kw) -> medkit.optim.Schedule``
- ``metrics``: ``f(**kw) -> callable(y_true: np.ndarray, y_score: np.ndarray) -> float``; flag ``greater_is_better``
- ``tasks``: ``f(**overrides) -> medkit.tasks.Task``
- ``competitions``: ``f() -> medkit.competitions.Competition``
- ``readers``: ``f(path: pathlib.Path, **kw) -> numpy.ndarray``; flags ``suffixes`` and ``magic``
- ``seq_readers``, ``loss_terms``: parts of the sequence model (`medkit train ct --seq-model`, ``--aux-loss``)
- ``loggers``: ``f(run_dir, *, config) -> medkit.engine.loggers.Logger`` (`medkit train --logger`)
- ``pretrainers``: ``f(job) -> pathlib.Path`` (`medkit train --pretrain`)

This module imports neither torch nor typer: entries are registered when a registry is first looked up.
"""

from __future__ import annotations

from medkit.registry import Registry

__all__ = [
    "MODELS",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "METRICS",
    "TASKS",
    "COMPETITIONS",
    "READERS",
    "LOGGERS",
    "SEQ_READERS",
    "LOSS_TERMS",
    "PRETRAINERS",
    "ALL",
    "by_kind",
]

MODELS: Registry = Registry(
    "models",
    "model",
    builtins=["medkit.models"],
    signature="f(*, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw) -> torch.nn.Module",
)
LOSSES: Registry = Registry(
    "losses",
    "loss",
    builtins=["medkit.losses"],
    signature="f(**kw) -> torch.nn.Module; forward(logits, targets, **batch) -> scalar tensor",
)
OPTIMIZERS: Registry = Registry(
    "optimizers",
    "optimizer",
    builtins=["medkit.optim"],
    signature="f(params, *, lr: float, weight_decay: float = 0.0, **kw) -> torch.optim.Optimizer",
)
SCHEDULERS: Registry = Registry(
    "schedulers",
    "scheduler",
    builtins=["medkit.optim"],
    signature="f(optimizer, *, epochs: int, steps_per_epoch: int, **kw) -> medkit.optim.Schedule",
)
METRICS: Registry = Registry(
    "metrics",
    "metric",
    builtins=["medkit.metrics"],
    signature="f(**kw) -> Callable[[np.ndarray, np.ndarray], float]; flag greater_is_better",
)
TASKS: Registry = Registry("tasks", "task", builtins=["medkit.tasks"], signature="f(**overrides) -> medkit.tasks.Task")
COMPETITIONS: Registry = Registry(
    "competitions",
    "competition",
    builtins=["medkit.competitions"],
    signature="f() -> medkit.competitions.Competition",
)
READERS: Registry = Registry(
    "readers",
    "reader",
    builtins=["medkit.io.readers"],
    signature="f(path: pathlib.Path, **kw) -> numpy.ndarray; flags suffixes, magic",
)

# Parts of the sequence model (`medkit train ct --seq-model`), reached through MODELS as ``seq/<reader>`` and
# through ``--aux-loss NAME=W``; plugins add entries through the groups medkit.seq_readers / medkit.loss_terms.
SEQ_READERS: Registry = Registry(
    "seq_readers",
    "sequence reader",
    builtins=["medkit.models.sequence"],
    signature="f(*, input_size: int, hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.0, **kw) "
    "-> torch.nn.Module; forward(x, valid) -> (hidden, context)",
)
LOSS_TERMS: Registry = Registry(
    "loss_terms",
    "loss term",
    builtins=["medkit.losses.multitask"],
    signature="f(*, num_labels: int, embed_dim: int, hidden_size: int, context_size: int, **kw) -> torch.nn.Module; "
    "forward(out: SeqOutput, target, valid) -> scalar tensor",
)

# Experiment loggers of `medkit train --logger` (medkit.engine.loggers); plugins use the group medkit.loggers.
LOGGERS: Registry = Registry(
    "loggers",
    "logger",
    builtins=["medkit.engine.loggers"],
    signature="f(run_dir: pathlib.Path, *, config: dict) -> medkit.engine.loggers.Logger",
)

# Pretraining stages run before the classifier (`medkit train --pretrain NAME`); plugins use medkit.pretrainers.
PRETRAINERS: Registry = Registry(
    "pretrainers",
    "pretraining method",
    builtins=["medkit.engine.siamese"],
    signature="f(job: medkit.engine.pretrain.PretrainJob) -> pathlib.Path (a state dict with backbone.* keys)",
)

ALL: dict[str, Registry] = {
    r.kind: r
    for r in (
        MODELS,
        LOSSES,
        OPTIMIZERS,
        SCHEDULERS,
        METRICS,
        TASKS,
        COMPETITIONS,
        READERS,
        SEQ_READERS,
        LOSS_TERMS,
        LOGGERS,
        PRETRAINERS,
    )
}


def by_kind(kind: str) -> Registry:
    """The registry for a kind, accepting plural or singular (``"loss"`` or ``"losses"``).

    Raises:
        UnknownNameError: For a kind that does not exist.
    """
    from medkit.errors import UnknownNameError, did_you_mean

    for reg in ALL.values():
        if kind in (reg.kind, reg.singular):
            return reg
    raise UnknownNameError(f"unknown kind '{kind}'{did_you_mean(kind, ALL)}", hint=f"kinds: {', '.join(ALL)}")

"""Pretraining stages run before the classifier (``medkit train --pretrain NAME``), reached through PRETRAINERS.

A pretraining method trains the backbone of the run's own model on the training split and returns a state dict
file with ``backbone.*`` keys. `pretrain_stage` gives it a run directory of its own under the run (``RUN/pretrain/``
with run.json, metrics.csv and checkpoints; run.json's ``"parent"`` is the run's absolute path), reuses a finished
one, resumes an interrupted one with ``--resume``, and hands the file to the classifier as ``--weights`` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkit.engine.run import RunDir
from medkit.errors import UsageError

__all__ = ["PretrainJob", "PRETRAIN_DIR", "WEIGHTS_FILE", "pretrain_stage", "pretrain_dir"]

PRETRAIN_DIR = "pretrain"
WEIGHTS_FILE = "backbone.pt"


@dataclass
class PretrainJob:
    """What a PRETRAINERS factory receives (``f(job) -> Path``).

    Attributes:
        cfg: The run's `medkit.engine.fit.TrainConfig` (task preset, seed, pretrained weights, ...).
        data: The run's `medkit.data.dataset.TrainData`: pairs and batches come from ``data.train`` only.
        runtime: The resolved `medkit.engine.runtime.Runtime`.
        run: The pretraining's own run directory (``RUN/pretrain``).
        epochs: Pretraining epochs.
        resume: Continue from ``run.last``.
    """

    cfg: Any
    data: Any
    runtime: Any
    run: RunDir
    epochs: int
    resume: bool

    @property
    def weights(self) -> Path:
        """Where the method writes the pretrained backbone (``backbone.*`` keys)."""
        return self.run.root / WEIGHTS_FILE


def pretrain_dir(out: str | Path) -> RunDir:
    """The pretraining run directory of the run in ``out``."""
    return RunDir(Path(out) / PRETRAIN_DIR)


def pretrain_stage(cfg: Any, data: Any, runtime: Any) -> Path:
    """Run (or reuse, or resume) the pretraining ``cfg.pretrain`` and return its backbone weights file.

    Raises:
        UsageError: An unfinished pretraining in the run folder without ``--resume``; no pretraining epochs.
        UnknownNameError: An unknown method name.
    """
    from medkit.console import info
    from medkit.registries import PRETRAINERS

    factory = PRETRAINERS.get(cfg.pretrain).factory  # a mistyped name fails before anything is written
    run = pretrain_dir(cfg.out)
    job = PretrainJob(cfg, data, runtime, run, 1 if cfg.dry_run else cfg.pretrain_epochs, cfg.resume)
    if job.weights.exists():
        info(f"pretraining already done: {job.weights}")
        return job.weights
    if job.epochs < 1:
        raise UsageError("--pretrain needs --pretrain-epochs N (N >= 1)", hint="e.g. --pretrain-epochs 5")
    if run.last.exists() and not cfg.resume:
        raise UsageError(
            f"{run.root} holds an unfinished pretraining (checkpoints/last.pt)",
            hint="pass --resume to continue it, or choose another --out",
        )
    job.resume = run.last.exists()
    return Path(factory(job))

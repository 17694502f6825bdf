"""The training engine, built of parts (docs/architecture.md shows how a `medkit train` call goes through them).

``runtime`` (where and how the model runs), ``feed`` (batch order, the DataLoader, the feeder protocol),
``feeders`` (the feeders without a DataLoader and ``--feed auto``), ``components``
(model, loss, optimizer, schedule, EMA, transforms built by name), ``stages``, ``state`` (counters and stateful
parts, to and from checkpoints), ``loop`` (training steps), ``predict`` (validation, test and prediction),
``spec`` (the run spec and `load_run`), ``fit`` and ``folds`` (orchestration), ``checkpoint``, ``run`` (the run
directory), ``ddp`` and ``profile``.

Import the submodules directly (``from medkit.engine.fit import fit``); this package imports nothing heavy.
"""

__all__ = [
    "checkpoint",
    "components",
    "ddp",
    "feed",
    "feeders",
    "fit",
    "folds",
    "loop",
    "predict",
    "profile",
    "run",
    "runtime",
    "spec",
    "stages",
    "state",
]

"""The training engine: plain functions for the loop, fitting, checkpoints, the run directory and DDP.

Import the submodules directly (``from medkit.engine.fit import fit``); this package imports nothing heavy.
"""

__all__ = ["checkpoint", "data", "ddp", "fit", "loop", "run"]

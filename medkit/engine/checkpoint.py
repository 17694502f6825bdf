"""Checkpoints: plain dicts written atomically, with every RNG state needed to resume mid-epoch exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from medkit.errors import DataError

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "unwrap", "weights_only", "WEIGHT_KEYS"]

#: What best.pt keeps of a full checkpoint: the weights (and the EMA's), what rebuilds the model, and where in the
#: run they were taken. No optimizer, scheduler, scaler or RNG state (those live in last.pt only), so best.pt is a
#: third of last.pt for Adam and loads with ``torch.load(..., weights_only=True)``.
WEIGHT_KEYS = (
    *("model", "ema", "spec", "config", "label_names", "target", "medkit_version"),
    *("epoch", "best", "best_epoch"),
)


def unwrap(model: Any) -> Any:
    """The plain module under DDP and torch.compile wrappers (its state dict has no prefixes)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state(generators: dict[str, Any] | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) RNG states, plus named ``torch.Generator`` states."""
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    for name, gen in (generators or {}).items():
        state[f"gen/{name}"] = gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, Any] | None = None) -> None:
    """Restore what `rng_state` saved (CUDA states only when the device count matches)."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for name, gen in (generators or {}).items():
        key = f"gen/{name}"
        if key in state:
            gen.set_state(state[key])


def weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """The best.pt entries (`WEIGHT_KEYS`) of a full checkpoint dict, marked ``"weights_only": True``."""
    return {**{k: state[k] for k in WEIGHT_KEYS if k in state}, "weights_only": True}


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically: a temp file in the same folder, fsync, then rename over ``path``.

    An interrupted save (Ctrl-C, a killed job) leaves the previous checkpoint intact, and so does a failed one: a
    full disk or a folder that cannot be written (``OSError``, or torch's ``RuntimeError`` from its zip writer)
    raises `DataError` naming the folder, with the temp file removed.
    """
    import torch

    from medkit._io import atomic_write

    path = Path(path)
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "inline_container" not in str(e) and "write" not in str(e).lower():
            raise
        raise DataError(
            f"cannot write checkpoint {path}: {e}",
            hint=f"free space in (or fix the permissions of) {path.parent}; the previous checkpoint is kept",
        ) from e
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        DataError: When the file is missing or is not a medkit checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}", hint="train first, or point --out at the run to resume")
    try:
        # RNG states hold numpy arrays and tuples, so the full unpickler is needed; only load files you wrote.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        raise DataError(f"{path}: cannot read the checkpoint: {exc}", hint="the file is corrupt; delete it") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"{path}: not a medkit checkpoint (no 'model' entry)", hint="pass a file written by medkit")
    return state

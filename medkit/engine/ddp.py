"""DistributedDataParallel helpers: detect a torchrun launch, set up the process group, gather predictions.

medkit runs unchanged under an external ``torchrun`` (WORLD_SIZE / RANK / LOCAL_RANK in the environment), or
``medkit train --gpus N`` re-executes itself under ``python -m torch.distributed.run``. Only rank 0 logs and
writes files; predictions are gathered from every rank and de-duplicated by sample index.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["DistInfo", "dist_info", "setup", "barrier", "gather_arrays", "all_reduce_mean", "relaunch_argv"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a distributed run (world_size 1 = a single process).

    ``local_world_size`` is the number of processes on this machine (None: all of them), the ones that share its
    host memory.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int | None = None

    @property
    def on_this_node(self) -> int:
        """Processes of the run on this machine."""
        return self.local_world_size or self.world_size

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read the torchrun environment variables (a plain process gets world size 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    return DistInfo(world, rank, local, int(local_world) if local_world else None)


def setup(info: DistInfo, device: Any) -> Any:
    """Initialise the process group (nccl on CUDA, gloo on CPU) and return this rank's device."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: Any) -> float:
    """Mean of a Python float over ranks."""
    import torch
    import torch.distributed as dist

    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def gather_arrays(arrays: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Concatenate numpy arrays from every rank (rank order); ranks may hold different lengths.

    The padded samples a distributed sampler adds are removed afterwards by de-duplicating on ``index``.
    """
    import numpy as np
    import torch.distributed as dist

    if not info.enabled:
        return arrays
    gathered: list[Any] = [None] * info.world_size
    # Object gather goes through pickle on the CPU: fine for predictions (N x K floats), works on gloo and nccl.
    dist.all_gather_object(gathered, arrays)
    return {k: np.concatenate([g[k] for g in gathered], axis=0) for k in arrays}


def relaunch_argv(nproc: int, argv: list[str]) -> list[str]:
    """The command that re-runs ``medkit <argv>`` under torch.distributed.run with ``nproc`` processes.

    ``--gpus N`` is dropped from ``argv``: the relaunched processes must not relaunch again.
    """
    argv = _without_option(argv, "--gpus")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "medkit",
        *argv,
    ]


def _without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` and ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(f"{flag}="):
            out.append(a)
    return out

"""Device resolution, the AMP dtype policy, and seeding (python, numpy, torch and every DataLoader worker)."""

from __future__ import annotations

import os
import random
import re
from typing import Any

from medkit.errors import DeviceError, UsageError

__all__ = ["resolve_device", "amp_dtype", "AMP_CHOICES", "seed_everything", "seed_worker", "DEVICE_HELP"]

DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str | None = "auto") -> Any:
    """Turn a device spec into a ``torch.device``, with an actionable error when it is not available.

    Args:
        spec: ``auto`` (first CUDA GPU, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The ``torch.device``.

    Raises:
        DeviceError: For a malformed spec or a device that this machine does not have.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if not _SPEC.match(spec):
        raise DeviceError(f"invalid device '{spec}'", hint=f"use one of: {DEVICE_HELP}")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available here", hint="use --device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device '{spec}' requested but no CUDA GPU is visible (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'})",
            hint="use --device cpu, or check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceError(
            f"device '{spec}' requested but only {count} CUDA device(s) are visible ({visible})",
            hint=f"use --device cuda:0..cuda:{count - 1}, or check CUDA_VISIBLE_DEVICES",
        )
    return torch.device("cuda", index)


AMP_CHOICES = ("auto", "on", "bf16", "fp16", "off")


def amp_dtype(device: Any, requested: str = "auto") -> Any:
    """The autocast dtype for a device: bf16 where supported, fp16 (+ GradScaler) on older GPUs, else None.

    Args:
        device: A ``torch.device``.
        requested: ``auto`` (mixed precision on a GPU, fp32 on a CPU, where bf16 autocast is slower on most
            processors), ``on`` (mixed precision on any device: bf16 on a CPU), ``bf16``, ``fp16`` or ``off``.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (no autocast).

    Raises:
        DeviceError: When the requested dtype cannot run on the device.
        UsageError: For a value that is none of `AMP_CHOICES`.
    """
    import torch

    requested = (requested or "auto").lower()
    if requested in ("off", "none", "fp32", "false", "no"):
        return None
    if requested not in AMP_CHOICES:
        raise UsageError(f"unknown precision '{requested}'", hint=f"use one of: {', '.join(AMP_CHOICES)}")
    dev_type = getattr(device, "type", str(device))
    if dev_type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "bf16" and not bf16_ok:
            raise DeviceError("bf16 autocast requested but this GPU does not support bf16", hint="use --amp fp16")
        if requested == "fp16":
            return torch.float16
        return torch.bfloat16 if bf16_ok else torch.float16
    if dev_type == "mps":
        return torch.float16 if requested in ("auto", "on", "fp16") else None
    # CPU: autocast only when asked for (on, bf16); auto stays in fp32 (faster and exact on most CPUs).
    if requested in ("on", "bf16"):
        return torch.bfloat16
    if requested == "fp16":
        raise DeviceError("fp16 autocast is not supported on the CPU", hint="use --amp bf16 or --amp off")
    return None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also ask torch for deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python and numpy seeds from the worker's torch seed."""
    import numpy as np
    import torch

    seed = torch.initial_seed() % (2**32)
    random.seed(seed)
    np.random.seed(seed)

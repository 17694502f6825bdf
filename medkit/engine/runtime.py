"""The runtime: every decision that depends on the device, made once and passed down.

`resolve_runtime` turns ``--device``, ``--amp`` and ``--workers`` into a `Runtime`: the device (this rank's GPU
under DDP), the autocast dtype (mixed precision by default on a GPU, fp32 on a CPU), whether a GradScaler is
needed, channels-last memory format, cuDNN autotuning, pinned host memory, how many DataLoader workers feed the
model and how often the training loop reads the loss back from the device. Nothing below the runtime looks at
``device.type`` again. The runtime also keeps the rows a feeder holds in memory (`Runtime.held`), so the training,
validation and test feeders of one run share one copy of the cache.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

from medkit.engine.ddp import DistInfo, dist_info

__all__ = ["Runtime", "resolve_runtime", "loader_workers", "GPU_LOSS_EVERY"]


def loader_workers(requested: int | None, device_type: str, cap: int = 8) -> int:
    """DataLoader workers: ``requested``, else on CUDA the usable cores minus one for the training process (at
    most ``cap``), else 0 (on a CPU the workers would compete with the model for the same cores, and starting them
    costs more than decoding small images in the training process)."""
    if requested is not None:
        return max(0, int(requested))
    if device_type != "cuda":
        return 0
    from medkit.parallel import usable_cores

    return max(0, min(cap, usable_cores() - 1))


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs.

    Attributes:
        device: The ``torch.device`` of this process.
        amp_dtype: Autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None for fp32.
        channels_last: Give the model and its inputs the channels-last memory format (CUDA tensor cores).
        pin_memory: Pin host batches so host-to-device copies can overlap compute.
        workers: DataLoader worker processes that read batches for the model.
        dist: Where this process sits in a DDP run.
        cudnn_benchmark: cuDNN picks the fastest convolution algorithms for the input shapes (CUDA, unless
            ``--deterministic``).
        loss_every: Steps between two reads of the training loss on the host (each read waits for the device):
            every step on a CPU, where it costs nothing, less often on a GPU (`medkit.engine.loop.EpochState`).
        held: Source -> rows held in memory by the feeders (`medkit.engine.feeders`), shared by every feeder of
            this runtime and released with the source.
    """

    device: Any
    amp_dtype: Any = None
    channels_last: bool = False
    pin_memory: bool = False
    workers: int = 0
    dist: DistInfo = field(default_factory=DistInfo)
    cudnn_benchmark: bool = False
    loss_every: int = 1
    held: Any = field(default_factory=weakref.WeakKeyDictionary, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files."""
        return self.dist.is_main

    @property
    def cuda(self) -> bool:
        """Whether the device is a CUDA GPU (streams, synchronisation)."""
        return getattr(self.device, "type", "") == "cuda"

    def autocast(self) -> Any:
        """The autocast context of this runtime (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> Any:
        """A ``torch.amp.GradScaler`` when training in fp16, else None (bf16 and fp32 need none)."""
        import torch

        return torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None

    def place_model(self, model: Any) -> Any:
        """Move a model to the device, in channels-last format where the runtime uses it."""
        import torch

        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def wrap_for_training(self, model: Any, compile_model: bool = False) -> Any:
        """The module the training step calls: ``torch.compile`` and DistributedDataParallel as configured."""
        import torch

        out = torch.compile(model) if compile_model else model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            out = DistributedDataParallel(out, device_ids=[self.device.index] if self.cuda else None)
        return out

    def synchronize(self) -> None:
        """Wait for the device (timing); a no-op off CUDA."""
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)


#: Steps between two reads of the training loss on a GPU: rare enough that the host stays ahead of the device,
#: often enough that a diverging run stops within a few seconds.
GPU_LOSS_EVERY = 25


def resolve_runtime(
    device: str = "auto",
    amp: str = "auto",
    workers: int | None = None,
    info: DistInfo | None = None,
    deterministic: bool = False,
) -> Runtime:
    """Resolve the device (and the DDP process group), the precision and the feeding policy once.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: ``auto`` (mixed precision on a GPU, fp32 on a CPU), ``on`` (mixed precision everywhere: bf16 on a
            CPU), ``bf16``, ``fp16`` or ``off`` (see `medkit.device.amp_dtype`).
        workers: DataLoader workers (None: `loader_workers`'s default for the device).
        info: The DDP placement (None: read from the torchrun environment).
        deterministic: Deterministic kernels were asked for: no cuDNN autotuning.

    Raises:
        DeviceError: For a device or precision this machine does not have.
    """
    from medkit.device import amp_dtype, resolve_device
    from medkit.engine import ddp

    info = info or dist_info()
    dev = ddp.setup(info, resolve_device(device))
    cuda = dev.type == "cuda"
    benchmark = cuda and not deterministic
    if benchmark:
        import torch

        torch.backends.cudnn.benchmark = True
    return Runtime(
        device=dev,
        amp_dtype=amp_dtype(dev, amp),
        channels_last=cuda,
        pin_memory=cuda,
        workers=loader_workers(workers, dev.type),
        dist=info,
        cudnn_benchmark=benchmark,
        loss_every=GPU_LOSS_EVERY if cuda else 1,
    )

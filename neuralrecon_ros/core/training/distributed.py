"""Multi-process training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun --nproc_per_node N -m neuralrecon_ros.cli train ...`` (or the ``neuralrecon-ros`` script) starts
N processes with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set; :func:`init_distributed` joins them into a
process group (NCCL for CUDA, gloo for CPU). The trainer then wraps its training pass in
:class:`torch.nn.parallel.DistributedDataParallel`: every rank trains on its own shard of the epoch's scenes
(whole scenes, so phase 2 carries the GRU state as in one process), the gradients are averaged across ranks
in backward, and every rank applies the same optimizer step, so the weights stay identical. Only rank 0
writes checkpoints, ``metrics.jsonl`` and validates.

BatchNorm: statistics stay **local** (no SyncBatchNorm). Upstream normalises each view on its own (the
backbone sees one image at a time) and each fragment's sparse features on their own, so one process on
one fragment and N processes on N fragments normalise identically; the running statistics (used only
at inference) are rank 0's: DDP broadcasts rank 0's buffers at every forward, and
:meth:`DistributedContext.sync_buffers` does so before a checkpoint.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

#: validation runs on rank 0 while the others wait: allow it time on a CPU
_TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, kind: str) -> torch.device:
        """This process's device: ``cuda:<local_rank>`` for CUDA, else the CPU."""
        return torch.device(f"cuda:{self.local_rank}") if kind == "cuda" else torch.device(kind)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (keeps decisions such as the time limit identical)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.broadcast(tensor, 0)
        return float(tensor.item())

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable, e.g. CPU tensors), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, 0)

    def _collective_device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")


def context_from_environment() -> DistributedContext:
    """The context ``torchrun`` describes in the environment (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    return DistributedContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_kind: str, context: DistributedContext | None = None) -> DistributedContext:
    """Join the process group of a ``torchrun`` launch (gloo on the CPU, NCCL on CUDA); no-op alone.

    ``device_kind``: the resolved device type ('cpu' or 'cuda'). The rendezvous address comes from the
    environment (``MASTER_ADDR``/``MASTER_PORT``, set by torchrun)."""
    context = context or context_from_environment()
    if context.enabled and not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(context.local_rank)
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=context.rank, world_size=context.world_size, timeout=_TIMEOUT
        )
    return context


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

"""One training run over several processes: torchrun starts them, DDP keeps them in step.

Nothing here manages processes or rendezvous: `torchrun` (torch.distributed.run) sets
RANK, LOCAL_RANK and WORLD_SIZE and the rendezvous; this module only joins the group it
describes. Without those variables (plain `python -m bench run`) there is no group and every
helper is the single-process identity.

The recipe's batch size stays the GLOBAL batch. Every rank walks the same global order and
draws the same augmentation for the whole global batch (same (seed, epoch) generator), then
keeps its slice: rank r of W takes B // W samples, the first B % W ranks one more. Each rank's
loss is its summed loss * W / B, so after DDP averages gradients over W ranks they equal the
single-process gradient of the mean over the global batch.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's part of n items: n // W each, the first n % W ranks one more."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def record(self, device: torch.device) -> dict:
        """world_size, backend and every rank's host and device, for results.json."""
        here = {"rank": self.rank, "host": socket.gethostname(), "device": str(device)}
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "ranks": self.all_gather_object(here),
        }


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_spec: str, timeout_s: float) -> tuple[Dist, torch.device | None]:
    """Join torchrun's process group if there is one. -> (Dist, device or None to pick as usual).

    NCCL with one GPU per LOCAL_RANK on CUDA, gloo on CPU. `timeout_s` bounds every
    collective, so a rank that died ends the others with an error instead of a hang.
    """
    if not launched_by_torchrun():
        return Dist(), None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=dt.timedelta(seconds=timeout_s),
            **({"device_id": device} if use_cuda else {}),
        )
    return Dist(rank=rank, world_size=world, local_rank=local, backend=backend), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP around `model`; on CUDA its BatchNorms become SyncBatchNorm (statistics over the
    global batch). SyncBatchNorm does not run on CPU/gloo: there BN statistics are per rank."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[device.index])
    return DDP(model)

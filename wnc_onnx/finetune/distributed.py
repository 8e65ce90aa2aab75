"""torch.distributed for the torch backend: one process per device, launched by ``torchrun``.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address)
in each process it starts; with more than one process the run joins the process group
(gloo on CPU, NCCL on GPU), wraps the graph module in DistributedDataParallel, gives each
process its share of every epoch (``torch.utils.data.DistributedSampler``, seeded per
epoch) and sums the epoch's figures over the processes. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from wnc_onnx.errors import WncError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The run as torchrun describes it in the environment (one process when it does not)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise WncError(
            "WORLD_SIZE / RANK / LOCAL_RANK in the environment are not integers", "launch with torchrun"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise WncError(f"RANK {rank} does not fit WORLD_SIZE {world}", "launch with torchrun")
    return Dist(rank, world, local)


def join(dist: Dist, device: Any) -> bool:
    """Join the process group of the run (gloo on CPU, NCCL on CUDA), once per process;
    whether this call joined it (then ``leave`` at the end)."""
    import torch.distributed as td

    if not dist.active or td.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not td.is_nccl_available():
        raise WncError("this torch build has no NCCL for multi-GPU training", "install a CUDA build of torch")
    td.init_process_group(backend=backend, rank=dist.rank, world_size=dist.world)
    log.info("torch.distributed: rank %d of %d (%s)", dist.rank, dist.world, backend)
    return True


def leave() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def sum_over(dist: Dist, values: Sequence[float]) -> list[float]:
    """Each value summed over the processes (as they are, with one process)."""
    if not dist.active:
        return [float(v) for v in values]
    import torch
    import torch.distributed as td

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    td.all_reduce(t)
    return [float(v) for v in t.tolist()]


def any_of(dist: Dist, flag: bool) -> bool:
    """Whether any process has ``flag`` set (a Ctrl-C seen by one stops all at the same batch)."""
    return bool(sum_over(dist, [1.0 if flag else 0.0])[0]) if dist.active else flag


def shard(n: int, dist: Dist, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """This process's sample indices of an epoch over ``n`` samples: for training (``shuffle``)
    DistributedSampler's, padded with repeats so that every process has as many batches; for
    scoring every sample once (rank, rank + world, ...)."""
    if not shuffle:
        return list(range(dist.rank, n, dist.world))
    from torch.utils.data.distributed import DistributedSampler

    indices = cast(Any, range(n))  # any sized sequence serves as the 'data set'
    sampler: Any = DistributedSampler(indices, num_replicas=dist.world, rank=dist.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)

"""PyTorch DDP under ``torchrun``: which process this is, and the few collectives the loop uses.

``torchrun --nproc_per_node N $(which plugstack) app=train ...`` starts N plugstack
processes with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; each composes its own config
and run directory, trains its own shard of the batches, and rank 0 alone writes the
training directory. Without those variables the run is one process and nothing here
touches ``torch.distributed``. Light at import: torch is imported by the functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from plugstack.errors import ConfigError

__all__ = ["Launch"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer: launch with torchrun, which sets it.") from None


@dataclass(frozen=True)
class Launch:
    """This process's place among the training's processes."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Launch:
        launch = cls(_env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0))
        if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
            raise ConfigError(f"WORLD_SIZE={launch.world_size}, RANK={launch.rank}, LOCAL_RANK={launch.local_rank} "
                              f"do not describe a process of a training: launch with torchrun, which sets them.")
        if launch.distributed and "MASTER_ADDR" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={launch.world_size} but MASTER_ADDR is unset: launch the processes with "
                              f"torchrun, e.g. torchrun --nproc_per_node {launch.world_size} $(which plugstack) ...")
        return launch

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def start(self, device: str) -> str:
        """Join the process group (gloo on CPU, nccl on CUDA); return this rank's device."""
        if not self.distributed:
            return device
        import torch
        import torch.distributed as dist

        dev = torch.device(device)
        if dev.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK={self.local_rank} but torch sees {torch.cuda.device_count()} GPU(s): "
                                  f"start at most that many processes per node (torchrun --nproc_per_node).")
            dev = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(dev)
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        return str(dev)

    def stop(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def wrap(self, module: Any, device: str) -> Any:
        """``module`` as DDP sees it (gradients averaged over the ranks), or as it is."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        dev_ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
        return DistributedDataParallel(module, device_ids=dev_ids)

    def mean(self, values: Any) -> Any:
        """The mean over the ranks of a tensor of numbers (itself when there is one rank)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (small, picklable: a digest), in rank order."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

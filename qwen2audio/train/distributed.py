"""One process, or many through torchrun: process group, device, and FSDP2 / DDP wrapping (PyTorch's own).

    torchrun --nproc_per_node 8 -m qwen2audio train --stage sft --config recipe.yaml

gloo on CPU, nccl on GPUs. FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each encoder and decoder layer and
the rest at the root; DDP replicates. Nothing here assumes a CPU or a GPU: the device is a parameter.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import DistributedConfig


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none | fsdp | ddp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(config: DistributedConfig, device_name: str) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); start the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    strategy = config.strategy
    if world_size == 1:  # one process: nothing to shard or replicate
        return Dist(0, 1, 0, device, "none")
    if strategy == "none":
        raise ValueError("several processes were launched but distributed.strategy is none")
    backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank, world_size, local_rank, device, "fsdp" if strategy == "auto" else strategy)


def shard_layers(model) -> list[nn.Module]:
    """The FSDP units of a Qwen2Audio: each encoder layer and each decoder layer."""
    return [*model.audio_encoder.layers, *model.decoder.layers]


def wrap(module: nn.Module, d: Dist, layers: list[nn.Module]) -> nn.Module:
    """Apply FSDP2 (layers, then the root; shards move to d.device) or DDP (module already on d.device). bf16 comes
    from autocast in the loop, so the sharded weights and the gradient reductions stay in their own dtype."""
    if d.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(d.device.type, (d.world_size,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return module


def no_sync(module: nn.Module, d: Dist, sync: bool):
    """Skip the gradient all-reduce of micro-batches before the last of a step (it is only a saving)."""
    if d.strategy == "ddp" and not sync:
        return module.no_sync()
    if d.strategy == "fsdp":
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """Sum a dict of numbers over all processes (in float64, so token counts stay exact)."""
    if d.world_size == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def broadcast_object(obj, d: Dist):
    if d.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave together: a process that tears its group down while another still talks to it can abort."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

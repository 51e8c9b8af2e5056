"""Past one process: torchrun detection, DDP / FSDP2 wrapping, per-rank seeds and devices,
and gathering sharded state for checkpoints. Nothing here is home-made distribution: it is
`torch.distributed` (gloo on CPU, nccl on GPU) configured for the training loop."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robofm.config import TrainConfig

if TYPE_CHECKING:
    from robofm.train.loop import TrainState


def world_size() -> int:
    """Ranks in the initialised process group; 1 outside torchrun."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of `rank` at `step` under torchrun. Without it every rank would draw
    the same flow/diffusion noise and timesteps for its i-th sample (one seed for all)."""
    return int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1)[0])


def train_device(cfg: TrainConfig) -> torch.device:
    """cfg.device, or under "auto" this rank's CUDA device when there is one, else the CPU."""
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """(rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, world: int) -> torch.nn.Module | None:
    if world <= 1:
        return None
    if cfg.fsdp:  # sharded in place by `shard_model` before the optimizer was built
        return model
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2, in place: each transformer block of the encoders and trunk, then the rest. The
    head stays in the root unit: it calls its blocks' attention projections outside their
    `forward` (cached keys/values), which a per-block unit would not have gathered. The
    parameters become new (DTensor) objects, so this runs before the optimizer and the
    freeze map are built."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for name, module in model.named_modules():
        if type(module).__name__ == "Block" and not name.startswith("head."):
            fully_shard(module)
    fully_shard(model)
    register_fsdp_forward_method(model, "sample_actions")  # validation gathers weights too


def gather_full_state(state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """FSDP: full (unsharded, CPU) model and optimizer state dicts; a collective every rank
    calls, only rank 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(state.model, options=opts)
    return weights, get_optimizer_state_dict(state.model, state.optimizer, options=opts)


class FullWeights:
    """What `save_checkpoint` reads from a model (`cfg`, `state_dict()`), with gathered
    full weights in place of an FSDP model's shards."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        self.cfg, self._weights = model.cfg, weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._weights

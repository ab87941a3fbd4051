"""FSDP2 (`train.data_parallel: fsdp2`): parameters, gradients and optimizer state sharded
over the ranks, for policies whose replica plus Adam state does not fit one device.

The update stays the single-process update of `grpo_core.parallel.distributed` (global normalisers,
whole groups per rank); what changes is where the tensors live:
- `fully_shard` wraps each decoder block, then the root, so one block is gathered at a time.
  The root is a `TokenLogprobs` around the causal LM: the log-prob routine calls the backbone
  and the LM head separately, and FSDP2 gathers the root's own parameters (embeddings, final
  norm, a tied LM head) only inside the root's forward;
- FSDP2 runs collectives inside forward (all-gather) and backward (reduce-scatter), so every
  rank must run the SAME number of forward/backward passes: a rank with fewer micro-batches
  runs zero-weight passes (`pad_passes`, `zero_pass`);
- FSDP2 averages gradients over ranks while the global token weights need their SUM, so the
  backward loss is scaled by the world size (`grad_scale`), which is exact;
- weights for the sampler and checkpoints are gathered whole (`full`), on every rank;
- resume state is the full state dict (`torch.distributed.checkpoint.state_dict`), written
  by rank 0 and loaded by every rank, so a job can resume on another number of ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from grpo_core.parallel import distributed

# Modules wrapped one by one: the repeated transformer blocks of HF causal LMs.
BLOCK_SUFFIXES = ("DecoderLayer", "Block")


def shard(model: nn.Module) -> nn.Module:
    """Apply FSDP2 to `model` in place (each transformer block, then the root); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(distributed.device().type, (distributed.world(),))
    blocks = [m for m in model.modules() if type(m).__name__.endswith(BLOCK_SUFFIXES)]
    if not blocks:
        raise ValueError(f"train.data_parallel fsdp2: no transformer blocks found in "
                         f"{type(model).__name__} (looked for classes ending in {BLOCK_SUFFIXES})")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full(t: Tensor) -> Tensor:
    """The whole tensor of a sharded DTensor (collective: every rank must call it, in the same
    order); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def pad_passes(local: int) -> int:
    """The number of forward/backward passes every rank must run: the most any rank has."""
    return int(distributed.all_reduce(torch.tensor([float(local)]), "max").item())


def zero_pass(scorer: nn.Module, device: torch.device, *, backward: bool) -> None:
    """A forward (and backward) of a sharded `TokenLogprobs` through every block, with an
    exactly zero gradient: it only joins the collectives, for a rank that has run out of
    micro-batches (or holds one with no loss tokens)."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    logp = scorer(ids, torch.ones_like(ids), torch.ones((1, 1), device=device))
    if backward:
        (logp.sum() * 0.0).backward()


def grad_scale() -> float:
    """Multiplier of the backward loss: FSDP2 averages gradients over the ranks, while the
    global token weights make the ranks' losses add up to the batch loss (a sum)."""
    return float(distributed.world())


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state, unsharded and on CPU, on rank 0 ({} elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": model_sd, "optimizer": optim_sd} if distributed.is_main() else {}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Load what `full_state` saved into the sharded model and optimizer (every rank holds
    the full state, read from the shared resume directory)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))

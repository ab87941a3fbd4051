"""How the update step is spread over processes: one object, chosen once, that the Learner
asks for every step that differs between one process, replicas and FSDP2 shards.

- `SingleProcess` (no torchrun): every method is the identity or the plain call.
- `Replicated` (`train.data_parallel: replicate`): a full replica per rank; normalisers and
  metrics are global and gradients are summed with one bucketed all-reduce after the
  micro-batch accumulation (`grpo_core.parallel.distributed` says why not the DDP wrapper).
- `Sharded` (`train.data_parallel: fsdp2`): parameters, gradients and Adam state sharded
  (`grpo_core.parallel.sharding`); FSDP2 reduce-scatters gradients in backward, and every
  rank runs the same number of forward/backward passes.

`make_plan(data_parallel, world, device)` picks one from `PLANS`; with one process the
setting does not matter. Scorers are `TokenLogprobs`-like module calls
`(input_ids, attention_mask, completion_mask, **options) -> (b, w)`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from grpo_core.algorithm.losses import token_weights
from grpo_core.parallel import distributed, sharding
from grpo_core.parallel.weights import hf_weights, store_linears_in

Scorer = Callable[..., Tensor]


class SingleProcess:
    """One process: nothing to communicate."""

    supports_lora = True
    # a group's prompt may run once for its completions (a second call of each block)
    shares_prompt = True
    grad_scale = 1.0  # multiplier of the backward loss

    def __init__(self, device: torch.device):
        self.device = device

    def check_rows(self, has_rows: bool) -> None:
        """Refuse an update without rows: only a rank under torchrun may have none."""
        if not has_rows:
            raise ValueError("update(None) is only for a rank with no rows under torchrun")

    def start(self, model: nn.Module) -> None:
        """Make every rank begin from the same weights (here: nothing to do)."""

    def wrap(self, scorer: nn.Module) -> nn.Module:
        """The scorer as this plan runs it."""
        return scorer

    def store_frozen(self, model: nn.Module, dtype: torch.dtype) -> None:
        """Store a frozen model's linear layers in the autocast dtype it always runs under
        (`store_linears_in`: outputs unchanged, half the bytes for bfloat16)."""
        store_linears_in(model, dtype)

    # ------------------------------------------------------------------ the step
    def token_weights(self, mask: Tensor, mode: str, max_len: Optional[int]) -> Tensor:
        """`(B, T)` mask -> `(B, T)` per-token weights of the loss reduction `mode`."""
        return token_weights(mask, mode, max_len)

    def passes(self, local: int) -> int:
        """How many forward/backward passes this rank runs for its `local` micro-batches."""
        return local

    def idle_passes(self, scorer: Scorer, count: int, *, backward: bool) -> None:
        """`count` passes with an exactly zero gradient that only join the collectives of
        the other ranks (none here)."""

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Turn each rank's accumulated gradient into the full-batch gradient, in place."""

    def total(self, t: Tensor) -> Tensor:
        """`t` summed over ranks (a copy), for the loss and the token count."""
        return t

    def full(self, t: Tensor) -> Tensor:
        """The whole tensor (e.g. the clipped gradient norm) on every rank."""
        return t

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """The Learner's metric sums over all ranks (`distributed.reduce_sums`)."""
        return sums

    # ------------------------------------------------------------------ state
    def train_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """{"model": ..., "optimizer": ...} to resume from."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def load_train_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def module_state(self, module: nn.Module) -> dict[str, Tensor]:
        """A frozen module's weights to resume from."""
        return module.state_dict()

    def load_module_state(self, module: nn.Module, state: dict[str, Tensor]) -> None:
        module.load_state_dict(state)

    def copy_weights(self, source: nn.Module, target: nn.Module) -> None:
        """Copy `source`'s weights into `target` (LoRA merged in, under HF names, cast to
        `target`'s dtypes)."""
        with torch.no_grad():
            target.load_state_dict(dict(hf_weights(source)))


class DataParallel(SingleProcess):
    """What replicas and shards share under torchrun: every rank updates on its shard of
    whole groups, with global normalisers and reduced metrics, so that every rank takes the
    single-process step on the union of the shards."""

    def __init__(self, device: torch.device, world: int):
        super().__init__(device)
        self.world = world

    def check_rows(self, has_rows: bool) -> None:
        """A rank whose groups were all filtered still takes part (with zero gradients)."""

    def start(self, model: nn.Module) -> None:
        """Rank 0's weights everywhere: identical replicas from the start (LoRA init too)."""
        distributed.broadcast_params(model.parameters())

    def token_weights(self, mask: Tensor, mode: str, max_len: Optional[int]) -> Tensor:
        """Normalised over ALL ranks' rows (collective)."""
        return distributed.global_token_weights(mask, mode, max_len)

    def total(self, t: Tensor) -> Tensor:
        return distributed.all_reduce(t)

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return distributed.reduce_sums(sums)


class Replicated(DataParallel):
    """A full replica per rank; gradients summed after accumulation."""

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        distributed.all_reduce_grads(params)


class Sharded(DataParallel):
    """FSDP2: parameters, gradients and optimizer state sharded over the ranks."""

    supports_lora = False
    # FSDP2 would see each block called twice per forward (prompt, then completions): it
    # takes the plain one-row-one-sequence forward
    shares_prompt = False

    def __init__(self, device: torch.device, world: int):
        super().__init__(device, world)
        self.grad_scale = sharding.grad_scale()  # FSDP2 averages, the global weights sum

    def wrap(self, scorer: nn.Module) -> nn.Module:
        return sharding.shard(scorer)

    def store_frozen(self, model: nn.Module, dtype: torch.dtype) -> None:
        """Nothing: FSDP2 wants one dtype per module."""

    def passes(self, local: int) -> int:
        """The most any rank has (collective): FSDP2 runs collectives in every pass."""
        return sharding.pad_passes(local)

    def idle_passes(self, scorer: Scorer, count: int, *, backward: bool) -> None:
        with contextlib.nullcontext() if backward else torch.no_grad():
            for _ in range(count):
                sharding.zero_pass(scorer, self.device, backward=backward)

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Nothing: FSDP2 has reduce-scattered the gradients in backward already."""

    def full(self, t: Tensor) -> Tensor:
        return sharding.full(t)

    def train_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full state on rank 0 ({} elsewhere). Collective."""
        return sharding.full_state(model, optimizer)

    def load_train_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
        sharding.load_full_state(model, optimizer, state)

    def module_state(self, module: nn.Module) -> dict[str, Tensor]:
        """Gathered whole (collective)."""
        return dict(hf_weights(module))

    def load_module_state(self, module: nn.Module, state: dict[str, Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))

    def copy_weights(self, source: nn.Module, target: nn.Module) -> None:
        """Shard for shard: both are sharded the same way."""
        with torch.no_grad():
            for dst, src in zip(target.parameters(), source.parameters()):
                dst.copy_(src)


PLANS: dict[str, type[DataParallel]] = {"replicate": Replicated, "fsdp2": Sharded}


def make_plan(data_parallel: str, world: int, device: torch.device, *,
              lora: bool = False) -> SingleProcess:
    """The plan for `world` processes and `train.data_parallel` (a key of `PLANS`)."""
    if data_parallel not in PLANS:
        raise ValueError(f"unknown data_parallel {data_parallel!r}; choose one of {sorted(PLANS)}")
    if world == 1:
        return SingleProcess(device)
    plan = PLANS[data_parallel]
    if lora and not plan.supports_lora:
        raise ValueError(f"train.data_parallel {data_parallel} with LoRA is not supported: use "
                         "replicate (LoRA adapters are small enough to replicate)")
    return plan(device, world)

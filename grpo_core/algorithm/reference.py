"""The reference model of the KL term: one interface, two implementations.

The KL penalty of GRPO (DeepSeekMath, arXiv 2402.03300, eq. 3-4) is measured against a
reference policy, the initial one. With beta = 0 the Learner holds no reference at all (no
forward). Otherwise the reference is:

- `FrozenCopy`: a frozen copy of the initial policy (or a model given explicitly). Under
  bfloat16 autocast its linear layers are stored in bfloat16: it only ever runs under
  autocast, which would cast those weights to bfloat16 on every call, so its log-probs are
  bit-identical and it holds 2 bytes a weight instead of 4 (not under FSDP2, which wants one
  dtype per module). Iterative GRPO (section 4.1.3, `ref_refresh_every`) copies the policy
  into it, so its weights are part of the resume state.
- `AdaptersDisabled`: with LoRA, the policy itself with its adapters switched off, so no
  copy is held. It cannot be refreshed (the base weights never train).

`make_reference` picks between them.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from grpo_core.algorithm.batch import RolloutBatch
from grpo_core.algorithm.logprobs import TokenLogprobs, token_logprobs
from grpo_core.parallel.plan import SingleProcess
from grpo_core.parallel.weights import is_peft

NO_REFRESH = "ref_refresh_every needs LoRA off or an explicit reference model"


class Reference:
    """What the update step asks of a reference model. `scorer` is its log-prob routine as a
    module call `(input_ids, attention_mask, completion_mask, **options) -> (b, w)`: what the
    parallelism plan wraps and runs its idle passes through."""

    scorer: nn.Module

    def logprobs(self, mb: RolloutBatch, mask: Tensor, *, temperature: float,
                 share_prompt: bool, fused: bool = False) -> Tensor:
        """`(b, w)` log-probs of a micro-batch's completion tokens under the reference
        (`mask`: its `(b, w)` loss mask). Call it under no_grad and the policy's autocast."""
        return self.scorer(mb.input_ids, mb.attention_mask, mask, temperature=temperature,
                           share_prompt=share_prompt, fused=fused)

    def refresh(self, policy: nn.Module) -> None:
        """Copy the current policy into the reference (iterative GRPO)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a refreshed reference needs to resume ({} when it never changes)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class FrozenCopy(Reference):
    """A frozen model (the initial policy's copy), scored through the parallelism plan."""

    def __init__(self, model: nn.Module, plan: SingleProcess, *, bf16: bool):
        self.model = model.eval().requires_grad_(False)
        self.plan = plan
        if bf16:
            plan.store_frozen(self.model, torch.bfloat16)
        self.scorer = plan.wrap(TokenLogprobs(self.model))

    def refresh(self, policy: nn.Module) -> None:
        self.plan.copy_weights(policy, self.model)

    def state_dict(self) -> dict[str, Any]:
        return self.plan.module_state(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_module_state(self.model, state)


class AdaptersOff(nn.Module):
    """`token_logprobs` of a peft model with its adapters disabled, in eval mode."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor,
                **options) -> Tensor:
        was_training = self.lm.training
        self.lm.eval()
        with self.lm.disable_adapter():
            out = token_logprobs(self.lm, input_ids, attention_mask, completion_mask, **options)
        self.lm.train(was_training)
        return out


class AdaptersDisabled(Reference):
    """The LoRA policy with its adapters switched off: no copy."""

    def __init__(self, policy: nn.Module):
        self.scorer = AdaptersOff(policy)

    def refresh(self, policy: nn.Module) -> None:
        raise RuntimeError(NO_REFRESH)


def make_reference(policy: nn.Module, plan: SingleProcess, *, given: Optional[nn.Module] = None,
                   bf16: bool = False, refreshable: bool = False) -> Reference:
    """The reference for `policy`: `given` if there is one, else the LoRA policy without
    adapters, else a frozen copy of `policy` (copy it before the plan shards the policy).
    `bf16`: it runs under bfloat16 autocast. `refreshable`: `ref_refresh_every` is set."""
    if given is None and is_peft(policy):
        if refreshable:
            raise ValueError(NO_REFRESH)
        return AdaptersDisabled(policy)
    return FrozenCopy(given if given is not None else copy.deepcopy(policy), plan, bf16=bf16)

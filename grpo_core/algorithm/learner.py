"""The GRPO update step: one `Learner.update(batch)` per iteration of the RL loop.

An iteration (DeepSeekMath, arXiv 2402.03300, Algorithm 1, inner loop) runs `mu` epochs over
the same rollouts; each epoch is ONE optimizer step whose gradient is accumulated over
micro-batches. The per-token weights of the chosen reduction are computed over the whole
batch first (`grpo_core.algorithm.losses.token_weights`), so the accumulated gradient equals the
full-batch gradient for every aggregation mode.

Choices that depart from or refine the paper:
- `old_logp` is not a separate forward pass: the policy is unchanged during epoch 0, so the
  epoch-0 log-probs (detached) ARE pi_old; they are stored and reused for epochs 1..mu-1.
  With mu = 1 the ratio is exactly 1 and the step is REINFORCE with the group baseline.
- The reference forward is skipped entirely when beta = 0. With beta > 0 and no reference
  given, the reference is a frozen copy of the initial policy (with LoRA: the policy with
  its adapters disabled, no copy); `ref_refresh_every = K` copies the policy into the
  reference every K iterations (the paper's iterative GRPO, section 4.1.3). Both, and the
  frozen copy's bfloat16 storage under autocast, are in `grpo_core.algorithm.reference`.
- TIS (`tis_cap`): each token's policy-gradient term is weighted by
  min(exp(old_logp_trainer - logp_sampler), cap) when the batch carries sampler log-probs.
- `mask_truncated` drops completions that hit the token budget (DAPO's overlong filtering,
  arXiv 2503.14476) from the loss and from the token and sequence counts of the normalisers;
  Dr. GRPO's constant B * max_len still counts them as rows, so masking a row leaves the
  other rows' weights as they were (`grpo_core.algorithm.losses`).
- A non-finite loss or gradient norm skips the optimizer step (counted in `skipped`).
- Under `torchrun` (world size > 1) each rank updates on its shard of whole groups: the
  normalisers are global, gradients are summed over ranks before clipping, and metrics are
  reduced, so every rank takes the single-process step (`grpo_core.parallel.distributed`).
  A rank with no rows this iteration calls `update(None)` to take part. With one process
  no collective runs.
- `data_parallel`: `replicate` keeps a full replica per rank and sums gradients with one
  bucketed all-reduce after accumulation (DDP's algorithm; see `grpo_core.parallel.distributed`
  for why not the DDP wrapper); `fsdp2` shards parameters, gradients and Adam state
  (`grpo_core.parallel.sharding`), and every rank then runs the same number of passes. Each
  difference is a method of the plan (`grpo_core.parallel.plan`), so `_epoch` and `_step`
  read as the single-process step.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from grpo_core.algorithm.batch import RolloutBatch, prompt_chunks
from grpo_core.algorithm.logprobs import TokenLogprobs
from grpo_core.algorithm.losses import policy_loss
from grpo_core.algorithm.optim import UpdateHyper, make_optimizer
from grpo_core.algorithm.reference import make_reference
from grpo_core.parallel import distributed
from grpo_core.parallel.hardware import autocast_enabled
from grpo_core.parallel.plan import make_plan
from grpo_core.parallel.weights import apply_lora, hf_weights, save_hf_dir


class Learner:
    """Owns the policy, its optimizer and schedule, the reference model and the parallelism
    plan (`grpo_core.parallel.plan`: one process, replicas or FSDP2 shards)."""

    def __init__(self, policy: nn.Module, hyper: UpdateHyper,
                 reference: Optional[nn.Module] = None):
        self.hyper = hyper
        self.device = next(policy.parameters()).device
        self.plan = make_plan(hyper.data_parallel, distributed.world(), self.device,
                              lora=hyper.lora_enabled)
        self.model = (apply_lora(policy, hyper.lora_r, hyper.lora_alpha, hyper.lora_dropout,
                                 hyper.lora_target_modules) if hyper.lora_enabled else policy)
        self.plan.start(self.model)
        if hyper.gradient_checkpointing:  # non-reentrant: works with frozen inputs and LoRA
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.bf16 = autocast_enabled(hyper.autocast, self.device)
        # before the policy is wrapped: a copy of the plain policy, wrapped the same way
        self.reference = (make_reference(self.model, self.plan, given=reference, bf16=self.bf16,
                                         refreshable=bool(hyper.ref_refresh_every))
                          if hyper.beta > 0 else None)
        # the log-prob routine as a module call: what FSDP2 wraps
        self.policy_scorer = self.plan.wrap(TokenLogprobs(self.model))
        self.share_prompt = hyper.shared_prompt_forward and self.plan.shares_prompt
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(self.params, hyper)
        self.iteration = 0

    def autocast(self):
        """The autocast context every forward runs under (bfloat16, or disabled)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.bf16)

    # ------------------------------------------------------------------ the update
    def update(self, batch: Optional[RolloutBatch]) -> dict[str, float]:
        """One GRPO iteration on a batch of rollouts -> metrics (plain floats). Under torchrun,
        `batch` is this rank's shard (None: no rows here, but the rank still takes part)."""
        h = self.hyper
        self.plan.check_rows(batch is not None)
        mask = self._loss_mask(batch)  # (B, T)
        batch = batch.to(self.device) if batch is not None else None
        weights = self.plan.token_weights(mask, h.loss_aggregation, h.max_completion_len)  # (B, T)
        chunks = self._chunks(batch) if batch is not None else ()
        self.passes = self.plan.passes(len(chunks))  # agreed before any pass
        start = time.perf_counter()
        ref = self._reference_logp(batch, mask, chunks)  # (B, T) or None
        ref_s = time.perf_counter() - start
        state = {"old": torch.zeros_like(weights), "isw": torch.ones_like(weights)}
        sums: dict[str, float] = defaultdict(float)
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        for epoch in range(h.mu):
            self._epoch(batch, mask, weights, ref, chunks, epoch, state, sums)
        self.skip_iteration()
        return self._summary(sums, mask, lr, ref_s, time.perf_counter() - start - ref_s)

    def _chunks(self, batch: RolloutBatch) -> list[Tensor] | tuple[Tensor, ...]:
        rows = self._trained_rows(batch)
        if self.share_prompt:
            return prompt_chunks(batch, rows, self.hyper.micro_batch_size)
        return rows.split(self.hyper.micro_batch_size)

    def _trained_rows(self, batch: RolloutBatch) -> Tensor:
        """Indices of the rows that go through forward and backward. Without the KL term
        (beta = 0) a row whose advantage is 0 has an exactly zero gradient (each of its loss
        terms is multiplied by the advantage), so it is left out, while the normalisers still
        count its tokens: the step is unchanged and the compute is saved. Early in training
        most groups have all-equal rewards, hence zero advantages."""
        rows = torch.arange(batch.size, device=self.device)
        return rows[batch.advantages != 0] if self.hyper.beta == 0 else rows

    def _loss_mask(self, batch: Optional[RolloutBatch]) -> Tensor:
        if batch is None:
            return torch.zeros((0, 1), device=self.device)
        mask = batch.completion_mask.to(self.device)  # (B, T)
        if self.hyper.mask_truncated:
            mask = mask * (~batch.truncated.to(self.device)).unsqueeze(1).to(mask.dtype)
        return mask

    def skip_iteration(self) -> None:
        """End an iteration: advance the schedule and the counter, refresh the reference
        every `ref_refresh_every` iterations. `update` calls it; call it directly for an
        iteration with nothing to train on (every group filtered) to keep the schedule aligned."""
        with warnings.catch_warnings():  # the schedule counts iterations, skipped steps included
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.iteration += 1
        every = self.hyper.ref_refresh_every
        if every and self.iteration % every == 0 and self.reference is not None:
            self.refresh_reference()

    def _epoch(self, batch, mask, weights, ref, chunks, epoch, state, sums) -> None:
        """Accumulate the full-batch gradient over micro-batches, then one optimizer step."""
        h = self.hyper
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for idx in chunks:
            mb = batch.rows(idx)
            w = mb.completion_len
            mb_mask = mask[idx][:, :w]  # (b, w)
            if mb_mask.sum() == 0:  # no loss token: the pass still counts for the plan
                self.plan.idle_passes(self.policy_scorer, 1, backward=True)
                continue
            with self.autocast():
                logp, entropy = self.policy_scorer(mb.input_ids, mb.attention_mask, mb_mask,
                                                   temperature=h.temperature, with_entropy=True,
                                                   chunk_tokens=h.chunk_tokens,
                                                   share_prompt=self.share_prompt,
                                                   fused=h.fused_logprobs)
            if epoch == 0:  # the policy has not moved yet: these are pi_old's log-probs
                state["old"][idx, :w] = logp.detach()
                if h.tis_cap and mb.sampler_logp is not None:
                    gap = (logp.detach() - mb.sampler_logp) * mb_mask
                    state["isw"][idx, :w] = torch.exp(gap).clamp(max=h.tis_cap)
            loss_tok, m = policy_loss(
                logp, state["old"][idx][:, :w], mb.advantages, mb_mask,
                ref_logp=None if ref is None else ref[idx][:, :w], beta=h.beta,
                clip_low=h.clip_low, clip_high=h.clip_high, ratio_level=h.ratio_level,
                is_weight=state["isw"][idx][:, :w] if h.tis_cap else None)
            loss = (loss_tok * weights[idx][:, :w]).sum()
            (loss * self.plan.grad_scale).backward()
            loss_sum += loss.detach()
            _accumulate(sums, m, entropy, mb_mask)
        self.plan.idle_passes(self.policy_scorer, self.passes - len(chunks), backward=True)
        self._step(loss_sum, sums)

    def _step(self, loss_sum: Tensor, sums: dict[str, float]) -> None:
        for p in self.params:  # untouched by any backward (no trained rows): a zero gradient,
            if p.grad is None:  # so that Adam's moments move exactly as if it had been computed
                p.grad = torch.zeros_like(p)
        self.plan.sum_grads(self.params)  # the full-batch gradient and loss: every rank's share
        loss_sum = self.plan.total(loss_sum)
        norm = self.plan.full(torch.nn.utils.clip_grad_norm_(self.params, self.hyper.max_grad_norm))
        sums["loss"] += float(loss_sum)
        sums["epochs"] += 1
        if not (torch.isfinite(loss_sum) and torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            sums["skipped"] += 1
            return
        sums["grad_norm"] += float(norm)
        self.optimizer.step()

    def _reference_logp(self, batch, mask, chunks) -> Optional[Tensor]:
        if self.reference is None:
            return None
        out = torch.zeros_like(mask)  # (B, T)
        with torch.no_grad(), self.autocast():
            for idx in chunks:
                mb = batch.rows(idx)
                w = mb.completion_len
                out[idx, :w] = self.reference.logprobs(mb, mask[idx][:, :w],
                                                       temperature=self.hyper.temperature,
                                                       share_prompt=self.share_prompt,
                                                       fused=self.hyper.fused_logprobs)
        self.plan.idle_passes(self.reference.scorer, self.passes - len(chunks), backward=False)
        return out

    def _summary(self, sums, mask, lr, ref_s, update_s) -> dict[str, float]:
        sums = self.plan.reduce_sums(sums)
        trained = sums.pop("tokens", 0.0)  # tokens of the rows that went through the model
        tokens = trained if trained > 0 else float("nan")  # no such row: the stats are unknown
        epochs = max(sums.get("epochs", 1.0), 1.0)
        steps = max(epochs - sums.get("skipped", 0.0), 1.0)
        out = {k: sums.get(k, 0.0) / tokens
               for k in ("clip_frac_low", "clip_frac_high", "ratio_mean", "kl", "entropy")}
        out.update(loss=sums.get("loss", 0.0) / epochs, grad_norm=sums.get("grad_norm", 0.0) / steps,
                   ratio_min=sums.get("ratio_min", 1.0), ratio_max=sums.get("ratio_max", 1.0),
                   lr=lr, skipped=sums.get("skipped", 0.0), optimizer_steps=epochs,
                   tokens=float(self.plan.total(mask.sum())), ref_seconds=ref_s, update_seconds=update_s)
        return out

    # ------------------------------------------------------------------ weights and state
    def refresh_reference(self) -> None:
        """Copy the current policy into the reference (iterative GRPO)."""
        if self.reference is not None:
            self.reference.refresh(self.model)

    def sync_weights(self) -> Iterator[tuple[str, Tensor]]:
        """(HF name, tensor) pairs for the sampler's `load_weights` (LoRA merged in); whole
        tensors under FSDP2 (collective: every rank syncs its own engine)."""
        return hf_weights(self.model)

    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Collective under FSDP2 (every rank gathers, rank 0 writes): call it on every rank."""
        state = dict(hf_weights(self.model))
        if distributed.is_main():
            save_hf_dir(self.model, out_dir, tokenizer, state=state)
        return Path(out_dir)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizer, schedule, iteration, RNG, and
        a refreshed reference. Collective under FSDP2 (the full state, on rank 0; {} for model
        and optimizer elsewhere)."""
        state = {**self.plan.train_state(self.model, self.optimizer),
                 "scheduler": self.scheduler.state_dict(),
                 "iteration": self.iteration, "rng": torch.get_rng_state()}
        if self.reference is not None and self.hyper.ref_refresh_every:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_train_state(self.model, self.optimizer, state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        torch.set_rng_state(state["rng"])
        if "reference" in state and self.reference is not None:
            self.reference.load_state_dict(state["reference"])


def _accumulate(sums: dict[str, float], m: dict[str, Tensor], entropy: Tensor,
                mask: Tensor) -> None:
    """Token-weighted sums of a micro-batch's metrics (means are taken in `_summary`)."""
    n = float(mask.sum())
    sums["tokens"] += n
    for key in ("clip_frac_low", "clip_frac_high", "ratio_mean", "kl"):
        sums[key] += float(m[key]) * n
    sums["entropy"] += float((entropy * mask).sum())
    sums["ratio_min"] = min(sums.get("ratio_min", float("inf")), float(m["ratio_min"]))
    sums["ratio_max"] = max(sums.get("ratio_max", float("-inf")), float(m["ratio_max"]))

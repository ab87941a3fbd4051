"""Hyper-parameters of the update step, the optimizer and the learning-rate schedule.

`UpdateHyper` is a plain frozen dataclass (not the Config object): the flow builds it with
`UpdateHyper.from_sections(cfg.algorithm.model_dump(), cfg.train.model_dump(), ...)`.
The schedule counts GRPO iterations (one `Learner.update` call each), not optimizer steps:
with `mu > 1` inner epochs an iteration takes mu optimizer steps at the same rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Optional

import torch

from grpo_core.algorithm.logprobs import DEFAULT_CHUNK_TOKENS
from grpo_core.config import AlgorithmConfig, RolloutConfig, TrainConfig

_ALGORITHM = AlgorithmConfig()
_TRAIN = TrainConfig()
_LORA = _TRAIN.lora
_ROLLOUT = RolloutConfig()


@dataclass(frozen=True)
class UpdateHyper:
    """Every default is the config schema's (`grpo_core.config.schema`), the only place a
    default is written."""

    # algorithm
    loss_aggregation: str = _ALGORITHM.loss_aggregation
    ratio_level: str = _ALGORITHM.ratio_level
    beta: float = _ALGORITHM.beta
    clip_low: float = _ALGORITHM.clip_low
    clip_high: float = _ALGORITHM.clip_high
    mu: int = _ALGORITHM.mu
    tis_cap: Optional[float] = _ALGORITHM.tis_cap
    mask_truncated: bool = _ALGORITHM.mask_truncated
    ref_refresh_every: int = _ALGORITHM.ref_refresh_every
    # train
    learning_rate: float = _TRAIN.learning_rate
    warmup_iterations: int = _TRAIN.warmup_iterations
    lr_schedule: str = _TRAIN.lr_schedule
    iterations: int = _TRAIN.iterations
    weight_decay: float = _TRAIN.weight_decay
    adam_betas: tuple[float, float] = _TRAIN.adam_betas
    max_grad_norm: float = _TRAIN.max_grad_norm
    micro_batch_size: int = _TRAIN.micro_batch_size
    autocast: str = _TRAIN.autocast  # auto | bfloat16 | float32 (grpo_core.parallel.hardware)
    gradient_checkpointing: bool = _TRAIN.gradient_checkpointing
    data_parallel: str = _TRAIN.data_parallel  # under torchrun (grpo_core.parallel.plan)
    shared_prompt_forward: bool = _TRAIN.shared_prompt_forward
    fused_logprobs: bool = _TRAIN.fused_logprobs
    lora_enabled: bool = _LORA.enabled
    lora_r: int = _LORA.r
    lora_alpha: int = _LORA.alpha
    lora_dropout: float = _LORA.dropout
    lora_target_modules: tuple[str, ...] = _LORA.target_modules
    # from other stages
    temperature: float = _ROLLOUT.temperature  # the sampler's temperature
    max_completion_len: Optional[int] = None  # Dr. GRPO's constant (rollout.max_new_tokens)
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS  # tokens per LM-head chunk in the log-prob routine

    @classmethod
    def from_sections(cls, algorithm: dict[str, Any], train: dict[str, Any], *,
                      temperature: float = _ROLLOUT.temperature,
                      max_completion_len: Optional[int] = None,
                      **extra: Any) -> "UpdateHyper":
        """From `cfg.algorithm.model_dump()` and `cfg.train.model_dump()`; keys this step does
        not use (advantage, eps, output_dir, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in algorithm.items() if k in names}
        values.update({k: v for k, v in train.items() if k in names})
        for key, value in (train.get("lora") or {}).items():
            if f"lora_{key}" in names:
                values[f"lora_{key}"] = tuple(value) if isinstance(value, list) else value
        if isinstance(values.get("adam_betas"), list):
            values["adam_betas"] = tuple(values["adam_betas"])
        values.update(temperature=temperature, max_completion_len=max_completion_len, **extra)
        return cls(**values)


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base rate for iteration i (0-based): linear warm-up over `warmup`
    iterations ((i+1)/warmup), then `SCHEDULES[schedule]` of the remaining progress."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    decay = SCHEDULES[schedule]

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return decay(min(1.0, (i - warmup) / max(1, total - warmup)))
    return factor


SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def _can_fuse(params: list[torch.nn.Parameter]) -> bool:
    from torch.distributed.tensor import DTensor

    return not any(isinstance(p, DTensor) for p in params)


def make_optimizer(params: Iterable[torch.nn.Parameter], hyper: UpdateHyper):
    """AdamW + a per-iteration LambdaLR schedule. The fused kernel where every parameter is a
    plain tensor: one pass over each parameter and its state, where PyTorch's CPU default
    (one tensor at a time) makes several and allocates temporaries; about 0.07 s against
    0.25 s a step for SmolLM2-135M on 2 cores (docs/benchmarks.md). FSDP2's sharded
    parameters keep the default."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=hyper.learning_rate, betas=tuple(hyper.adam_betas),
                            weight_decay=hyper.weight_decay, fused=_can_fuse(params) or None)
    factor = lr_factor(hyper.lr_schedule, hyper.warmup_iterations, hyper.iterations)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

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


@dataclass(frozen=True)
class UpdateHyper:
    # algorithm
    loss_aggregation: str = "token_mean"
    ratio_level: str = "token"
    beta: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    mu: int = 1
    tis_cap: Optional[float] = None
    mask_truncated: bool = False
    ref_refresh_every: int = 0
    # train
    learning_rate: float = 5e-6
    warmup_iterations: int = 0
    lr_schedule: str = "constant"
    iterations: int = 10
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0
    micro_batch_size: int = 8
    autocast: str = "auto"  # auto: bfloat16 on CUDA and native-bf16 CPUs, else float32
    gradient_checkpointing: bool = False
    data_parallel: str = "replicate"  # replicate | fsdp2 (under torchrun)
    shared_prompt_forward: bool = True  # a group's prompt runs once per micro-batch
    lora_enabled: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # from other stages
    temperature: float = 1.0  # the sampler's temperature (rollout.temperature)
    max_completion_len: Optional[int] = None  # Dr. GRPO's constant (rollout.max_new_tokens)
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS  # tokens per LM-head chunk in the log-prob routine

    @classmethod
    def from_sections(cls, algorithm: dict[str, Any], train: dict[str, Any], *,
                      temperature: float = 1.0, max_completion_len: Optional[int] = None,
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


def make_optimizer(params: Iterable[torch.nn.Parameter], hyper: UpdateHyper):
    """AdamW + a per-iteration LambdaLR schedule."""
    opt = torch.optim.AdamW(list(params), lr=hyper.learning_rate, betas=tuple(hyper.adam_betas),
                            weight_decay=hyper.weight_decay)
    factor = lr_factor(hyper.lr_schedule, hyper.warmup_iterations, hyper.iterations)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

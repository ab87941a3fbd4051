"""The config tree: one frozen, strictly validated section per stage of the pipeline.

Every value is checked strictly (no silent "2" -> 2 coercion, no bool where a number belongs)
and unknown keys are errors. The defaults here are the only built-in defaults: params.yaml
spells them out for DVC and for the reader, and a test keeps the two equal. Stage functions
never receive this object: callers pass them plain values.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator

from grpo_core.config.base import Section
from grpo_core.config.datasets import (CustomDataset, DatasetSpec, check_custom_names,
                                       check_dataset_uses)

DEFAULT_PARAMS = "params.yaml"


# ----------------------------------------------------------------------------- data
class PromptConfig(Section):
    system: str = ""
    instruction: str = (
        "Solve the problem step by step. At the end, write the final answer as a number "
        "on its own line after '####'."
    )
    few_shot: int = Field(default=0, ge=0, le=8)  # worked examples from the first training set


class PassRateFilter(Section):
    """Train only on problems whose pass rate, measured in earlier runs' rollouts, lies in
    [min_rate, max_rate]: offline difficulty filtering. A group of G samples carries an
    advantage only when its rewards differ, so problems the policy never (or always) solves
    spend rollouts for nothing. Problems with fewer than `min_samples` earlier samples are
    dropped. The worked examples of the prompt are chosen before the filter, so the prompt the
    rates were measured with stays the prompt trained with."""

    rollouts: tuple[str, ...] = Field(min_length=1)  # rollout parquet files or folders of them
    reward: str = Field(default="gsm8k_accuracy", min_length=1)  # a sample passes when > 0
    min_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_rate: float = Field(default=0.99, ge=0.0, le=1.0)
    min_samples: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _rates_ordered(self) -> "PassRateFilter":
        if self.min_rate > self.max_rate:
            raise ValueError("min_rate must be <= max_rate")
        return self


class DataConfig(Section):
    dir: Optional[str] = None  # None: $GRPO_DATA_DIR, else the Hugging Face hub
    processed_dir: str = "data/processed"
    train: tuple[DatasetSpec, ...] = Field(
        default=(DatasetSpec(name="arithmetic", split="train"),), min_length=1
    )
    seed: int = 0
    # drop training rows whose question also appears in an evaluation set (after prepare)
    decontaminate: bool = False
    pass_rates: Optional[PassRateFilter] = None  # null = train on the whole mixture
    prompt: PromptConfig = PromptConfig()
    # your own verifiable datasets: name -> definition (files or hub id, fields, checker);
    # data.train and evaluate.datasets then use the name like a built-in one
    custom: dict[str, CustomDataset] = {}

    @model_validator(mode="after")
    def _custom_names(self) -> "DataConfig":
        check_custom_names(self.custom)
        return self


# ------------------------------------------------------------------------- validate
class ValidateConfig(Section):
    min_question_chars: int = Field(default=10, ge=1)
    max_question_chars: int = Field(default=8000, ge=1)
    report: str = "metrics/validation.json"
    data_docs: Optional[str] = "reports/data_docs"  # GX Data Docs HTML; null = none
    sample_rows: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "ValidateConfig":
        if self.min_question_chars > self.max_question_chars:
            raise ValueError("min_question_chars must be <= max_question_chars")
        return self


# ----------------------------------------------------------------------- checkpoint
class CheckpointConfig(Section):
    # local dir | hf:Org/Name | gguf:/path/model.gguf | bundled:smollm2-135m-instruct
    source: str = Field(default="bundled:smollm2-135m-instruct", min_length=1)
    output_dir: str = "models/sft"
    trust_remote_code: bool = False


# -------------------------------------------------------------------------- rollout
class RolloutConfig(Section):
    engine: Literal["vllm", "hf"] = "vllm"
    prompts_per_iteration: int = Field(default=4, ge=1)
    group_size: int = Field(default=8, ge=2)
    temperature: float = Field(default=0.8, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=128, ge=1)
    # dynamic sampling (DAPO): up to this many more rounds of prompts per iteration until
    # prompts_per_iteration groups have reward variance; > 0 drops the groups without (as
    # algorithm.filter_zero_variance); one process only
    refill_rounds: int = Field(default=0, ge=0)
    # adaptive group size: every group starts with this many completions and the ones with no
    # reward variance double, up to group_size, within the budget below; null: fixed groups
    min_group_size: Optional[int] = Field(default=None, ge=2)
    # its budget: at most this many completions per drawn prompt on average (an iteration's P
    # prompts: P x this); null: only group_size bounds a group
    samples_per_prompt: Optional[float] = Field(default=None, gt=0.0)
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = Field(default=512, ge=1)
    overlong_prompts: Literal["skip", "truncate"] = "skip"
    # auto: bfloat16 on GPU and on CPUs with native bf16, else float32 (grpo_core.parallel.hardware)
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    seed: int = 0
    output_dir: str = "rollouts"
    # vLLM memory: GiB of KV cache on CPU (auto: what one rollout batch can need, see
    # grpo_core.rollout.kv_cache_tokens); fraction of GPU memory on GPU.
    cpu_kv_cache_gib: float | str = "auto"
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    sleep_mode: bool = False
    # vLLM on CPU: torch.compile the model (about 1.3x the tokens/s, about a minute more per
    # engine start; pays off in runs of more than ~30 iterations). GPU: always compiled.
    cpu_compile: bool = False
    # vLLM on CPU: tokens per KV-cache block (a multiple of 32). Only full blocks are shared, so
    # the G samples of a prompt prefill it once only up to its last full block; vLLM's own CPU
    # default of 128 is longer than most GSM8K prompts, and every sample then prefills its whole
    # prompt (docs/benchmarks.md). GPU: vLLM's default.
    cpu_kv_block_size: int = Field(default=32, ge=32, multiple_of=32)

    @model_validator(mode="after")
    def _adaptive_sizes_ordered(self) -> "RolloutConfig":
        low = self.min_group_size
        if low is not None and low > self.group_size:
            raise ValueError(f"min_group_size ({low}) must be <= group_size ({self.group_size})")
        if low is not None and self.samples_per_prompt is not None and self.samples_per_prompt < low:
            raise ValueError(f"samples_per_prompt ({self.samples_per_prompt:g}) must be >= "
                             f"min_group_size ({low}): the first round alone spends that")
        return self

    @field_validator("cpu_kv_cache_gib", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value == "auto" or (number and value > 0):
            return float(value) if number else value
        raise ValueError(f"must be 'auto' or a number of GiB > 0, got {value!r}")


# --------------------------------------------------------------------------- reward
class RewardConfig(Section):
    # reward function name (or dotted path "pkg.module:function") -> weight
    functions: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 1.0}, min_length=1
    )
    timeout_s: float = Field(default=5.0, gt=0.0)
    overlong_buffer: int = Field(default=64, ge=1)  # soft_overlong: DAPO's L_cache
    answer_format: Literal["hashes", "boxed"] = "hashes"  # what `format` rewards
    reward_model: Optional[str] = None  # local dir of a sequence-classification model
    reward_model_batch_size: int = Field(default=8, ge=1)
    # a function's failures (exceptions, time-outs: scored 0) over the run: warn past this
    # share, stop the run past the other (None: never), once 64 completions are scored
    failure_warn_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    failure_stop_rate: Optional[float] = Field(default=0.5, gt=0.0, le=1.0)


# ------------------------------------------------------------------------ algorithm
class AlgorithmConfig(Section):
    advantage: Literal["grpo", "dr_grpo", "rloo", "batch_std", "median", "median_std"] = "grpo"
    eps: float = Field(default=1e-6, gt=0.0)
    loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = (
        "token_mean"
    )
    ratio_level: Literal["token", "sequence"] = "token"
    beta: float = Field(default=0.0, ge=0.0)
    clip_low: float = Field(default=0.2, gt=0.0, lt=1.0)
    clip_high: float = Field(default=0.2, gt=0.0)
    mu: int = Field(default=1, ge=1)
    tis_cap: Optional[float] = Field(default=None, gt=0.0)
    mask_truncated: bool = False
    filter_zero_variance: bool = False
    ref_refresh_every: int = Field(default=0, ge=0)  # 0 = never refresh the reference


# ---------------------------------------------------------------------------- gates
class GatesConfig(Section):
    """Great Expectations on every iteration's rollout records, before its update
    (grpo_core.rollout.gates). Hard checks stop the run: a reward that is not finite or
    outside what the reward functions can score, a group's advantages not summing to 0 (the
    mean-baseline modes: |sum| <= advantage_sum_tol * max(1, sum |A|)), a token count over
    rollout.max_new_tokens or rollout.max_prompt_tokens. Soft ones warn once a run: a share
    of the iteration's completions above its max_*_frac (1.0: never)."""

    enabled: bool = True
    advantage_sum_tol: float = Field(default=1e-3, gt=0.0)
    # 1.0 by default: a small model's samples are often cut off at the budget (the tests'
    # random ones always are); lower it for a model that should finish
    max_truncated_frac: float = Field(default=1.0, ge=0.0, le=1.0)
    max_empty_frac: float = Field(default=0.2, ge=0.0, le=1.0)
    # final numbers that also end another prompt's completion: the healthy level rises with
    # the prompts in the batch (dynamic sampling's dozens) and depends on the task
    # (docs/experiments.md); a policy guessing one number for every question goes to 1
    max_cross_prompt_answer_frac: float = Field(default=0.9, ge=0.0, le=1.0)
    # warn when the training reward rose while the quick evaluation fell (every
    # train.checkpoint_every iterations)
    warn_reward_hacking: bool = True


# ---------------------------------------------------------------------------- train
class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class TrainConfig(Section):
    iterations: int = Field(default=1000, ge=1)
    # wall-clock budget (None = none): `make run` trains for 5 minutes whatever the machine
    max_minutes: Optional[float] = Field(default=5.0, gt=0.0)
    learning_rate: float = Field(default=2e-5, ge=0.0)
    warmup_iterations: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    micro_batch_size: int = Field(default=8, ge=1)
    # auto: bfloat16 where it is native (GPU; CPU with AVX512-BF16/AMX), else float32
    # (grpo_core.parallel.hardware: emulated bf16 autocast is slower than float32)
    autocast: Literal["auto", "bfloat16", "float32"] = "auto"
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory
    # micro-batches never mix prompts and run their (shared) prompt once: a group's G
    # completions cost one prompt forward/backward instead of G (off under fsdp2, which
    # needs the plain forward; works with gradient checkpointing)
    shared_prompt_forward: bool = True
    # the LM head's log-softmax through torch.compile (grpo_core.algorithm.head_stats): fused
    # passes over the (tokens, vocabulary) logits, a few seconds of compiling per process;
    # eager where no compiler is found
    fused_logprobs: bool = True
    checkpoint_every: int = Field(default=10, ge=1)
    # the resume state (model, Adam, RNG: ~12 bytes a parameter) every K iterations and at the
    # end; a kill loses at most K - 1 iterations (a save costs a noticeable share of an
    # iteration: docs/benchmarks.md, Memory)
    resume_every: int = Field(default=10, ge=1)
    output_dir: str = "models/grpo"
    seed: int = 0
    # under torchrun: seconds a collective waits for the other ranks before the job fails
    # (covers rank 0's checkpoint + quick evaluation while the others wait)
    dist_timeout_s: float = Field(default=1800.0, gt=0.0)
    # under torchrun: replicate (full replica per rank, gradients all-reduced) | fsdp2
    # (parameters, gradients and Adam state sharded over the ranks)
    data_parallel: Literal["replicate", "fsdp2"] = "replicate"
    lora: LoraConfig = LoraConfig()


# ------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
    datasets: tuple[DatasetSpec, ...] = Field(
        # what `make run` measures: the task it trains on, and GSM8K and MATH-500 (a few
        # problems: what the training did to them, not a benchmark; rows null = the full set)
        default=(DatasetSpec(name="arithmetic", split="test", rows=200),
                 DatasetSpec(name="gsm8k", split="test", rows=25),
                 DatasetSpec(name="math500", split="test", rows=25)),
        min_length=1,
    )
    max_new_tokens: int = Field(default=128, ge=1)
    samples: int = Field(default=1, ge=1)  # k for maj@k / pass@k; 1 = greedy only
    quick_rows: int = Field(default=4, ge=1)  # per dataset, for the evaluation every K iterations
    final_rows: Optional[int] = Field(default=None, ge=1)  # per dataset, at the end of training
    temperature: float = Field(default=0.6, gt=0.0)
    output: str = "metrics/eval.json"
    # `grpo train` evaluates the starting checkpoint first, on the final evaluation's problems
    # and decoding, so the end shows before -> after with a paired CI; reused while the
    # checkpoint and these settings are unchanged (baseline_output)
    baseline: bool = True
    baseline_output: str = "metrics/eval_baseline.json"


# -------------------------------------------------------------------------- promote
class PromoteConfig(Section):
    """The promotion gate (grpo_core.evaluation.gate): the final policy becomes a new version
    of `registered_model` in the MLflow Model Registry, with `alias`, only when held-out
    accuracy measurably improved over the starting checkpoint."""

    enabled: bool = True
    registered_model: str = Field(default="grpo-policy", min_length=1)
    alias: str = Field(default="candidate", min_length=1)
    # evaluation sets whose paired 95% CI must lie above 0; () = the first evaluation set
    gain_on: tuple[str, ...] = ()
    metric: Literal["accuracy", "mean_of_k"] = "accuracy"  # mean_of_k needs evaluate.samples > 1
    no_regression: bool = True  # and no set worse beyond its CI


# ------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    mlflow_tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else ./mlflow.db
    experiment: str = Field(default="grpo", min_length=1)
    run_name: Optional[str] = None
    sample_table_rows: int = Field(default=16, ge=0)


class Config(Section):
    """The whole tree. `validate` is exposed as `validate_` (pydantic reserves the name)."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    checkpoint: CheckpointConfig = CheckpointConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    gates: GatesConfig = GatesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_by_name=True,
                              validate_by_alias=True)

    @model_validator(mode="after")
    def _datasets_defined(self) -> "Config":
        """Only the whole tree sees data.custom beside the lists that use its names."""
        check_dataset_uses(("data", "train"), self.data.train, self.data.custom)
        check_dataset_uses(("evaluate", "datasets"), self.evaluate.datasets, self.data.custom)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved tree as plain YAML-able values, keyed as in params.yaml."""
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, Any]:
        """`{"algorithm.beta": 0.0, ...}`: the form logged as MLflow params."""
        return dict(flatten(self.to_dict()))


def flatten(tree: Any, prefix: str = ""):
    """Yield (dotted key, leaf value) for a nested mapping."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree

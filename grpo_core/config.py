"""One frozen, validated config tree loaded from params.yaml, one section per stage.

Every value is checked strictly (no silent "2" -> 2 coercion, no bool where a number belongs),
unknown keys are errors, and every error is one line naming the file, line, key and what is
allowed. Overrides (`--set algorithm.beta=0.02`) are parsed as YAML scalars and validated the
same way. Stage functions never receive this object: callers pass them plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import re

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from grpo_core.errors import UserError

DEFAULT_PARAMS = "params.yaml"
PosInt = Field(ge=1)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data: Any) -> Any:
        """YAML gives lists; the frozen tree holds tuples (strict mode will not convert)."""
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return data


# ----------------------------------------------------------------------------- data
class DatasetSpec(Section):
    """One dataset split: `name` is a key of grpo_core.data.SOURCES (your own files go in the
    same layout under data.dir, as .jsonl, .json or .parquet)."""

    name: Literal["gsm8k", "math", "math500"]
    split: Literal["train", "test"] = "train"
    rows: Optional[int] = Field(default=None, ge=1)  # None = every row
    # difficulty, applied before `rows` are drawn (training sets; null = no limit):
    max_steps: Optional[int] = Field(default=None, ge=1)  # gsm8k: reference-solution lines
    max_level: Optional[int] = Field(default=None, ge=1, le=5)  # math, math500: MATH level

    @model_validator(mode="after")
    def _difficulty_fits_the_dataset(self) -> "DatasetSpec":
        if self.max_steps is not None and self.name != "gsm8k":
            raise ValueError(f"max_steps counts GSM8K solution steps; {self.name} has levels, "
                             "use max_level")
        if self.max_level is not None and self.name == "gsm8k":
            raise ValueError("max_level is a MATH level; gsm8k has none, use max_steps")
        return self


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
        default=(DatasetSpec(name="gsm8k", split="train"),), min_length=1
    )
    seed: int = 0
    # drop training rows whose question also appears in an evaluation set (after prepare)
    decontaminate: bool = False
    pass_rates: Optional[PassRateFilter] = None  # null = train on the whole mixture
    prompt: PromptConfig = PromptConfig()


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
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=200, ge=1)
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = Field(default=512, ge=1)
    overlong_prompts: Literal["skip", "truncate"] = "skip"
    # auto: bfloat16 on GPU and on CPUs with native bf16, else float32 (grpo_core.hardware)
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    seed: int = 0
    output_dir: str = "rollouts"
    # vLLM memory: GiB of KV cache on CPU (auto: what one rollout batch can need, see
    # grpo_core.rollout.kv_cache_tokens); fraction of GPU memory on GPU.
    cpu_kv_cache_gib: float | str = "auto"
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    sleep_mode: bool = False

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
        default_factory=lambda: {"gsm8k_accuracy": 1.0, "format": 0.5}, min_length=1
    )
    timeout_s: float = Field(default=5.0, gt=0.0)
    overlong_buffer: int = Field(default=64, ge=1)  # soft_overlong: DAPO's L_cache
    answer_format: Literal["hashes", "boxed"] = "hashes"  # what `format` rewards
    reward_model: Optional[str] = None  # local dir of a sequence-classification model
    reward_model_batch_size: int = Field(default=8, ge=1)


# ------------------------------------------------------------------------ algorithm
class AlgorithmConfig(Section):
    advantage: Literal["grpo", "dr_grpo", "rloo", "batch_std"] = "grpo"
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


# ---------------------------------------------------------------------------- train
class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class TrainConfig(Section):
    iterations: int = Field(default=10, ge=1)
    max_minutes: Optional[float] = Field(default=None, gt=0.0)  # wall-clock budget; None = none
    learning_rate: float = Field(default=5e-6, ge=0.0)
    warmup_iterations: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    micro_batch_size: int = Field(default=8, ge=1)
    # auto: bfloat16 where it is native (GPU; CPU with AVX512-BF16/AMX), else float32
    # (grpo_core.hardware: emulated bf16 autocast ran 1.5-2x slower than float32)
    autocast: Literal["auto", "bfloat16", "float32"] = "auto"
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory
    # micro-batches never mix prompts and run their (shared) prompt once: a group's G
    # completions cost one prompt forward/backward instead of G (off under fsdp2, which
    # needs the plain forward; works with gradient checkpointing)
    shared_prompt_forward: bool = True
    checkpoint_every: int = Field(default=5, ge=1)
    # the resume state (model, Adam, RNG: ~12 bytes a parameter) every K iterations and at the
    # end; a kill loses at most K - 1 iterations (1.6 GB took 5 s a save for SmolLM2-135M here)
    resume_every: int = Field(default=5, ge=1)
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
        default=(DatasetSpec(name="gsm8k", split="test"), DatasetSpec(name="math500", split="test")),
        min_length=1,
    )
    max_new_tokens: int = Field(default=256, ge=1)
    samples: int = Field(default=1, ge=1)  # k for maj@k / pass@k; 1 = greedy only
    quick_rows: int = Field(default=32, ge=1)  # per dataset, for the evaluation every K iterations
    final_rows: Optional[int] = Field(default=None, ge=1)  # per dataset, at the end of training
    temperature: float = Field(default=0.6, gt=0.0)
    output: str = "metrics/eval.json"


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
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_by_name=True,
                              validate_by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        """The resolved tree as plain YAML-able values, keyed as in params.yaml."""
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, Any]:
        """`{"algorithm.beta": 0.0, ...}`: the form logged as MLflow params."""
        return dict(_flatten(self.to_dict()))


# ------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `1e-6` is a float (YAML 1.1 reads it as a string) and only
    true/false are booleans (YAML 1.1 turns yes/no/on/off into booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read params.yaml (None or a missing default file: built-in defaults), apply
    `key.path=value` overrides, validate. Raises UserError with one line on any mistake."""
    raw, lines, where = _read_yaml(path)
    set_by: dict[str, str] = {}
    for item in overrides:
        set_by[apply_override(raw, item)] = f"--set {item}"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_explain(exc.errors()[0], lines, set_by, where)) from None


def _read_yaml(path):
    """-> (mapping, {dotted key: location}, file label)."""
    if path is None or (str(path) == DEFAULT_PARAMS and not Path(path).exists()):
        return {}, {}, "defaults"
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=_Loader)
        raw = _yaml(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{p}{at}: not valid YAML: {problem}") from None
    if raw is None:
        return {}, {}, str(p)
    if not isinstance(raw, dict):
        raise UserError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw, {k: f"{p}:{line}" for k, line in _key_lines(node)}, str(p)


def _key_lines(node, prefix=""):
    """Yield (dotted key, 1-based line) for every mapping key in a YAML node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            yield key, key_node.start_mark.line + 1
            yield from _key_lines(value_node, key + ".")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _key_lines(item, f"{prefix}{i}.")


def apply_override(raw: dict, item: str) -> str:
    """Apply one `KEY.PATH=VALUE` (the value read as YAML, as `grpo --set` reads it) to a raw
    params mapping in place, creating sections on the way -> the dotted key it set."""
    key, value = _parse_override(item)
    _set_path(raw, key, value, item)
    return key


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set algorithm.beta=0.02")
    try:
        value = _yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: the value is not a valid YAML scalar or list") from None
    return key.strip(), value


def _set_path(raw: dict, key: str, value: Any, item: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an optional section switched off (`null`)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _explain(err: dict, lines: dict[str, str], set_by: dict[str, str], where: str) -> str:
    """One line for the first validation error: location, key, problem, what is allowed."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    ctx = err.get("ctx") or {}
    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        msg = f"unknown key '{key}' (allowed here: {allowed})"
    elif kind == "literal_error":
        msg = f"{key} must be one of {ctx.get('expected')}, got {got!r}"
    elif kind in _BOUND_WORDS:
        msg = f"{key} must be {_BOUND_WORDS[kind]} {ctx.get(_BOUND_CTX[kind])}, got {got!r}"
    elif kind in ("too_short", "string_too_short") and not got:
        msg = f"{key} must not be empty"
    elif kind in ("too_short", "missing"):
        msg = f"{key} is required" if kind == "missing" else f"{key} has too few values"
    elif kind in ("model_type", "dict_type"):
        msg = f"{key} must be a mapping of keys, got {got!r}"
    elif kind == "value_error":
        msg = f"{key + ': ' if key else ''}{ctx.get('error', err['msg'])}"
    else:  # wrong type: pydantic's wording names the expected type
        expected = err["msg"].removeprefix("Input should be ")
        msg = f"{key} must be {expected}, got {got!r}"
    return f"{_location(loc, lines, set_by, where)}: {msg}"


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                "less_than_equal": "<="}
_BOUND_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
              "less_than_equal": "le"}


def _location(loc: list[str], lines: dict[str, str], set_by: dict[str, str], where: str) -> str:
    key = ".".join(loc)
    for override, label in set_by.items():  # an override of this key, a parent or a child wins
        if key == override or key.startswith(override + ".") or override.startswith(key + "."):
            return label
    for n in range(len(loc), 0, -1):  # else the deepest key with a known line
        hit = lines.get(".".join(loc[:n]))
        if hit:
            return hit
    return where


def _allowed_keys(loc: list[str]) -> list[str]:
    model: Any = Config
    for part in loc:
        if part.isdigit():  # an index into a list of sections
            continue
        field = _field_by_name(model, part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _field_by_name(model, name):
    for field_name, field in model.model_fields.items():
        if name in (field_name, field.alias):
            return field
    return None


def _model_of(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # tuple[DatasetSpec, ...], Optional[...]
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _flatten(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

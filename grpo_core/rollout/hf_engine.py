"""Transformers `generate`, batched: the rollout engine where vLLM is not installed, and the
parity reference for `VLLMEngine` (same interface, same prompt ids, same finish reasons).

Each prompt is repeated G times and the P*G rows are generated in batches of `batch_size`
rows, left-padded. The sampler log-probs are `log_softmax` of the scores `generate` sampled
from (after temperature and top-p), matching vLLM's `processed_logprobs`. A completion ends at
EOS (kept, like vLLM keeps it) or at the first stop string ("stop"), else at max_new_tokens
("length"). `update_weights` copies HF-named tensors into the live model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import torch

from grpo_core.rollout import (
    Completion, Group, RolloutResult, SamplingSettings, cut_at_stop, encode_prompts,
    prompt_limit,
)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class HFEngine:
    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", seed: int = 0,
                 max_prompt_tokens: int = 512, overlong_prompts: str = "skip",
                 batch_size: int = 32, cpu_kv_cache_gib=None, gpu_memory_utilization=None,
                 tensor_parallel_size=None, sleep_mode=None, max_model_len=None,
                 kv_cache_tokens=None, cpu_compile=None, cpu_kv_block_size=None):
        """The vLLM memory/parallelism options are accepted (one call site for both engines)
        and have no meaning here."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=DTYPES[dtype], use_safetensors=True).to(device).eval()
        self.device = device
        cfg = self.model.config
        self.context_len = getattr(cfg, "max_position_embeddings", None) or 2048
        self.eos = set(_as_list(self.model.generation_config.eos_token_id or cfg.eos_token_id))
        self.pad = self.tokenizer.pad_token_id
        if self.pad is None:
            self.pad = min(self.eos)
        self.seed, self.calls, self.batch_size = seed, 0, batch_size
        self.max_prompt_tokens, self.overlong = max_prompt_tokens, overlong_prompts

    def generate(self, prompts: list[str], n: int, sampling: SamplingSettings) -> RolloutResult:
        start = time.perf_counter()
        limit = prompt_limit(self.max_prompt_tokens, self.context_len, sampling.max_new_tokens)
        enc = encode_prompts(self.tokenizer, prompts, limit, self.overlong)
        greedy = sampling.temperature == 0
        copies = 1 if greedy else n  # greedy rows are identical: generate once, copy
        rows = [ids for _, ids in enc.kept for _ in range(copies)]  # (P*copies,)
        seed = sampling.seed if sampling.seed is not None else self.seed + self.calls
        done: list[Completion] = []
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            for lo in range(0, len(rows), self.batch_size):
                done += self._batch(rows[lo: lo + self.batch_size], sampling)
        self.calls += 1
        groups = tuple(
            Group(index, tuple(ids), tuple(done[k * copies: (k + 1) * copies]) * (n // copies),
                  truncated=index in enc.truncated)
            for k, (index, ids) in enumerate(enc.kept)
        )
        return RolloutResult(groups, len(prompts), tuple(enc.skipped), tuple(enc.truncated),
                             time.perf_counter() - start)

    def _batch(self, rows: list[list[int]], sampling: SamplingSettings) -> list[Completion]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows])  # (B, L)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, L)
        greedy = sampling.temperature == 0
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            **({} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                  "top_k": 0}),
            stop_strings=list(sampling.stop) or None, tokenizer=self.tokenizer,
            pad_token_id=self.pad, eos_token_id=sorted(self.eos),
            output_scores=True, return_dict_in_generate=True,
        )
        new = out.sequences[:, width:]  # (B, T)
        # one step at a time: a stacked (B, T, V) float copy would be gigabytes
        picked = torch.stack([step.float().log_softmax(-1).gather(-1, new[:, t, None])[:, 0]
                              for t, step in enumerate(out.scores)], dim=1).cpu()  # (B, T)
        new = new.cpu()
        return [self._completion(new[b].tolist(), picked[b].tolist(), sampling)
                for b in range(len(rows))]

    def _completion(self, ids: list[int], logprobs: list[float], sampling) -> Completion:
        """Cut one generated row at its end: EOS (kept) or the token completing a stop string."""
        end, reason = len(ids), "length"
        for t, tok in enumerate(ids):
            if tok in self.eos:
                end, reason = t + 1, "stop"
                break
            if sampling.stop and cut_at_stop(self.tokenizer.decode(ids[: t + 1]), sampling.stop)[1]:
                end, reason = t + 1, "stop"
                break
        ids, logprobs = ids[:end], logprobs[:end]
        text, _ = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), sampling.stop)
        return Completion(tuple(ids), text, tuple(logprobs), reason)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        start = time.perf_counter()
        params = self.model.state_dict(keep_vars=True)  # tied weights appear under both names
        for name, tensor in named_tensors:
            params[name].copy_(tensor.detach())
        return time.perf_counter() - start

    def close(self) -> None:
        self.model = None


def _as_list(x) -> list[int]:
    return list(x) if isinstance(x, (list, tuple)) else [x]

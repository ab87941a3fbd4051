"""Training rollouts of vLLM engines built with different settings, side by side in one run:
`bench/rollout.py --compare before now` (what the rollout was before `rollout.cpu_kv_block_size`
against today's defaults), `--compare-compile` (`now` against `rollout.cpu_compile`).

Both engines get the same pushed weights (the SFT policy with a small seeded perturbation, so
that a push that did not take would show) and the same GSM8K train prompts rendered as a run
renders them, at the default shape (4 prompts x 8 samples x 128 tokens, T 0.8) and at the
learning benchmark's (x 200 tokens, T 0.7), seeds fixed; tokens/s are medians of the repeats.
After the push, each engine's sampler log-probs of its own samples are compared with the
trainer's float32 recomputation under the pushed weights and under the unpushed ones: the
first gap must be the smaller (the engine samples from the policy it was given) and of the
size of the eager engine's (bf16 against float32).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SHAPES = {"default_4x8x128": dict(temperature=0.8, max_new_tokens=128),
          "learning_4x8x200": dict(temperature=0.7, max_new_tokens=200)}


def perturbed(model_dir: str):
    """(the SFT policy in float32 with 1% seeded noise per tensor, the unperturbed one)."""
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01 * p.std())
    return policy, base


def logprob_gap(result, model, temperature: float) -> float:
    """Mean |sampler log-prob - float32 recomputation| over every sampled token."""
    import torch

    from grpo_core.algorithm.batch import build_batch
    from grpo_core.algorithm.logprobs import naive_token_logprobs

    rows = [(g.prompt_ids, c) for g in result.groups for c in g.completions]
    batch = build_batch([list(p) for p, _ in rows], [list(c.token_ids) for _, c in rows],
                        [0.0] * len(rows), pad_id=0,
                        sampler_logprobs=[list(c.logprobs) for _, c in rows])
    with torch.no_grad():
        mine = naive_token_logprobs(model, batch.input_ids, batch.attention_mask,
                                    batch.completion_mask, temperature=temperature)
    on = batch.completion_mask.bool()
    return float((mine - batch.sampler_logp)[on].abs().mean())


# arm -> the engine settings that differ from today's defaults
ARMS = {"before": {"cpu_kv_block_size": 128},  # vLLM's CPU default, this project's until 2026-12-03
        "now": {},
        "compiled": {"cpu_compile": True}}


def engine_figures(model_dir: str, prompts_of, arm: str, repeats: int, policy, base) -> dict:
    from grpo_core.rollout import SamplingSettings, make_engine
    from statistics import median

    began = time.perf_counter()
    engine = make_engine("vllm", model_dir, dtype="auto", seed=0, cpu_kv_cache_gib=1.0,
                         **ARMS[arm])
    out = {"start_s": round(time.perf_counter() - began, 1)}
    engine.update_weights(policy.named_parameters())
    prompts = prompts_of(engine.tokenizer)
    for name, shape in SHAPES.items():
        sampling = SamplingSettings(seed=1, **shape)
        engine.generate(prompts, 8, sampling)  # warm-up (and, compiled, the shapes' first run)
        runs = [engine.generate(prompts, 8, sampling) for _ in range(repeats)]
        rates = [r.metrics()["rollout/tokens_per_s"] for r in runs]
        out[name] = {"tokens_per_s": round(median(rates), 1), "runs": [round(r, 1) for r in rates],
                     "logp_gap_pushed": round(logprob_gap(runs[0], policy, shape["temperature"]), 4),
                     "logp_gap_unpushed": round(logprob_gap(runs[0], base, shape["temperature"]), 4)}
        print(f"  {arm} {name}: {out[name]}", flush=True)
    engine.close()
    return out


def compare(model_dir: str, questions: list[str], instruction: str, repeats: int,
            arms: list[str]) -> dict:
    """Each arm's figures, and every later arm's tokens/s over the first arm's."""
    from grpo_core.data.prompts import render_prompts

    policy, base = perturbed(model_dir)

    def prompts_of(tokenizer):
        return render_prompts(tokenizer, questions, instruction=instruction)

    figures = {arm: engine_figures(model_dir, prompts_of, arm, repeats, policy, base)
               for arm in arms}
    first = arms[0]
    for arm in arms[1:]:
        for name in SHAPES:
            old, new = figures[first][name], figures[arm][name]
            ratio = new["tokens_per_s"] / old["tokens_per_s"]
            figures.setdefault(f"ratio_{arm}_over_{first}", {})[name] = round(ratio, 2)
            print(f"{name:18s} {first} {old['tokens_per_s']:6.1f} tok/s  {arm} "
                  f"{new['tokens_per_s']:6.1f} tok/s  ratio {ratio:4.2f}x (target 2x)  |logp gap| "
                  f"pushed {old['logp_gap_pushed']:.3f} / {new['logp_gap_pushed']:.3f}, unpushed "
                  f"{old['logp_gap_unpushed']:.3f} / {new['logp_gap_unpushed']:.3f}")
    print("engine start: " + ", ".join(f"{arm} {figures[arm]['start_s']} s" for arm in arms))
    return figures


def gsm8k_train_questions(data: Path, n: int) -> list[str]:
    with open(data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]

"""Rollout throughput: VLLMEngine vs HFEngine, and the weight-sync time.

    .venv/bin/python bench/rollout.py [--quick] [--repeats N] [--json PATH] [--dtype bfloat16]
    .venv/bin/python bench/rollout.py --compare before now  # training rollouts, engine settings
    .venv/bin/python bench/rollout.py --compare-compile     # = --compare now compiled

1. 4 prompts x 8 samples x 128 new tokens (temperature 1), both engines, same dtype.
2. 200 greedy GSM8K test prompts x 256 new tokens (--quick: 16), both engines.
3. Weight sync: push the float32 policy's 135M parameters into the vLLM engine.

Each case runs --repeats times (default 3; 1 with --quick) on the same engine after a warm-up
generation; the figures are medians, and `runs_tokens_per_s` keeps every run's rate. tokens/s
counts generated tokens (EOS included) over the wall time of `generate`, prompt encoding
included. Targets (issue 4): vLLM >= 3x transformers on CPU; sync < 1 s for 135M.
Most of its time goes to transformers' greedy case (durations: docs/benchmarks.md).
The SFT checkpoint is the bundled SmolLM2-135M-Instruct, materialised into models/sft.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import add_repeats_option, median, repeats_of  # noqa: E402
from rollout_compare import ARMS  # noqa: E402
from grpo_core.env import apply_defaults  # noqa: E402

apply_defaults(offline=True)

INSTRUCTION = "\nSolve step by step and write the final answer as a number after '####'."
QUESTIONS = ["What is 15 + 27?", "A train travels 60 km in 1.5 hours. What is its speed?",
             "Name three prime numbers greater than 10.", "Explain why the sky is blue."]


def gsm8k_questions(n: int) -> list[str]:
    data = Path(os.environ.get("GRPO_DATA_DIR", REPO.parent / "shared" / "data"))
    with open(data / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


def render(tokenizer, questions: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q + INSTRUCTION}],
                                          tokenize=False, add_generation_prompt=True)
            for q in questions]


def run(engine, prompts, n, sampling, repeats: int) -> dict:
    """`repeats` generations of the same batch -> median tokens, seconds and tokens/s."""
    metrics = []
    for _ in range(repeats):
        metrics.append(engine.generate(prompts, n, sampling).metrics())
        print(f"  {type(engine).__name__}: {len(prompts)} prompts x {n}: "
              f"{metrics[-1]['rollout/tokens_per_s']:.1f} tokens/s", flush=True)
    rates = [m["rollout/tokens_per_s"] for m in metrics]
    return {"tokens": int(median([m["rollout/tokens"] for m in metrics])),
            "seconds": round(median([m["rollout/seconds"] for m in metrics]), 2),
            "tokens_per_s": round(median(rates), 1), "runs_tokens_per_s": [round(r, 1) for r in rates]}


def workloads(engine, tokenizer, gsm8k_prompts: int, repeats: int) -> dict:
    from grpo_core.rollout import SamplingSettings

    groups = run(engine, render(tokenizer, QUESTIONS), 8,
                 SamplingSettings(temperature=1.0, max_new_tokens=128, seed=0), repeats)
    greedy = run(engine, render(tokenizer, gsm8k_questions(gsm8k_prompts)), 1,
                 SamplingSettings(temperature=0, max_new_tokens=256), repeats)
    return {"groups_4x8x128": groups, f"gsm8k_greedy_{gsm8k_prompts}x256": greedy}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 GSM8K prompts instead of 200")
    add_repeats_option(p, quick=True)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--model", default=str(REPO / "models" / "sft"), help="materialised SFT dir")
    p.add_argument("--compare", nargs="+", metavar="ARM", choices=ARMS,
                   help=f"only the training rollouts, engines built as these arms ({', '.join(ARMS)}; "
                        "bench/rollout_compare.py), ratios over the first")
    p.add_argument("--compare-compile", action="store_const", dest="compare",
                   const=["now", "compiled"], help="the same as --compare now compiled")
    args = p.parse_args()
    if args.compare:
        return compare_arms(args)

    import torch
    from transformers import AutoModelForCausalLM

    from grpo_core.checkpoints.sft import materialize
    from grpo_core.parallel.hardware import resolve_dtype
    from grpo_core.rollout import SamplingSettings, make_engine

    model_dir = materialize("bundled:smollm2-135m-instruct", args.model)
    n_gsm8k = 16 if args.quick else 200
    repeats = repeats_of(args)
    args.dtype = resolve_dtype(args.dtype)
    figures: dict = {"dtype": args.dtype, "threads": torch.get_num_threads(), "repeats": repeats}

    engine = make_engine("vllm", model_dir, dtype=args.dtype, seed=0, cpu_kv_cache_gib=2.0)
    engine.generate(render(engine.tokenizer, QUESTIONS[:1]), 1, SamplingSettings(max_new_tokens=8))
    figures["vllm"] = workloads(engine, engine.tokenizer, n_gsm8k, repeats)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    syncs = [engine.update_weights(policy.named_parameters()) for _ in range(max(repeats, 3))]
    figures["weight_sync_s"] = round(median(syncs), 3)
    figures["runs_weight_sync_s"] = [round(s, 3) for s in syncs]
    engine.close()
    del policy

    hf = make_engine("hf", model_dir, dtype=args.dtype, seed=0)
    hf.generate(render(hf.tokenizer, QUESTIONS[:1]), 1, SamplingSettings(max_new_tokens=8))
    figures["hf"] = workloads(hf, hf.tokenizer, n_gsm8k, repeats)
    hf.close()

    for name in figures["vllm"]:
        ratio = figures["vllm"][name]["tokens_per_s"] / max(figures["hf"][name]["tokens_per_s"], 1e-9)
        figures.setdefault("ratio_vllm_over_hf", {})[name] = round(ratio, 2)
        print(f"{name:24s} vLLM {figures['vllm'][name]['tokens_per_s']:7.1f} tok/s   "
              f"HF {figures['hf'][name]['tokens_per_s']:7.1f} tok/s   ratio {ratio:5.2f}x "
              f"(target >= 3x)")
    print(f"weight sync (135M, float32 policy -> {args.dtype} engine): "
          f"{figures['weight_sync_s']:.3f} s (target < 1 s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def compare_arms(args) -> int:
    from grpo_core.checkpoints.sft import materialize
    from grpo_core.config import Config
    from rollout_compare import compare, gsm8k_train_questions

    model_dir = materialize("bundled:smollm2-135m-instruct", args.model)
    data = Path(os.environ.get("GRPO_DATA_DIR", REPO.parent / "shared" / "data"))
    figures = compare(str(model_dir), gsm8k_train_questions(data, 4),
                      Config().data.prompt.instruction, repeats_of(args), args.compare)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

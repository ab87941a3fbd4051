"""Where one training rollout's time goes: a profile of `engine.generate` as the training flow
calls it (the engine built from the config by `flows.run.inputs.start_engine`, in a process
that also holds a policy on the same threads, GSM8K train prompts rendered by the run's own
renderer).

    .venv/bin/python bench/rollout_profile.py [--set rollout.max_new_tokens=200] [--top 30]

Prints tokens/s of a few repeats, then the functions with the most own time (cProfile) and the
torch operators with the most time (torch.profiler) over one more rollout; the findings are
in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import data_dir, median  # noqa: E402
from grpo_core.env import apply_defaults  # noqa: E402

apply_defaults(offline=True)


def rollout_inputs(overrides: list[str]):
    """(config, the first P GSM8K train questions, sampling settings) as a run has them."""
    from grpo_core.config import load_config
    from grpo_core.rollout import SamplingSettings
    from rollout_compare import gsm8k_train_questions

    cfg = load_config(REPO / "params.yaml", overrides)
    r = cfg.rollout
    questions = gsm8k_train_questions(Path(data_dir()), r.prompts_per_iteration)
    return cfg, questions, SamplingSettings(temperature=r.temperature, top_p=r.top_p,
                                            max_new_tokens=r.max_new_tokens, seed=0)


def training_engine(overrides: list[str], model: str):
    """(config, model dir, the engine a run starts on it, the run's rendered prompts, sampling
    settings), the engine warmed up by one rollout."""
    from flows.run.inputs import start_engine
    from grpo_core.checkpoints.sft import materialize
    from grpo_core.data.prompts import render_prompts

    cfg, questions, sampling = rollout_inputs(overrides)
    model_dir = materialize("bundled:smollm2-135m-instruct", model)
    engine = start_engine(cfg, model_dir)
    p = cfg.data.prompt
    prompts = render_prompts(engine.tokenizer, questions, system=p.system, instruction=p.instruction)
    engine.generate(prompts, cfg.rollout.group_size, sampling)  # warm-up
    return cfg, model_dir, engine, prompts, sampling


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--model", default="/tmp/grpo-profile-sft")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    cfg, model_dir, engine, prompts, sampling = training_engine(args.overrides, args.model)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # as in training
    engine.update_weights(policy.named_parameters())
    g = cfg.rollout.group_size
    rates = []
    for _ in range(args.repeats):
        m = engine.generate(prompts, g, sampling).metrics()
        rates.append(m["rollout/tokens_per_s"])
        print(f"{len(prompts)} prompts x {g}: {m['rollout/tokens']:.0f} tokens, "
              f"{m['rollout/tokens_per_s']:.0f} tokens/s", flush=True)
    print(f"median {median(rates):.0f} tokens/s, torch threads {torch.get_num_threads()}")

    profile = cProfile.Profile()
    profile.enable()
    result = engine.generate(prompts, g, sampling)
    profile.disable()
    steps = max(len(c.token_ids) for grp in result.groups for c in grp.completions)
    print(f"\ncProfile, one rollout ({result.seconds:.2f} s, ~{steps} decode steps, "
          f"{1000 * result.seconds / steps:.1f} ms a step), by own time:")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    print("\n".join(out.getvalue().splitlines()[-args.top - 3:]))

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.generate(prompts, g, sampling)
    print("\ntorch operators, one rollout:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

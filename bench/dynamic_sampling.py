"""Dynamic sampling (rollout.refill_rounds, DAPO section 3.2) and adaptive group size
(rollout.min_group_size) against the default, back to back.

The bundled SmolLM2-135M-Instruct on GSM8K train (or `--task arithmetic`, the built-in task,
where pass rates are mid-range) with the accuracy reward: on GSM8K most groups of 8 samples are
all wrong, so most of a default update's groups carry no signal. Each arm is the
product's own `grpo train --no-eval` for the same iterations from the same checkpoint and
seed; the figures come from its MLflow metrics:

- informative groups per update (groups with reward variance that the update trains on: all
  of them by default and with adaptive groups, at most P with dynamic sampling), and their
  share of P;
- completions sampled per informative group trained on (the cost of the signal), and seconds
  per iteration and per informative group.

Arms: `default` (P 4 x G 8), `refill` (refill_rounds N), `adaptive` (groups of 4 doubling to
16 while they have no reward variance, within 8 completions per prompt: the default's budget).

Learning speed (held-out accuracy against time) is not measured here: that needs the
evaluation of bench/learning.py on top (docs/experiments.md says what was run).

    .venv/bin/python bench/dynamic_sampling.py [--iterations 5] [--refill-rounds 2] [--arms default,adaptive]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS, data_dir, grpo_project, load_avg, median, mlflow_history, save_json  # noqa: E402

KEYS = ("groups/", "rollout/completions", "rollout/prompts_drawn", "rollout/rounds",
        "time/iteration_s", "reward/total/mean")


def arms(refill_rounds: int) -> dict[str, dict]:
    """Each arm's rollout settings over the defaults."""
    return {"default": {},
            "refill": {"refill_rounds": refill_rounds},
            "adaptive": {"min_group_size": 4, "group_size": 16, "samples_per_prompt": 8}}


def params(root: Path, iterations: int, rollout: dict, task: str = "gsm8k") -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(dir=data_dir(), train=[{"name": task, "split": "train", "rows": None}])
    p["rollout"].update(rollout)
    p["reward"].update(functions={"accuracy": 1.0})
    p["train"].update(iterations=iterations, max_minutes=None, checkpoint_every=10_000,
                      resume_every=10_000)
    p["tracking"].update(mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                         experiment="dynamic_sampling")
    return p


def arm(root: Path, name: str, iterations: int, rollout: dict, task: str) -> dict:
    grpo_project(root, params(root, iterations, rollout, task))
    h = {k: dict(v) for k, v in mlflow_history(root, "dynamic_sampling", KEYS).items()}
    want = params(root, iterations, rollout)["rollout"]["prompts_per_iteration"]
    steps = sorted(h["groups/informative"])
    refill = rollout.get("refill_rounds", 0)
    trained = [h["groups/informative"][s] if not refill
               else min(h["groups/informative"][s], want) for s in steps]
    completions = [h["rollout/completions"][s] for s in steps]
    seconds = [h["time/iteration_s"][s] for s in steps]
    return {
        "arm": name, "task": task, "rollout": rollout, "iterations": len(steps), "prompts_per_iteration": want,
        "informative_trained_per_update": trained,
        "informative_share_of_p": sum(trained) / (want * len(steps)),
        "completions_per_iteration": completions,
        "completions_per_informative_group": sum(completions) / max(sum(trained), 1),
        "prompts_drawn": [h["rollout/prompts_drawn"][s] for s in steps],
        "rounds": [h["rollout/rounds"][s] for s in steps],
        "seconds_per_iteration_median": median(seconds),
        "seconds_per_informative_group": sum(seconds) / max(sum(trained), 1),
        "reward_mean": [round(h["reward/total/mean"][s], 4) for s in steps],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--refill-rounds", type=int, default=2)
    ap.add_argument("--arms", default="default,refill,adaptive",
                    help="comma-separated, run in this order: default, refill, adaptive")
    ap.add_argument("--task", default="gsm8k", choices=("gsm8k", "arithmetic"),
                    help="the training set (arithmetic: the built-in task, mid-range pass rates)")
    ap.add_argument("--root", default="/tmp/grpo-dynamic-sampling")
    args = ap.parse_args()
    root, known = Path(args.root), arms(args.refill_rounds)
    names = args.arms.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown:
        ap.error(f"--arms: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    results = [arm(root / f"{args.task}_{name}", name, args.iterations, known[name], args.task)
               for name in names]
    out = {"date": datetime.date.today().isoformat(), "load_avg": load_avg(), "arms": results}
    save_json(out, RESULTS / f"dynamic_sampling_{out['date']}_{args.task}_{'_'.join(names)}.json")
    for a in results:
        print(f"{a['arm']} {a['rollout']}: informative groups trained per update "
              f"{a['informative_trained_per_update']} ({a['informative_share_of_p']:.0%} of P), "
              f"{a['completions_per_informative_group']:.0f} completions per informative group, "
              f"{a['seconds_per_iteration_median']:.0f} s per iteration (median), "
              f"{a['seconds_per_informative_group']:.0f} s per informative group")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The learning proof: the product's own pipeline trains the bundled SmolLM2-135M-Instruct on
the built-in arithmetic task (grpo_core.data.arithmetic) within a wall-clock budget, and its own
before/after evaluation judges the run on held-out problems.

One `grpo train` does it all, as a user's run would: it evaluates the SFT checkpoint on 500
held-out arithmetic problems and on GSM8K test (first 500) before the first iteration, trains
for `--minutes`, evaluates the final policy on the same problems with the same prompt and
greedy decoding, and reports each set's paired change with its 95% CI; the promotion gate
(`promote.gain_on: [arithmetic]`) then registers the policy only if it measurably improved.
This script sets the recipe, runs the stages, and reads what the run wrote: the comparison
(metrics/eval.json), the per-problem answers (for the formatted-answer rates), the reward
curve (MLflow) and the iteration count. The GSM8K-only run is `bench/learning.py --task gsm8k`.

    .venv/bin/python bench/learning.py                    # --task arithmetic, 30 min of training
    .venv/bin/python bench/learning.py --minutes 5 --eval-rows 100 --tag short
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import BIN, RESULTS, data_dir, load_avg, project_env, run_child, save_json  # noqa: E402

# The recipe, and why (its runs are in docs/experiments.md):
# - accuracy (the dataset's own checker) alone: with `format` 0.2 beside it (and lr 2e-5) the
#   policy collapsed within 11 iterations to a bare '#### <guess>' line, paid 0.2 whatever
#   the number (docs/experiments.md, 2026-12-02); the checker reads a final number written
#   any way, so no format reward is needed;
# - 128 new tokens: the answers are one or two steps, and a completion that rambles past the
#   budget earns nothing, which teaches the model to conclude;
# - temperature 0.8: the samples stay varied enough that groups carry reward variance;
# - lr 1e-5, beta 0: no reference forward, and rows with zero advantage skip the model, so
#   more iterations fit the budget;
# - a 2 GiB KV cache: the evaluations send 500 prompts at once, and a cache sized for one
#   rollout batch would run them a few dozen at a time.
RECIPE = {
    "data": {"train": [{"name": "arithmetic", "split": "train"}], "prompt": {"few_shot": 0}},
    "rollout": {"prompts_per_iteration": 4, "group_size": 8, "max_new_tokens": 128,
                "temperature": 0.8, "cpu_kv_cache_gib": 2.0},
    "reward": {"functions": {"accuracy": 1.0}},
    "algorithm": {"beta": 0.0, "loss_aggregation": "token_mean"},
    "train": {"learning_rate": 1.0e-5, "iterations": 100000, "checkpoint_every": 100000,
              "resume_every": 25, "micro_batch_size": 8},
    "promote": {"gain_on": ["arithmetic"]},
}
SETS = ("arithmetic", "gsm8k")
# The evaluation's budget is the training's: the task asks for one or two steps, and on a
# float32-only 2-core machine 256 tokens for 2 x 1,000 problems alone would take ~40 minutes.
# GSM8K at 128 tokens cuts some right chains short, before and after alike (paired).
EVAL_TOKENS = 128
# --quick: the plumbing in minutes (nothing goes to bench/results or docs/)
QUICK = ["rollout.prompts_per_iteration=2", "rollout.group_size=2", "rollout.max_new_tokens=16",
         "evaluate.max_new_tokens=16", "train.iterations=2", "train.micro_batch_size=4"]


def write_params(root: Path, *, minutes: float, eval_rows: int, sets: list[str]) -> Path:
    import yaml

    from grpo_core.config import apply_override

    params = json.loads(json.dumps(RECIPE))  # a deep copy
    params["data"].update(dir=data_dir(), processed_dir=str(root / "data" / "processed"))
    params["checkpoint"] = {"source": "bundled:smollm2-135m-instruct",
                            "output_dir": str(root / "models" / "sft")}
    params["train"].update(max_minutes=minutes, output_dir=str(root / "models" / "grpo"))
    params["rollout"]["output_dir"] = str(root / "rollouts")
    params["evaluate"] = {
        "datasets": [{"name": "arithmetic", "split": "test", "rows": eval_rows},
                     {"name": "gsm8k", "split": "test", "rows": eval_rows}],
        "max_new_tokens": EVAL_TOKENS, "samples": 1, "final_rows": None, "quick_rows": 4,
        "output": str(root / "metrics" / "eval.json"),
        "baseline_output": str(root / "metrics" / "eval_baseline.json")}
    params["tracking"] = {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                          "experiment": "learning-task"}
    for item in sets:
        apply_override(params, item)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def formatted_rate(records: list[dict]) -> float:
    """The share of answers in the instructed format (the `format` reward's full credit)."""
    from grpo_core.rewards.functions import FORMATS

    return sum(bool(FORMATS["hashes"](r["completion"])) for r in records) / max(len(records), 1)


def summarize(root: Path, train: dict, minutes: float, png: Path, sets: list[str]) -> dict:
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    before = json.loads((root / "metrics" / "eval_baseline.json").read_text())["records"]
    after = json.loads((root / "metrics" / "eval_records.json").read_text())
    with open(root / "metrics" / "train_history.csv") as f:
        history = list(csv.DictReader(f))
    per_set = {}
    for name in SETS:
        m = metrics[name]
        per_set[name] = {k: m[k] for k in ("count", "before", "accuracy", "delta", "ci_low",
                                           "ci_high")}
        per_set[name].update(formatted_before=formatted_rate(before[name]),
                             formatted_after=formatted_rate(after[name]))
    return {"task": "arithmetic", "sets": per_set, "iterations": len(history),
            "train_minutes": sum(float(h["time/iteration_s"]) for h in history) / 60,
            "process_minutes": train["seconds"] / 60, "peak_rss_gb": train["peak_rss_gb"],
            "budget_minutes": minutes, "load_avg": load_avg(), "recipe": RECIPE,
            "overrides": sets, "png": str(png)}


def entry(s: dict, *, date: str, stem: str, command: str) -> str:
    rows = ["| set (greedy, held out) | n | SFT checkpoint | after GRPO | change (95% CI) | "
            "formatted before -> after |", "|---|---|---|---|---|---|"]
    for name, m in s["sets"].items():
        rows.append(f"| {name} | {m['count']:.0f} | {m['before']:.1%} | {m['accuracy']:.1%} | "
                    f"{m['delta']:+.1%} ({m['ci_low']:+.1%} to {m['ci_high']:+.1%}) | "
                    f"{m['formatted_before']:.1%} -> {m['formatted_after']:.1%} |")
    return "\n".join([
        f"## {date}: learning run `{stem}` (bench/learning.py --task arithmetic)", "",
        f"Result: `bench/results/{stem}.json` (the latest also as "
        f"`bench/results/learning_task.json`, which `bench/run_all.py` reads), reward curve "
        f"`bench/results/{stem}_rewards.png`.",
        f"Command: `{command}`.", "", *rows, "",
        f"Training: {s['iterations']} iterations, {s['train_minutes']:.1f} min of iterations "
        f"(budget {s['budget_minutes']} min; the whole `grpo train` process with both "
        f"evaluations {s['process_minutes']:.1f} min, peak RSS {s['peak_rss_gb']:.1f} GB, "
        f"load average {s['load_avg']}); recipe {json.dumps(s['recipe'])}, overrides "
        f"{s['overrides'] or 'none'}."])


def main(args) -> int:
    from learning import EXPERIMENTS, append_entry, plot, reward_history

    root = Path(args.workdir).resolve()
    sets = (QUICK if args.quick else []) + args.sets
    params = write_params(root, minutes=args.minutes, eval_rows=args.eval_rows, sets=sets)
    env, grpo = project_env(root), str(BIN / "grpo")
    for name in ("prepare", "validate", "checkpoint"):
        r = run_child([grpo, name, "--params", str(params)], root, env, log=root / f"{name}.log")
        if r["rc"]:
            sys.exit(f"{name} failed; see {root / (name + '.log')}")
    train = run_child([grpo, "train", "--params", str(params)], root, env,
                      log=root / "train.log")
    if train["rc"]:
        sys.exit(f"train failed; see {root / 'train.log'}")
    date = time.strftime("%Y-%m-%d")
    stem = f"learning_task_{date}" + (f"_{args.tag}" if args.tag else "")
    out = root if args.quick else RESULTS
    png = plot(reward_history(root, "learning-task"), out / f"{stem}_rewards.png",
               title="GRPO on the arithmetic task: training rewards")
    s = summarize(root, train, args.minutes, png, sets)
    save_json(s, out / f"{stem}.json")
    if not args.quick:
        save_json(s, RESULTS / "learning_task.json")  # the latest, which run_all reads
        append_entry(EXPERIMENTS, entry(s, date=date, stem=stem,
                                        command=shlex.join(["bench/learning.py", *sys.argv[1:]])))
    for name, m in s["sets"].items():
        print(f"{name}: {m['before']:.1%} -> {m['accuracy']:.1%} ({m['delta']:+.1%}, 95% CI "
              f"{m['ci_low']:+.1%} to {m['ci_high']:+.1%})", flush=True)
    print(f"{s['iterations']} iterations in {s['train_minutes']:.1f} min; {out / stem}.json")
    return 0

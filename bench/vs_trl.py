"""One GRPO iteration of this project (`grpo train`, vLLM rollouts) vs Hugging Face TRL's
GRPOTrainer, on the same machine, model, prompts and hyper-parameters.

Both sides: SmolLM2-135M-Instruct (the materialised models/sft), GSM8K train prompts rendered
with the product's instruction, 4 prompts x G = 8 completions x 128 new tokens, temperature 1,
beta 0.04, clip 0.2, one update per batch, lr 1e-6, reward = gsm8k_accuracy + 0.5 x format,
and the same loss aggregation (ours `token_mean` is TRL's `dapo`: one mean over every
completion token of the batch). TRL runs on CPU: its vLLM path needs CUDA, so TRL generates
with transformers `generate`, in micro-batches of 8 (32 at once ran out of memory on the
2-core machines; docs/benchmarks.md), 4 accumulation steps = one optimizer step per 32 completions. TRL runs once
per precision in `--trl-precisions` (default: float32, and also bfloat16 mixed precision,
TRL's own default, where the hardware has native bfloat16); the ratios are against the
fastest TRL run. Ours runs on its defaults (`auto` dtypes: bfloat16 where native).
Gradient checkpointing is one setting for both sides (`--gradient-checkpointing`), on by
default because TRL's GRPOConfig turns it on by default: a comparison with it on one side only
would set recomputation time against activation memory.

Each side runs in its own subprocess (1 warm-up step + N measured steps); its peak memory is
that process tree's. Step time: ours `time/iteration_s` from metrics/train_history.csv (rollout,
reward, reference, update, weight sync; the iteration's own clock) and the wall time between
consecutive iterations' MLflow metric logs (adding the logging and the resume-state save);
TRL: wall time between optimizer steps (generation, reward, reference, update, logging).
The ratio uses our wall time. Median over the measured steps; the ratio is from this one run.

    .venv/bin/python bench/vs_trl.py [--steps 3] [--trl-precisions float32,bfloat16]
                                     [--gradient-checkpointing on|off]
                                     [--json bench/results/vs_trl.json]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (BIN, REPO, RESULTS, data_dir, load_avg, median, project_env,  # noqa: E402
                    run_child, save_json)

SHAPE = dict(prompts=4, group=8, new_tokens=128, beta=0.04, lr=1e-6, micro=8,
             gradient_checkpointing=True)
REWARDS = {"gsm8k_accuracy": 1.0, "format": 0.5}
TRL_LOSS = {"token_mean": "dapo", "seq_mean_token_mean": "grpo",
            "seq_mean_token_sum_norm": "dr_grpo"}


def sft_dir() -> str:
    from grpo_core.checkpoints.sft import materialize

    return str(materialize("bundled:smollm2-135m-instruct", REPO / "models" / "sft"))


# ------------------------------------------------------------------------------ ours
# The one dataset both sides train on: TRL reads its prompts from this file (`trl_dataset`),
# ours prepares the same split (the product's default training set is another one).
TRAIN_SET = {"name": "gsm8k", "split": "train"}


def our_params(root: Path, steps: int, loss: str, model: str) -> dict:
    """params.yaml of our side."""
    return {
        "data": {"dir": data_dir(), "processed_dir": str(root / "data" / "processed"),
                 "train": [TRAIN_SET]},
        "checkpoint": {"source": model, "output_dir": str(root / "models" / "sft")},
        "rollout": {"engine": "vllm", "prompts_per_iteration": SHAPE["prompts"],
                    "group_size": SHAPE["group"], "max_new_tokens": SHAPE["new_tokens"]},
        "reward": {"functions": REWARDS},
        "algorithm": {"beta": SHAPE["beta"], "loss_aggregation": loss},
        "train": {"iterations": steps + 1, "learning_rate": SHAPE["lr"], "checkpoint_every": 10_000,
                  "micro_batch_size": SHAPE["micro"], "output_dir": str(root / "models" / "grpo"),
                  "gradient_checkpointing": SHAPE["gradient_checkpointing"]},
        "evaluate": {"datasets": [{"name": "gsm8k", "split": "test", "rows": 1}]},
        "tracking": {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "vs_trl"},
    }


def ours(root: Path, steps: int, loss: str, model: str) -> dict:
    import yaml

    shutil.rmtree(root, ignore_errors=True)  # a fresh run: no resume state, one MLflow run
    root.mkdir(parents=True)
    params = our_params(root, steps, loss, model)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(root)
    prep = run_child([str(BIN / "grpo"), "prepare"], root, env, log=root / "prepare.log")
    if prep["rc"]:
        sys.exit(f"grpo prepare failed: see {root / 'prepare.log'}")
    run = run_child([str(BIN / "grpo"), "train", "--no-eval"], root, env, log=root / "train.log")
    if run["rc"]:
        sys.exit(f"grpo train failed: see {root / 'train.log'}")
    check_trained_on(root / "rollouts", steps + 1, "{name}/{split}/".format(**TRAIN_SET))
    with open(root / "metrics" / "train_history.csv") as f:
        times = [float(r["time/iteration_s"]) for r in csv.DictReader(f)]
    return {**run, "step_seconds": wall_periods(root), "iteration_seconds": times[1:],
            "warmup_seconds": times[0]}


def check_trained_on(rollouts: Path, iterations: int, prefix: str) -> None:
    """Stop unless every rollout prompt of our run's iterations came from TRL's dataset: a
    comparison on other prompts (shorter, with shorter answers) measures something else."""
    import pandas as pd

    from grpo_core.rollout.records import records_path

    ids = pd.concat([pd.read_parquet(records_path(rollouts, i), columns=["prompt_id"])
                     for i in range(1, iterations + 1)])["prompt_id"]
    other = ids[~ids.str.startswith(prefix)]
    if len(other):
        sys.exit(f"our side trained on {other.iloc[0]!r}, not on {prefix}*: the two sides "
                 f"must share a dataset (bench/vs_trl.py TRAIN_SET)")


def wall_periods(root: Path) -> list[float]:
    """Seconds between consecutive iterations' metric logs in MLflow: the whole loop, with the
    per-iteration logging and resume-state save that `time/iteration_s` leaves out (TRL's
    step time, between optimizer steps, includes its own logging)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("vs_trl").experiment_id])[0]
    stamps = sorted((m.step, m.timestamp) for m in
                    client.get_metric_history(run.info.run_id, "time/iteration_s"))
    return [(b - a) / 1000 for (_, a), (_, b) in zip(stamps, stamps[1:])]


# ------------------------------------------------------------------------------- TRL
def trl_rewards():
    """Our reward functions in TRL's calling convention (conversational completions)."""
    from grpo_core.rewards.answers import gsm8k_correct
    from grpo_core.rewards.functions import FORMATS

    def text(c):
        return c[0]["content"] if isinstance(c, list) else c

    def gsm8k_accuracy(completions, answer, **_):
        return [float(gsm8k_correct(text(c), a)) for c, a in zip(completions, answer)]

    def format_(completions, **_):
        return [float(FORMATS["hashes"](text(c))) for c in completions]

    return [gsm8k_accuracy, format_]


def trl_dataset(n: int):
    from datasets import Dataset

    from grpo_core.config import PromptConfig
    from grpo_core.data.prompts import messages

    instruction = PromptConfig().instruction
    rows = []
    path = Path(data_dir()) / TRAIN_SET["name"] / f"{TRAIN_SET['split']}.jsonl"
    with open(path, encoding="utf-8") as f:
        for _, line in zip(range(n), f):
            r = json.loads(line)
            rows.append({"prompt": messages(r["question"], instruction=instruction),
                         "answer": r["answer"].split("####")[-1].strip()})
    return Dataset.from_list(rows)


def trl_worker(steps: int, loss: str, model: str, out: Path, bf16: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    accumulate = SHAPE["prompts"] * SHAPE["group"] // SHAPE["micro"]
    args = GRPOConfig(
        output_dir=str(out.parent / "trl_out"), use_cpu=True, bf16=bf16, report_to="none",
        max_steps=steps + 1, learning_rate=SHAPE["lr"], per_device_train_batch_size=SHAPE["micro"],
        gradient_accumulation_steps=accumulate, generation_batch_size=SHAPE["prompts"] * SHAPE["group"],
        num_generations=SHAPE["group"], max_completion_length=SHAPE["new_tokens"], temperature=1.0,
        beta=SHAPE["beta"], epsilon=0.2, num_iterations=1, loss_type=TRL_LOSS[loss],
        gradient_checkpointing=SHAPE["gradient_checkpointing"],
        reward_weights=list(REWARDS.values()), logging_steps=1, save_strategy="no", seed=0,
        dataloader_num_workers=0, lr_scheduler_type="constant", warmup_steps=0)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=trl_rewards(), args=args,
                          train_dataset=trl_dataset(SHAPE["prompts"] * (steps + 1) * 4),
                          processing_class=AutoTokenizer.from_pretrained(model))
    trainer.add_callback(Clock())
    trainer.train()
    times = [b - a for a, b in zip(marks, marks[1:])]
    out.write_text(json.dumps({"step_seconds": times[1:], "warmup_seconds": times[0]}))


def trl(root: Path, steps: int, loss: str, model: str, precision: str) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out, log = root / f"trl_steps_{precision}.json", root / f"trl_{precision}.log"
    run = run_child([str(BIN / "python"), __file__, "--trl-worker", "--steps", str(steps),
                     "--loss", loss, "--model", model, "--out", str(out)]
                    + (["--quick"] if SHAPE["new_tokens"] == 16 else [])
                    + (["--bf16"] if precision == "bfloat16" else [])
                    + ["--gradient-checkpointing", _on_off(SHAPE["gradient_checkpointing"])], root,
                    project_env(root), log=log)
    if run["rc"]:
        sys.exit(f"TRL worker failed: see {log}")
    return {**run, **json.loads(out.read_text()), "precision": precision}


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def default_trl_precisions() -> str:
    """float32, and bfloat16 too where the hardware multiplies it natively."""
    from grpo_core.parallel.hardware import fast_dtype

    return "float32" + (",bfloat16" if fast_dtype() == "bfloat16" else "")


def report(res: dict) -> str:
    lines = [
        f"One GRPO iteration, SmolLM2-135M-Instruct, {SHAPE['prompts']} prompts x G={SHAPE['group']}"
        f" x {SHAPE['new_tokens']} tokens, beta {SHAPE['beta']}, loss {res['loss']} (TRL "
        f"'{TRL_LOSS[res['loss']]}'), lr {SHAPE['lr']}, CPU, median of {res['steps']} steps",
        "TRL GRPOTrainer generates with transformers on CPU (its vLLM path needs CUDA); "
        f"ours generates with vLLM through `grpo train` (rollout dtype {res['our_dtype']}, "
        f"update autocast {res['our_dtype']}); gradient checkpointing: "
        f"{_on_off(SHAPE['gradient_checkpointing'])}, both sides.",
        f"{'':<30}{'step s (median)':>16}{'steps s':>24}{'peak RSS GB':>13}{'tree RSS GB':>13}",
    ]
    rows = [("this project", res["ours"])] + [
        (f"TRL GRPOTrainer {r['precision']}", r) for r in res["trl_runs"]]
    for name, r in rows:
        steps = ", ".join(f"{s:.1f}" for s in r["step_seconds"])
        lines.append(f"{name:<30}{r['median_step_s']:>16.1f}{steps:>24}{r['peak_rss_gb']:>13.2f}"
                     f"{r['peak_tree_rss_gb']:>13.2f}")
    own = median(res["ours"]["iteration_seconds"])
    lines.append(f"(this project's steps are wall time between iterations; its iterations' own "
                 f"clock, without logging and the resume-state save: median {own:.1f} s)")
    lines.append(f"against the fastest TRL run ({res['trl']['precision']}): time ratio ours/TRL "
                 f"{res['time_ratio']:.2f} (target <= 0.25), memory ratio ours/TRL "
                 f"{res['memory_ratio']:.2f} (tree RSS; target <= 0.9); load average before "
                 f"{res['load_before']} after {res['load_after']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="measured steps per side (after 1 warm-up)")
    ap.add_argument("--loss", default="token_mean", choices=sorted(TRL_LOSS))
    ap.add_argument("--trl-precisions", default=None,
                    help="comma-separated float32,bfloat16 (default: float32, plus bfloat16 "
                         "where it is native)")
    ap.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                    help="both sides (default on: TRL GRPOConfig's default)")
    ap.add_argument("--workdir", default="/tmp/grpo-vs-trl")
    ap.add_argument("--json", default=str(RESULTS / "vs_trl.json"))
    ap.add_argument("--quick", action="store_true", help="tiny shape: a plumbing check")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    SHAPE["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    if args.quick:
        SHAPE.update(prompts=2, group=4, new_tokens=16, micro=4)
    if args.trl_worker:
        trl_worker(args.steps, args.loss, args.model, Path(args.out), args.bf16)
        return 0
    precisions = (args.trl_precisions or default_trl_precisions()).split(",")
    if not set(precisions) <= {"float32", "bfloat16"}:
        sys.exit(f"--trl-precisions: expected float32 and/or bfloat16, got {args.trl_precisions}")
    if importlib.util.find_spec("trl") is None:  # before our side's minutes, not after them
        sys.exit("bench/vs_trl.py needs TRL: run `make bench` once, or "
                 ".venv/bin/pip install -e '.[bench]'")
    from grpo_core.parallel.hardware import fast_dtype

    model, root = sft_dir(), Path(args.workdir)
    res = {"steps": args.steps, "loss": args.loss, "shape": SHAPE, "load_before": load_avg(),
           "our_dtype": fast_dtype()}
    res["ours"] = ours(root / "ours", args.steps, args.loss, model)
    res["trl_runs"] = [trl(root / "trl", args.steps, args.loss, model, p) for p in precisions]
    res["load_after"] = load_avg()
    for r in [res["ours"], *res["trl_runs"]]:
        r["median_step_s"] = median(r["step_seconds"])
    res["trl"] = min(res["trl_runs"], key=lambda r: r["median_step_s"])
    res["time_ratio"] = res["ours"]["median_step_s"] / res["trl"]["median_step_s"]
    res["memory_ratio"] = res["ours"]["peak_tree_rss_gb"] / res["trl"]["peak_tree_rss_gb"]
    res["note"] = "TRL generates with transformers on CPU (vLLM path needs CUDA)"
    print(report(res))
    save_json(res, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

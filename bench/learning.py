"""Does training help? `--task arithmetic` (the default) is bench/learning_task.py: the built-in
arithmetic task, judged by the training flow's own before/after evaluation. `--task gsm8k`, the
second configuration documented here: the product's own pipeline (`grpo prepare`, `grpo train`)
trains the bundled SmolLM2-135M-Instruct on GSM8K train within a wall-clock budget (`train.max_minutes`);
the SFT checkpoint and the trained policy are evaluated greedily on the same fixed subset of
GSM8K test (the first N problems of test.jsonl in file order, N = 500 by default).

Reported: accuracy, the fraction of answers in the instructed format (the `format` reward's
criterion: exactly one line '#### <number>', and it is the last), the paired accuracy difference
with its 95% confidence interval (normal approximation over per-problem differences), and a PNG
of the training reward and the per-function rewards. A finished run is kept as
bench/results/learning.json (the latest), a dated copy learning_<date>[_<tag>].json with its
PNG, and a dated entry appended to the lab notebook, docs/experiments.md. The README is never
written: people write it, and its headline links to the notebook.

    .venv/bin/python bench/learning.py                       # the arithmetic task (learning_task.py)
    .venv/bin/python bench/learning.py --task gsm8k          # the GSM8K run (--minutes of training)
    .venv/bin/python bench/learning.py --tag g16 --set ...   # names the dated files: learning_<date>_g16
    .venv/bin/python bench/learning.py --quick               # minutes: plumbing check only
    .venv/bin/python bench/learning.py --resume              # after a crash: the rest of it
    .venv/bin/python bench/learning.py --pass-rates-from /tmp/run1/rollouts /tmp/run2/rollouts
                                        # only problems earlier runs solved sometimes (see RECIPE)
    .venv/bin/python bench/learning.py --set rollout.group_size=16 --set rollout.prompts_per_iteration=2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, RESULTS, BIN, data_dir, load_avg, project_env, run_child, save_json  # noqa: E402

# The recipe, and why. Each choice was set against its alternative in a learning run; the runs,
# their figures and the variants not kept are in docs/experiments.md.
# - accuracy dominates the reward (format 0.2): when a group has a correct answer, formatting
#   cannot outweigh it; in the (common) groups where only the format varies, the group-normalised
#   advantage is the same whatever the format weight, so the format is learned as fast;
# - beta 0 (as DAPO and Dr. GRPO): no reference forward, and rows with zero advantage skip the
#   model (grpo_core.algorithm.learner), so more iterations fit in the wall-clock budget;
# - lr 5e-6, the rate that learned the format in the first learning run of all (a plain loop
#   whose lost accuracy came from the tied-LM-head sync bug this project found: after a reload
#   vLLM kept the OLD head, grpo_core.rollout.vllm_engine, so its rollouts were not the trained
#   policy's); 1e-5 did no better;
# - 200 new tokens in training (evaluation allows 256): a completion cut before its '####' line
#   earns no format reward, which teaches the model to conclude in time;
# - sampling temperature 0.7: at 1.0 the 135M model's samples turned to word salad and groups
#   had zero reward everywhere, so no group had a learning signal;
# - the `format` criterion is strict (one '####' line, the last one), with half credit for an
#   answer stated once but not on the last line: the lax "some line starts with '####'" was
#   reward-hacked (the policy printed '####' lines until cut off), and the strict rule alone was
#   earned too rarely to learn from;
# - one worked example in the prompt (data.prompt.few_shot 1, GSM8K calculator annotations
#   removed): without it the answer came to be stated once but not at the end; with it the
#   untrained checkpoint already answers mostly in the format, so the reward's signal can go to
#   the answers rather than to the layout (more examples: a longer prompt for little more);
# - the `gsm8k_steps` reward (0.5): credit for the intermediate values of the reference
#   solution, the F1 of those the completion writes; far more groups carry reward variance than
#   with accuracy alone, and a constant guess earns none of it. A correct answer still outweighs
#   any credit.
# Tried and not kept: the two-step problems only (data.train max_steps 2: at lr 1e-5 the policy
# learned to answer one number to every question, and with this recipe it still drifted toward
# a few), only the problems earlier runs solved sometimes (data.pass_rates), G = 16 with 2
# prompts an iteration, and lr 1e-5: none did better on the test problems.
RECIPE = {
    "data": {"prompt": {"few_shot": 1}},
    "rollout": {"prompts_per_iteration": 4, "group_size": 8, "max_new_tokens": 200,
                "temperature": 0.7},
    "reward": {"functions": {"gsm8k_accuracy": 1.0, "format": 0.2, "gsm8k_steps": 0.5}},
    "algorithm": {"beta": 0.0, "loss_aggregation": "token_mean"},
    "train": {"learning_rate": 5.0e-6, "iterations": 1000, "checkpoint_every": 1000,
              "micro_batch_size": 8},
}
QUICK = {"rollout": {"prompts_per_iteration": 2, "group_size": 2, "max_new_tokens": 16},
         "train": {"iterations": 2, "checkpoint_every": 1000, "micro_batch_size": 4}}
EVAL_KV_CACHE_GIB = 2.0
EXPERIMENTS = REPO / "docs" / "experiments.md"  # the lab notebook: entries appended, oldest first


def recipe(pass_rates_from: list[str] | None = None, sets: list[str] = ()) -> dict:
    """RECIPE, with `data.pass_rates` reading `pass_rates_from` (rollout folders) when given,
    and `sets` ('rollout.group_size=16') applied on top, parsed as `grpo --set` parses them."""
    import copy

    from grpo_core.config import apply_override

    if not pass_rates_from and not sets:
        return RECIPE
    out = copy.deepcopy(RECIPE)
    if pass_rates_from:
        out.setdefault("data", {})["pass_rates"] = {"rollouts": list(pass_rates_from)}
    for item in sets:
        apply_override(out, item)
    return out


def write_params(root: Path, *, minutes: float, eval_rows: int, quick: bool,
                 engine: str = "vllm", chosen: dict = RECIPE) -> Path:
    """root/params.yaml for this run: `chosen` (the recipe as run, see `recipe`) or QUICK."""
    import yaml

    sft = REPO / "models" / "sft"
    params = {
        "data": {"dir": data_dir(), "processed_dir": str(root / "data" / "processed")},
        "checkpoint": {"source": str(sft) if (sft / "config.json").is_file()
                       else "bundled:smollm2-135m-instruct",
                       "output_dir": str(root / "models" / "sft")},
        "evaluate": {"datasets": [{"name": "gsm8k", "split": "test", "rows": eval_rows}],
                     "max_new_tokens": 256, "samples": 1},
        "tracking": {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                     "experiment": "learning"},
    }
    for section, values in (QUICK if quick else chosen).items():
        params.setdefault(section, {}).update(values)
    params["train"] = {**RECIPE["train"], **params.get("train", {}), "max_minutes": minutes,
                       "output_dir": str(root / "models" / "grpo")}
    params["rollout"] = {**params.get("rollout", {}), "engine": engine}
    if quick:
        params["evaluate"]["max_new_tokens"] = 16
    path = root / "params.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ---------------------------------------------------------------- evaluation (child process)
def evaluate(params: Path, checkpoint: str, out: Path, dataset: str = "gsm8k") -> None:
    """Greedy answers of `checkpoint` on the configured rows of `dataset` -> per-problem JSON."""
    from transformers import AutoTokenizer

    from flows.run.inputs import engine_options, load_data, prompt_renderer
    from grpo_core.config import load_config
    from grpo_core.evaluation.metrics import evaluate_frame
    from grpo_core.rollout import make_engine

    cfg = load_config(params)
    _, sets, shots = load_data(cfg)
    frame = sets[dataset]
    render = prompt_renderer(cfg, AutoTokenizer.from_pretrained(checkpoint), shots)
    prompts = render(frame["question"].tolist())
    # 500 prompts at once: a larger KV cache than one rollout batch's runs more of them together
    options = {**engine_options(cfg), "cpu_kv_cache_gib": EVAL_KV_CACHE_GIB}
    engine = make_engine(cfg.rollout.engine, checkpoint, **options)
    start = time.perf_counter()
    try:
        metrics, records = evaluate_frame(engine, prompts, frame,
                                          max_new_tokens=cfg.evaluate.max_new_tokens, samples=1,
                                          temperature=1.0, time_limit_s=cfg.reward.timeout_s)
    finally:
        engine.close()
    save_json(mark_formatted({"checkpoint": checkpoint, "accuracy": metrics["accuracy"],
                              "count": len(records), "seconds": time.perf_counter() - start,
                              "records": records}, cfg.reward.answer_format), out)


def mark_formatted(result: dict, answer_format: str) -> dict:
    """Flag each record's completion by three criteria, and their rates: `formatted`, the
    `format` reward's full credit (hashes: one '#### <number>' line, the last); `stated_once`,
    its half credit (one such line anywhere); `any_hashes_line`, the lax criterion of the first
    baseline (some line starts with '####' and a number; docs/experiments.md). Reused evaluations
    are re-marked, so a change of the criteria reaches them too."""
    from grpo_core.rewards.functions import FORMATS, HALF_FORMATS, has_number

    def any_line(text: str) -> bool:
        return any(line.strip().startswith("####") and has_number(line.strip()[4:])
                   for line in text.splitlines())

    tests = {"formatted": FORMATS[answer_format],
             "stated_once": HALF_FORMATS.get(answer_format, FORMATS[answer_format]),
             "any_hashes_line": any_line}
    records = result["records"]
    for key, test in tests.items():
        for r in records:
            r[key] = bool(test(r["completion"]))
        result[key] = sum(r[key] for r in records) / max(len(records), 1)
    return result


FORMAT_KEYS = ("formatted", "stated_once", "any_hashes_line")


def subset_params(params: Path, rows: int) -> Path:
    """A copy of params.yaml whose GSM8K evaluation keeps only the first `rows` problems."""
    import yaml

    raw = yaml.safe_load(params.read_text())
    raw["evaluate"]["datasets"][0]["rows"] = rows
    out = params.with_name(f"params_eval_{rows}.yaml")
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def paired_ci(before: list[bool], after: list[bool]) -> tuple[float, float, float]:
    """Mean of after - before over the same problems and its 95% normal-approximation CI."""
    d = [float(a) - float(b) for a, b in zip(after, before, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------- training
def run_training(root: Path, env: dict, minutes: float, *, resume: bool) -> dict:
    """`grpo train --no-eval`; with `resume`, `grpo train --resume` from the last resume state
    with the part of the budget its first process had not spent by then (from MLflow: the run's
    start to the saved iteration's log), so that both processes together train for `minutes`."""
    cmd, prior = [str(BIN / "grpo"), "train", "--no-eval"], {}
    if resume:
        prior = spent_before_resume(root)
        left = minutes - prior["minutes"]
        if left <= 0:
            sys.exit(f"--resume: the budget of {minutes} min was spent by iteration "
                     f"{prior['iteration']}")
        cmd += ["--resume", "--set", f"train.max_minutes={left:.2f}"]
    log = root / ("train_resumed.log" if resume else "train.log")
    t = run_child(cmd, root, env, log=log)
    if t["rc"]:
        sys.exit(f"train failed; see {log}")
    train = {"seconds": t["seconds"] + 60 * prior.get("minutes", 0.0),
             "peak_rss_gb": t["peak_rss_gb"], "load_avg": load_avg()}
    if prior:
        train["resumed"] = prior
    return train


def spent_before_resume(root: Path) -> dict:
    """{"iteration": the resume state's, "minutes": from the MLflow run's start to that
    iteration's metric log}."""
    from mlflow.tracking import MlflowClient

    from grpo_core.checkpoints.resume import read_meta

    meta = read_meta(root / "models" / "grpo" / "resume")  # as `grpo train --resume` finds it
    if meta is None:
        sys.exit(f"--resume: no resume state under {root / 'models' / 'grpo'}")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(meta["run_id"])
    logged = {m.step: m.timestamp for m in
              client.get_metric_history(run.info.run_id, "time/iteration_s")}
    minutes = (logged[meta["iteration"]] - run.info.start_time) / 60_000
    return {"iteration": meta["iteration"], "minutes": minutes}


def reward_history(root: Path, experiment: str = "learning") -> dict[str, list[tuple[int, float]]]:
    """reward/<fn>/mean per step from the run's MLflow store (its latest run)."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    out = {}
    for key in run.data.metrics:
        if key.startswith("reward/") and key.endswith("/mean"):
            hist = client.get_metric_history(run.info.run_id, key)
            out[key] = sorted((m.step, m.value) for m in hist)
    return out


def plot(history: dict, png: Path,
         title: str = "GRPO on GSM8K train: total and per-function rewards") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, points in sorted(history.items()):
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker=".", label=key.removeprefix("reward/").removesuffix("/mean"))
    ax.set(xlabel="iteration", ylabel="mean reward per completion",
           title=title)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def results_table(s: dict) -> str:
    """A run's summary (learning.json) -> its results table and one line of training figures
    and recipe, as its entry in docs/experiments.md shows them."""
    b, a, d = s["before_paired"], s["after"], s["difference"]
    full = s["before"]
    r = s["recipe"]
    shots = r.get("data", {}).get("prompt", {}).get("few_shot", 0)
    rows = [
        "| | SFT checkpoint | after GRPO |",
        "|---|---|---|",
        f"| GSM8K test accuracy (greedy, first {b['count']}) | {b['accuracy']:.1%} | {a['accuracy']:.1%} |",
        f"| formatted: one `#### <number>` line, the last (the reward's full credit) | "
        f"{b['formatted']:.1%} | {a['formatted']:.1%} |",
        f"| answer stated once as `#### <number>`, anywhere (half credit) | "
        f"{b['stated_once']:.1%} | {a['stated_once']:.1%} |",
        f"| some line starts with `#### <number>` (the first baseline's criterion) | "
        f"{b['any_hashes_line']:.1%} | {a['any_hashes_line']:.1%} |",
    ]
    if full["count"] != b["count"]:
        rows.append(f"| same, first {full['count']} (SFT only) | {full['accuracy']:.1%} accuracy, "
                    f"{full['formatted']:.1%} formatted | not evaluated (time box) |")
    rows += [
        "",
        f"Accuracy difference {d['mean']:+.1%} (95% CI {d['ci_low']:+.1%} to {d['ci_high']:+.1%}, "
        f"paired over the same {b['count']} problems). Training: {s['iterations']} iterations in "
        f"{s['train_minutes']:.1f} min (budget {s['budget_minutes']} min, 2 CPU cores, load average "
        f"{s['load_avg']}{resumed_note(s.get('resumed'))}); recipe: {shots} worked "
        f"example(s) in the prompt, training data {mixture_words(r.get('data', {}).get('train'))}"
        f"{pass_rate_words(s.get('pass_rates'))}, "
        f"{r['rollout']['prompts_per_iteration']} prompts x "
        f"{r['rollout']['group_size']} samples x {r['rollout']['max_new_tokens']} tokens, rewards "
        f"{r['reward']['functions']}, beta {r['algorithm']['beta']}, lr {r['train']['learning_rate']}.",
    ]
    return "\n".join(rows)


def mixture_words(train: list[dict] | None) -> str:
    """[{"name": "gsm8k", "split": "train", "max_steps": 2}] -> "gsm8k train (max_steps 2)"."""
    if not train:
        return "gsm8k train"
    words = []
    for spec in train:
        limits = [f"{k} {spec[k]}" for k in ("rows", "max_steps", "max_level") if spec.get(k)]
        words.append(f"{spec['name']} {spec.get('split', 'train')}"
                     + (f" ({', '.join(limits)})" if limits else ""))
    return " + ".join(words)


def pass_rate_words(said: str | None) -> str:
    """The filter's own line from train.log ('data.pass_rates: training on 135 of 7473
    problems (...)') -> ' (pass-rate filter: 135 of 7473 problems, ...)'."""
    if not said:
        return ""
    return f" (pass-rate filter: {said.split('training on ', 1)[-1].rstrip()})"


def filter_line(root: Path) -> str | None:
    """The pass-rate filter's line in the training log, if it ran."""
    for log in ("train.log", "train_resumed.log"):
        path = root / log
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("data.pass_rates: training on"):
                    return line
    return None


def resumed_note(resumed: dict | None) -> str:
    if not resumed:
        return ""
    return (f"; resumed (`--resume`) from the state saved at iteration {resumed['iteration']}, "
            f"{resumed['minutes']:.1f} min in, after the first process died")


def record_run(summary: dict, *, results: Path = RESULTS, log: Path = EXPERIMENTS,
               date: str | None = None, tag: str | None = None, command: str = "") -> Path:
    """Keep a finished run: `results`/learning.json (the latest run, which run_all reads), a
    dated copy learning_<date>[_<tag>].json beside its reward curve, and a dated entry appended
    to the lab notebook `log`. Never the README: people write it. A name already taken (a second
    run that day) gets _2, _3, ... rather than overwriting. Returns the dated JSON."""
    import shutil

    date = date or time.strftime("%Y-%m-%d")
    base = f"learning_{date}" + (f"_{tag}" if tag else "")
    stem, n = base, 1
    while (results / f"{stem}.json").exists():
        n += 1
        stem = f"{base}_{n}"
    png, dated_png = Path(summary["png"]), results / f"{stem}_rewards.png"
    if png.is_file():
        shutil.copyfile(png, dated_png)
    dated = {**summary, "png": str(dated_png)}
    save_json(summary, results / "learning.json")
    save_json(dated, results / f"{stem}.json")
    append_entry(log, experiment_entry(dated, date=date, stem=stem, command=command))
    return results / f"{stem}.json"


def experiment_entry(s: dict, *, date: str, stem: str, command: str = "") -> str:
    """The notebook entry of one run: a dated heading, its files, the command, its table."""
    lines = [f"## {date}: learning run `{stem}` (bench/learning.py)", "",
             f"Result: `bench/results/{stem}.json`, reward curve `bench/results/{stem}_rewards.png`."]
    if command:
        lines.append(f"Command: `{command}`.")
    return "\n".join([*lines, "", results_table(s)])


def append_entry(log: Path, entry: str) -> None:
    """Append `entry` at the end of the notebook (oldest first), one blank line before it."""
    text = log.read_text() if log.is_file() else "# Experiments\n"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{text.rstrip()}\n\n{entry.strip()}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("arithmetic", "gsm8k"), default="arithmetic",
                    help="arithmetic: the built-in task, judged by the flow's own before/after "
                         "evaluation (bench/learning_task.py); gsm8k: GSM8K train only")
    ap.add_argument("--minutes", type=float, default=None,
                    help="train.max_minutes (default: 30 for arithmetic, 55 for gsm8k)")
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--workdir", default="/tmp/grpo-learning")
    ap.add_argument("--quick", action="store_true",
                    help="tiny settings; writes nothing to bench/results or docs/")
    ap.add_argument("--reuse-evals", action="store_true",
                    help="keep eval_before.json / eval_after.json already in the workdir")
    ap.add_argument("--resume", action="store_true",
                    help="continue a training that died (`grpo train --resume`) with what is left "
                         "of --minutes, then evaluate; implies --reuse-evals")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "hf"),
                    help="rollout.engine for training and evaluation (hf: when other vLLM CPU "
                         "processes share the cores)")
    ap.add_argument("--after-rows", type=int, default=None,
                    help="evaluate the trained policy on only the first N of the rows (time box)")
    ap.add_argument("--pass-rates-from", nargs="+", metavar="ROLLOUTS", default=None,
                    help="train only on problems solved sometimes in these earlier rollouts "
                         "(data.pass_rates with its defaults)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change one RECIPE value for this run, e.g. rollout.group_size=16 "
                         "(repeatable; checked by the config when training starts)")
    ap.add_argument("--tag", default=None, help="names this run's dated result files and "
                    "notebook entry: bench/results/learning_<date>_<tag>.json")
    ap.add_argument("--eval", nargs=3, metavar=("PARAMS", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.task == "arithmetic" and not args.eval:
        import learning_task

        args.minutes = args.minutes or 30.0
        if args.workdir == "/tmp/grpo-learning":
            args.workdir = "/tmp/grpo-learning-task"
        return learning_task.main(args)
    args.minutes = args.minutes or 55.0
    if args.eval:
        evaluate(Path(args.eval[0]), args.eval[1], Path(args.eval[2]))
        return 0
    args.reuse_evals = args.reuse_evals or args.resume
    root = Path(args.workdir).resolve()
    chosen = recipe(args.pass_rates_from, args.sets)
    params = write_params(root, minutes=args.minutes, eval_rows=args.eval_rows, quick=args.quick,
                          engine=args.engine, chosen=chosen)
    env = project_env(root)
    py, grpo = str(BIN / "python"), str(BIN / "grpo")
    steps = [("prepare", [grpo, "prepare"]), ("checkpoint", [grpo, "checkpoint"])]
    done = {"prepare": any((root / "data" / "processed").glob("*.parquet")),
            "checkpoint": (root / "models" / "sft" / "config.json").is_file()}
    for name, cmd in steps:
        if args.reuse_evals and done[name]:
            continue
        r = run_child(cmd, root, env, log=root / f"{name}.log")
        if r["rc"]:
            sys.exit(f"{name} failed; see {root / (name + '.log')}")
    sft = str(root / "models" / "sft")
    evals, train = {}, {"seconds": float("nan"), "peak_rss_gb": float("nan")}
    for label, ckpt in (("before", sft), ("after", str(root / "models" / "grpo" / "final"))):
        out = root / f"eval_{label}.json"
        if args.reuse_evals and out.is_file():
            evals[label] = mark_formatted(json.loads(out.read_text()), "hashes")
            if label == "after" and (root / "train_run.json").is_file():
                train = json.loads((root / "train_run.json").read_text())
            print(f"{label}: reused {out}", flush=True)
            continue
        if label == "after":
            train = run_training(root, env, args.minutes, resume=args.resume)
            save_json(train, root / "train_run.json")  # for a later --reuse-evals
        out = root / f"eval_{label}.json"
        eval_params = params
        if label == "after" and args.after_rows:  # a time-boxed run: the first N of the same rows
            eval_params = subset_params(params, args.after_rows)
        e = run_child([py, __file__, "--eval", str(eval_params), ckpt, str(out)], root, env,
                      log=root / f"eval_{label}.log")
        if e["rc"]:
            sys.exit(f"evaluation {label} failed; see {root / f'eval_{label}.log'}")
        evals[label] = json.loads(out.read_text())
        print(f"{label}: accuracy {evals[label]['accuracy']:.3f}, formatted "
              f"{evals[label]['formatted']:.3f} ({evals[label]['count']} problems, "
              f"{e['seconds']:.0f} s, load {load_avg()})", flush=True)
    with open(root / "metrics" / "train_history.csv") as f:
        iterations = len(list(csv.DictReader(f)))
    after_by_id = {r["id"]: r for r in evals["after"]["records"]}
    paired = [r for r in evals["before"]["records"] if r["id"] in after_by_id]
    before = [r["correct"] for r in paired]
    after = [after_by_id[r["id"]]["correct"] for r in paired]
    evals["before_paired"] = {"accuracy": sum(before) / len(paired), "count": len(paired),
                              "seconds": float("nan"),
                              **{k: sum(r[k] for r in paired) / len(paired) for k in FORMAT_KEYS}}
    mean, lo, hi = paired_ci(before, after)
    png = plot(reward_history(root), (root if args.quick else RESULTS) / "learning_rewards.png")
    summary = {
        "before": {k: evals["before"][k] for k in ("accuracy", "count", "seconds", *FORMAT_KEYS)},
        "before_paired": evals["before_paired"],
        "after": {k: evals["after"][k] for k in ("accuracy", "count", "seconds", *FORMAT_KEYS)},
        "difference": {"mean": mean, "ci_low": lo, "ci_high": hi},
        "iterations": iterations, "train_minutes": train["seconds"] / 60,
        "train_peak_rss_gb": train["peak_rss_gb"], "budget_minutes": args.minutes,
        "load_avg": train.get("load_avg", load_avg()),
        "recipe": chosen, "pass_rates": filter_line(root),
        "eval_subset": f"GSM8K test rows 0-{args.eval_rows - 1} (file order)",
        "png": str(png), "after_rows": args.after_rows, "engine": args.engine,
        "resumed": train.get("resumed"),
    }
    print(f"accuracy difference {mean:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}); "
          f"{iterations} iterations in {summary['train_minutes']:.1f} min; plot {png}")
    if not args.quick:
        import shlex

        dated = record_run(summary, tag=args.tag,
                           command=shlex.join(["bench/learning.py", *sys.argv[1:]]))
        print(f"results: {dated}; notebook entry appended to {EXPERIMENTS}", flush=True)
    else:
        save_json(summary, root / "learning.json")
    drop_resume_state(root)
    return 0


def drop_resume_state(root: Path) -> None:
    """Both evaluations are written and the budget is spent, so `--resume` has nothing left to
    continue: free the resume state (policy, Adam's moments, RNG: about 12 bytes a parameter).
    Scratch folders kept for their rollouts and evaluations filled the disk otherwise."""
    import shutil

    resume = root / "models" / "grpo" / "resume"
    if resume.is_dir():
        shutil.rmtree(resume)
        print(f"removed {resume}: the run is complete, so there is nothing to resume", flush=True)


if __name__ == "__main__":
    sys.exit(main())

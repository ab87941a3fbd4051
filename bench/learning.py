"""Does training help? The product's own pipeline (`grpo prepare`, `grpo train`) trains the
bundled SmolLM2-135M-Instruct on GSM8K train within a wall-clock budget (`train.max_minutes`);
the SFT checkpoint and the trained policy are evaluated greedily on the same fixed subset of
GSM8K test (the first N problems of test.jsonl in file order, N = 500 by default).

Reported: accuracy, the fraction of answers in the instructed format (the `format` reward's
criterion: exactly one line '#### <number>', and it is the last), the paired accuracy difference
with its 95% confidence interval (normal approximation over per-problem differences), a PNG of
the training reward and the per-function rewards, and the README table between the
`<!-- learning:start -->` / `<!-- learning:end -->` markers.

    .venv/bin/python bench/learning.py                       # the real run (~65 min on 2 cores)
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

# The recipe, and why. ENVIRONMENT.md's first learning run (lr 5e-6, beta 0, format weight 0.5,
# 30 iterations) learned the format and lost accuracy (4% -> 1% on 200 problems); that loop
# synced weights with the tied-LM-head bug this project found (grpo_core.rollout.vllm_engine:
# after a reload vLLM kept the OLD head), so its rollouts came from a policy that was not the
# one being trained. Here:
# - accuracy dominates the reward (format 0.2): when a group has a correct answer, formatting
#   cannot outweigh it; in the (common) groups where only the format varies, the group-normalised
#   advantage is the same whatever the format weight, so the format is learned as fast;
# - beta 0 (as DAPO and Dr. GRPO): no reference forward, and rows with zero advantage skip the
#   model (grpo_core.algorithm.learner), so more iterations fit in the wall-clock budget;
# - lr 5e-6, the rate that learned the format within 30 iterations there;
# - 200 new tokens in training (evaluation allows 256): a completion cut before its '####' line
#   earns no format reward, which teaches the model to conclude in time;
# - sampling temperature 0.7. Tried first at 1.0 (4 iterations, 2026-11-22): the 135M model's
#   samples turned to word salad, 60% ran into the 200-token limit, 6% had a '####' line, and
#   3 of 4 iterations had zero reward everywhere, so no group had a learning signal.
# - the `format` criterion is strict (one '####' line, the last one). With the lax "some line
#   starts with '####'" (2026-11-23, 45 iterations) the training format rate went 9% -> 100%
#   by iteration 43 while 75-78% of the samples ran to the token limit: the policy printed
#   '#### 20', '#### 18', '#### 18', ... until cut off, and scored no correct answer. With the
#   strict rule alone (15 iterations) only 3 of 480 samples earned it and the format rate stayed
#   at 0-6%: hence half credit for an answer stated once but not on the last line.
# - one worked example in the prompt (data.prompt.few_shot 1, GSM8K calculator annotations
#   removed). With half credit and no example (46 iterations, 2026-11-23) the answer came to be
#   stated once in 84% of greedy answers, but 85% of them went on after it with "The answer is:
#   n", so only 0.6% met the instruction ("at the end"). One example alone took the untrained
#   checkpoint from 0% to 78% strictly formatted on 100 test problems (2 examples: 87%, at 2x the
#   prompt length), so the reward's signal can go to the answers rather than to the layout.
# - NOT kept (2026-11-30, 306 iterations in 55 min): training on the 1961 GSM8K train problems
#   whose solution has 2 steps (data.train max_steps 2) at lr 1e-5. The 11-29 run had scored
#   2.4% per sample on 2-step problems against 1.6% on 3-4 steps, so easier problems promised
#   more groups with a correct answer. Instead the policy learned to answer '#### 10' (the
#   commonest answer of 2-step problems after 6) to every question: 92% of samples in
#   iterations 121-160, 99% after; completion/cross_prompt_answer_frac went 0.37 -> 1.0. A
#   constant guess scored about as often as the 135M model's reasoning, and cost fewer tokens.
#   Greedy on the 500 test problems the trained policy answered 10 to 497 and was right on
#   exactly the 12 whose answer is 10: accuracy 2.0% -> 2.4% (CI -1.3 to +2.1), format 74.8%
#   -> 99.4%. Both changes went in one run, so which one drove the collapse is not separated;
#   the 11-29 run (lr 5e-6, all problems) showed no such drift (0.2-0.3 over 163 iterations).
# - the `gsm8k_steps` reward (0.5): credit for the intermediate values of the reference
#   solution, the F1 of those the completion writes. Scored afterwards on the 11-29 run's 652
#   groups, 11% had any variance in accuracy and 55% in this credit; and a constant guess earns
#   none of it. 2026-11-30 run (108 iterations in 56 min; more rows with an advantage, so
#   30 s an iteration against 20 s): 72% of groups had reward variance; the samples' credit
#   went 0.09 -> 0.10-0.11 per 20 iterations, their accuracy stayed at 1.1-2.8%; no guessing
#   (cross_prompt_answer_frac 0.16-0.22). Test: 2.2% -> 3.4% (CI -0.9 to +3.3), format 98.6%;
#   11 problems lost and 17 gained, none right both times. The same at lr 1e-5 (116
#   iterations, NOT kept): credit 0.08-0.11 and accuracy 0.8-2.2% per 20 iterations, no trend;
#   test 2.2% -> 2.4% (CI -1.6 to +2.0), format 99.6%.
# - NOT kept (2026-11-30, 93 iterations in 56 min): the same recipe trained only on the 135
#   problems the three runs above had solved at least once in 24 samples (data.pass_rates,
#   `--pass-rates-from` their rollouts; mean rate 8.9% there). 24% of groups had accuracy
#   variance (11% before), but the samples' accuracy on those problems was 3.9%, 3.5%, 5.6% in
#   the three passes over them (the selection had favoured lucky problems), and the test went
#   2.2% -> 1.6% (CI -2.2 to +1.0), format 97.6%; 7 gained, 10 lost, 1 right both times.
# - NOT kept (2026-11-30, 83 iterations in a 45-minute budget): G = 16, 2 prompts an iteration
#   (`--set rollout.group_size=16 --set rollout.prompts_per_iteration=2`). 22% of groups had
#   accuracy variance (11% at G = 8); the samples' accuracy stayed at 1.1-4.2% per 20
#   iterations; test 2.2% -> 1.6% (CI -2.1 to +0.9), format 98.6%.
# - NOT kept (2026-11-30, 127 iterations in 56 min): this recipe on the 1961 two-step problems
#   (`--set 'data.train=[{name: gsm8k, split: train, max_steps: 2}]'`), which separates the
#   two-step run's data from its lr. The step credit slowed the guessing but did not stop it:
#   cross_prompt_answer_frac 0.31 -> 0.52, samples answering 10, 12, 15 or 20 16% -> 42%, and
#   254 of 500 greedy test answers were 10, 12 or 15. Test 2.0% -> 3.2% (CI -0.6 to +3.0),
#   format 98.8%; 14 gained, 8 lost, 2 right both times.
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
MARK_START, MARK_END = "<!-- learning:start -->", "<!-- learning:end -->"


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
def evaluate(params: Path, checkpoint: str, out: Path) -> None:
    """Greedy answers of `checkpoint` on the configured GSM8K rows -> per-problem JSON."""
    from transformers import AutoTokenizer

    from flows.session import _engine_options, _load_data
    from grpo_core.config import load_config
    from grpo_core.evaluation.metrics import evaluate_frame
    from grpo_core.data.prompts import render_prompts
    from grpo_core.rollout import make_engine

    cfg = load_config(params)
    _, sets, shots = _load_data(cfg)
    frame = sets["gsm8k"]
    tok = AutoTokenizer.from_pretrained(checkpoint)
    p = cfg.data.prompt
    prompts = render_prompts(tok, frame["question"].tolist(), system=p.system,
                             instruction=p.instruction, few_shot=shots)
    # 500 prompts at once: a larger KV cache than one rollout batch's runs more of them together
    options = {**_engine_options(cfg), "cpu_kv_cache_gib": EVAL_KV_CACHE_GIB}
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
    its half credit (one such line anywhere); `any_hashes_line`, the lax criterion of
    ENVIRONMENT.md's baseline (some line starts with '####' and a number). Reused evaluations
    are re-marked, so a change of the criteria reaches them too."""
    from grpo_core.rewards.functions import _FORMATS, _HALF_FORMATS, _has_number

    def any_line(text: str) -> bool:
        return any(line.strip().startswith("####") and _has_number(line.strip()[4:])
                   for line in text.splitlines())

    tests = {"formatted": _FORMATS[answer_format],
             "stated_once": _HALF_FORMATS.get(answer_format, _FORMATS[answer_format]),
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


def reward_history(root: Path) -> dict[str, list[tuple[int, float]]]:
    """reward/<fn>/mean per step from the run's MLflow store."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("learning")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    out = {}
    for key in run.data.metrics:
        if key.startswith("reward/") and key.endswith("/mean"):
            hist = client.get_metric_history(run.info.run_id, key)
            out[key] = sorted((m.step, m.value) for m in hist)
    return out


def plot(history: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, points in sorted(history.items()):
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker=".", label=key.removeprefix("reward/").removesuffix("/mean"))
    ax.set(xlabel="iteration", ylabel="mean reward per completion",
           title="GRPO on GSM8K train: total and per-function rewards")
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def readme_table(s: dict) -> str:
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
        f"| some line starts with `#### <number>` (ENVIRONMENT.md's baseline criterion) | "
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
        f"{r['reward']['functions']}, beta {r['algorithm']['beta']}, lr {r['train']['learning_rate']}. "
        f"Reward curve: `bench/results/learning_rewards.png`; figures: `bench/results/learning.json`.",
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


def update_readme(table: str) -> None:
    path = REPO / "README.md"
    text = path.read_text()
    if MARK_START not in text:
        print("README has no learning markers; table not written")
        return
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=55.0,
                    help="train.max_minutes (the issue's budget is 60 min of training)")
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--workdir", default="/tmp/grpo-learning")
    ap.add_argument("--quick", action="store_true", help="tiny settings, no README update")
    ap.add_argument("--reuse-evals", action="store_true",
                    help="keep eval_before.json / eval_after.json already in the workdir")
    ap.add_argument("--resume", action="store_true",
                    help="continue a training that died (`grpo train --resume`) with what is left "
                         "of --minutes, then evaluate; implies --reuse-evals")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "hf"),
                    help="rollout.engine for training and evaluation (hf: when other vLLM CPU "
                         "processes share the cores, see README)")
    ap.add_argument("--after-rows", type=int, default=None,
                    help="evaluate the trained policy on only the first N of the rows (time box)")
    ap.add_argument("--pass-rates-from", nargs="+", metavar="ROLLOUTS", default=None,
                    help="train only on problems solved sometimes in these earlier rollouts "
                         "(data.pass_rates with its defaults)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change one RECIPE value for this run, e.g. rollout.group_size=16 "
                         "(repeatable; checked by the config when training starts)")
    ap.add_argument("--eval", nargs=3, metavar=("PARAMS", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
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
        save_json(summary, RESULTS / "learning.json")
        update_readme(readme_table(summary))
    else:
        save_json(summary, root / "learning.json")
    drop_resume_state(root)
    return 0


def drop_resume_state(root: Path) -> None:
    """Both evaluations are written and the budget is spent, so `--resume` has nothing left to
    continue: free the resume state (policy, Adam's moments, RNG; 1.6 GB for SmolLM2-135M).
    Scratch folders kept for their rollouts and evaluations filled the disk otherwise."""
    import shutil

    resume = root / "models" / "grpo" / "resume"
    if resume.is_dir():
        shutil.rmtree(resume)
        print(f"removed {resume}: the run is complete, so there is nothing to resume", flush=True)


if __name__ == "__main__":
    sys.exit(main())

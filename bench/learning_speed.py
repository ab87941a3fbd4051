"""Learning speed: held-out accuracy of the training task after 5, 10, 20 and 30 minutes of
training, so that accuracy gained per CPU-minute is a number the project tracks.

One `grpo train --no-eval` of the learning benchmark's recipe (bench/learning_task.py: the
bundled SmolLM2-135M-Instruct on the built-in arithmetic task) with a budget of the last mark
and a checkpoint every K iterations; the minutes of a checkpoint are the wall clock from the
MLflow run's start to its iteration's log (engine start, rollouts, updates, checkpointing and
the quick evaluations included: what a user waits for). For each mark the last checkpoint
logged by then (the final model for the last mark) and the SFT checkpoint are evaluated greedily
on the same first N held-out arithmetic problems, each in its own process, with the paired 95%
CI of the accuracy difference.

    .venv/bin/python bench/learning_speed.py [--marks 5,10,20,30] [--eval-rows 200] [--set KEY=VALUE] [--tag NAME]
    .venv/bin/python bench/learning_speed.py --quick    # minutes: plumbing check, writes no results
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import BIN, RESULTS, load_avg, project_env, run_child, save_json  # noqa: E402
from learning import evaluate as evaluate_rows, paired_ci, run_training  # noqa: E402
from learning_task import QUICK, RECIPE, write_params  # noqa: E402

EXPERIMENT = "learning-task"  # learning_task.write_params's MLflow experiment


def _last_run(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([exp.experiment_id],
                                      order_by=["attributes.start_time DESC"])[0]


def checkpoint_minutes(root: Path) -> dict[int, float]:
    """{iteration with a checkpoint on disk: minutes from the run's start to its log}."""
    client, run = _last_run(root)
    logged = {m.step: m.timestamp for m in
              client.get_metric_history(run.info.run_id, "time/iteration_s")}
    on_disk = {int(p.name.removeprefix("iter_")) for p in
               (root / "models" / "grpo" / "checkpoints").glob("iter_*")}
    out = {it: (logged[it] - run.info.start_time) / 60_000 for it in sorted(on_disk & set(logged))}
    last = max(logged)
    out[last] = (logged[last] - run.info.start_time) / 60_000  # the final model
    return out


def signal_spent(root: Path) -> dict:
    """What the run's rollouts bought, from its MLflow metrics (kept with the figures, since
    the scratch store goes): iterations, informative groups and completions per iteration,
    informative groups a minute of iterations (engine start and checkpoint writes left out),
    completions per informative group."""
    client, run = _last_run(root)
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("groups/informative", "rollout/completions", "time/iteration_s")}
    iterations = len(history["time/iteration_s"])
    informative, completions = sum(history["groups/informative"]), sum(history["rollout/completions"])
    minutes = sum(history["time/iteration_s"]) / 60
    return {"iterations": iterations,
            "informative_groups_per_iteration": informative / max(iterations, 1),
            "completions_per_iteration": completions / max(iterations, 1),
            "informative_groups_per_minute": informative / minutes if minutes else 0.0,
            "completions_per_informative_group": completions / informative if informative else None}


def chosen_checkpoints(root: Path, marks: list[float], minutes: dict[int, float]) -> dict:
    """{mark: (iteration, minutes, directory)}: the last checkpoint logged by each mark; the
    final model for the last mark."""
    last = max(minutes)
    out = {}
    for mark in marks:
        by_then = [it for it, m in minutes.items() if m <= mark and it != last]
        if mark == marks[-1]:
            out[mark] = (last, minutes[last], root / "models" / "grpo" / "final")
        elif by_then:
            it = max(by_then)
            out[mark] = (it, minutes[it], root / "models" / "grpo" / "checkpoints" / f"iter_{it:05d}")
    return out


def evaluate(root: Path, params: Path, label: str, checkpoint: Path, env: dict) -> dict:
    out = root / f"eval_{label}.json"
    # bench/learning.py's evaluation of the arithmetic rows, in a child: one engine at a time
    e = run_child([str(BIN / "python"), __file__, "--eval", str(params), str(checkpoint),
                   str(out)], root, env, log=root / f"eval_{label}.log")
    if e["rc"]:
        sys.exit(f"evaluation {label} failed; see {root / f'eval_{label}.log'}")
    result = json.loads(out.read_text())
    print(f"{label}: accuracy {result['accuracy']:.3f} ({result['count']} problems, "
          f"{e['seconds']:.0f} s)", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--marks", default="5,10,20,30", help="minutes of training, ascending")
    ap.add_argument("--eval-rows", type=int, default=300)
    # a checkpoint is ~1.1 GB with its MLflow copy: every 8 iterations filled 37 GB in 30 min
    ap.add_argument("--checkpoint-every", type=int, default=16)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default="/tmp/grpo-learning-speed")
    ap.add_argument("--tag", default="", help="names the results file (one arm of a comparison)")
    ap.add_argument("--quick", action="store_true", help="tiny settings and marks; no results")
    ap.add_argument("--eval", nargs=3, metavar=("PARAMS", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eval:
        evaluate_rows(Path(args.eval[0]), args.eval[1], Path(args.eval[2]), "arithmetic")
        return 0
    marks = sorted(float(m) for m in ("0.3,0.6" if args.quick else args.marks).split(","))
    root = Path(args.workdir).resolve()
    if root.exists():
        shutil.rmtree(root)
    every = 1 if args.quick else args.checkpoint_every
    sets = (QUICK if args.quick else []) + args.sets + [
        f"train.checkpoint_every={every}", "train.iterations=100000",
        f"evaluate.datasets=[{{name: arithmetic, split: test, rows: {8 if args.quick else args.eval_rows}}}]"]
    params = write_params(root, minutes=marks[-1], eval_rows=args.eval_rows, sets=sets)
    env = project_env(root)
    for name in ("prepare", "checkpoint"):
        if run_child([str(BIN / "grpo"), name, "--params", str(params)], root, env,
                     log=root / f"{name}.log")["rc"]:
            sys.exit(f"{name} failed; see {root / (name + '.log')}")
    train = run_training(root, env, marks[-1], resume=False)
    picks = chosen_checkpoints(root, marks, checkpoint_minutes(root))
    before = evaluate(root, params, "sft", root / "models" / "sft", env)
    rows = []
    for mark in sorted(set(marks) - set(picks)):
        print(f"no checkpoint was logged by {mark:g} min: that mark is left out", flush=True)
    for mark, (it, minutes, ckpt) in picks.items():
        after = evaluate(root, params, f"{mark:g}min", ckpt, env)
        was = {r["id"]: r["correct"] for r in before["records"]}
        mean, lo, hi = paired_ci([was[r["id"]] for r in after["records"]],
                                 [r["correct"] for r in after["records"]])
        rows.append({"mark_minutes": mark, "iteration": it, "minutes": round(minutes, 2),
                     "accuracy": after["accuracy"], "difference": mean, "ci_low": lo, "ci_high": hi,
                     "gain_per_minute": mean / minutes})
    out = {"date": datetime.date.today().isoformat(), "recipe": RECIPE, "sets": sets,
           "eval": f"arithmetic test, first {before['count']}, greedy, "
                   f"{yaml.safe_load(params.read_text())['evaluate']['max_new_tokens']} tokens",
           "sft_accuracy": before["accuracy"], "marks": rows, "train": train,
           "rollouts": signal_spent(root),
           "load_avg": load_avg()}
    print(f"SFT checkpoint: {before['accuracy']:.1%} on {before['count']} problems")
    spent = out["rollouts"]
    print(f"{spent['iterations']} iterations, {spent['informative_groups_per_iteration']:.2f} "
          f"informative groups each, {spent['informative_groups_per_minute']:.1f} a minute")
    for r in rows:
        print(f"after {r['minutes']:5.1f} min (iteration {r['iteration']:4d}): {r['accuracy']:.1%}, "
              f"{r['difference']:+.1%} (95% CI {r['ci_low']:+.1%} to {r['ci_high']:+.1%}), "
              f"{r['gain_per_minute']:+.2%} a minute")
    if not args.quick:
        tag = f"_{args.tag}" if args.tag else ""
        save_json(out, RESULTS / f"learning_speed_{out['date']}{tag}.json")
    for ckpt in (root / "models" / "grpo").glob("checkpoints/iter_*"):  # GBs; the figures stay
        shutil.rmtree(ckpt)
    shutil.rmtree(root / "models" / "grpo" / "resume", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

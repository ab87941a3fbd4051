"""One GRPO iteration of the default config, split into its phases.

`grpo train` (the product's own flow) runs 1 warm-up + N measured iterations with params.yaml's
defaults (only the data, output and tracking paths point into a scratch folder). Per measured
iteration MLflow has time/rollout_s, time/reward_s, time/reference_s, time/update_s,
time/sync_s, time/iteration_s and rollout/tokens_per_s; this prints their medians, the share of
each phase, the rest (Prefect task overhead, logging, records), and the peak RSS of the process.

    .venv/bin/python bench/iteration.py [--iterations 3] [--set rollout.max_new_tokens=64 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, RESULTS, data_dir, grpo_project, load_avg, median, mlflow_history, save_json  # noqa: E402

PHASES = ("rollout", "reward", "reference", "update", "sync")


def measure(root: Path, iterations: int, overrides: list[str]) -> dict:
    from grpo_core.checkpoints.sft import materialize

    sft = materialize("bundled:smollm2-135m-instruct", REPO / "models" / "sft")
    params = {
        "data": {"dir": data_dir(), "processed_dir": str(root / "data" / "processed")},
        "checkpoint": {"source": str(sft), "output_dir": str(root / "models" / "sft")},
        "train": {"iterations": iterations + 1, "checkpoint_every": 10_000,
                  "output_dir": str(root / "models" / "grpo")},
        "evaluate": {"datasets": [{"name": "gsm8k", "split": "test", "rows": 1}]},
        "tracking": {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                     "experiment": "iteration"},
    }
    args = [a for o in overrides for a in ("--set", o)]
    run = grpo_project(root, params, *args)
    hist = mlflow_history(root, "iteration", ("time/", "rollout/tokens_per_s", "rollout/tokens",
                                              "completion/length_mean"))
    measured = {k: [v for step, v in points if step > 1] for k, points in hist.items()}
    out = {k: median(v) for k, v in measured.items()}
    return {"medians": out, "per_iteration": measured, "peak_rss_gb": run["peak_rss_gb"],
            "peak_tree_rss_gb": run["peak_tree_rss_gb"], "process_seconds": run["seconds"],
            "iterations": iterations, "overrides": overrides}


def report(res: dict) -> str:
    m = res["medians"]
    total = m.get("time/iteration_s", float("nan"))
    lines = [f"One iteration of the default config (median of {res['iterations']} after a warm-up; "
             f"overrides {res['overrides'] or 'none'}), load average {res['load_avg']}",
             f"{'phase':<12}{'seconds':>10}{'share':>8}"]
    for phase in PHASES:
        s = m.get(f"time/{phase}_s", 0.0)
        lines.append(f"{phase:<12}{s:>10.2f}{s / total:>8.1%}")
    rest = total - sum(m.get(f"time/{p}_s", 0.0) for p in PHASES)
    lines += [f"{'other':<12}{rest:>10.2f}{rest / total:>8.1%}",
              f"{'iteration':<12}{total:>10.2f}",
              f"rollout tokens/s {m.get('rollout/tokens_per_s', float('nan')):.0f}, completion length "
              f"{m.get('completion/length_mean', float('nan')):.0f}; peak RSS {res['peak_rss_gb']:.2f} GB "
              f"(process tree {res['peak_tree_rss_gb']:.2f} GB)"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3, help="measured, after 1 warm-up")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", default="/tmp/grpo-iteration")
    ap.add_argument("--json", default=str(RESULTS / "iteration.json"))
    args = ap.parse_args()
    res = measure(Path(args.workdir), args.iterations, args.overrides)
    res["load_avg"] = load_avg()
    print(report(res))
    save_json(res, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

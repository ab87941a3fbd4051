"""Benchmark: data preparation, Great Expectations validation, prompt rendering, reward scoring.

    .venv/bin/python bench/data_rewards.py [--data-dir DIR] [--repeats N] [--json PATH]

Prints wall-clock seconds (the median of --repeats runs, default 3), and rows or completions
per second, for:
- `prepare` of all five splits (GSM8K train/test, MATH train/test, MATH-500);
- `validate` of a training mixture (GSM8K + MATH train) against GSM8K test + MATH-500, with
  and without Data Docs (the import of great_expectations is timed on its own, once: a
  second import is a dictionary look-up);
- `render_prompts` of 1,000 GSM8K questions with SmolLM2's chat template;
- `score` of the gold solutions: gsm8k_accuracy + format on GSM8K (8,792 completions) in the
  main thread (SIGALRM limit) and in a worker thread (thread-per-call limit, as under Prefect),
  and math_accuracy (math-verify) on MATH-500 (500 completions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_repeats_option, median, repeats_of, timed_runs  # noqa: E402

from grpo_core.env import apply_defaults  # noqa: E402

apply_defaults(offline=True)


def in_thread(fn):
    box = {}
    worker = threading.Thread(target=lambda: box.update(value=fn()))
    worker.start()
    worker.join()
    return box["value"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("GRPO_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--json", help="also write the figures here")
    add_repeats_option(ap, quick=False)
    args = ap.parse_args()
    n = repeats_of(args)
    figures: dict[str, float] = {}
    runs: dict[str, list[float]] = {}

    def time_it(fn, name: str):
        """-> (fn's value, the median seconds of n calls); every call's seconds go to runs."""
        value, seconds = timed_runs(fn, n)
        runs[name] = [round(x, 4) for x in seconds]
        return value, median(seconds)

    out = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        measure(args.data_dir, out, figures, time_it)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:,.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "repeats": n, "runs_seconds": runs},
                                              indent=2) + "\n")


def measure(data_dir: str, out: Path, figures: dict[str, float], time_it) -> None:
    """Time each step with `time_it(fn, name) -> (value, seconds)` into `figures`, working in
    `out`."""
    from grpo_core.data import sources as data
    from grpo_core.rewards import functions as rewards

    splits = [("gsm8k", "train"), ("gsm8k", "test"), ("math", "train"), ("math", "test"),
              ("math500", "test")]
    (paths, metrics), s = time_it(lambda: data.prepare(data_dir, out, splits), "prepare")
    rows = sum(m["rows"] for m in metrics.values())
    figures.update(prepare_s=s, prepare_rows=rows, prepare_rows_per_s=rows / s)

    _, (figures["gx_import_s"],) = timed_runs(lambda: __import__("great_expectations"), 1)
    from grpo_core.data.validation import validate
    subset = {k: paths[k] for k in ("gsm8k_train", "math_train", "gsm8k_test", "math500_test")}
    kw = dict(train_names=["gsm8k_train", "math_train"], eval_names=["gsm8k_test", "math500_test"])
    (_, ok), s = time_it(lambda: validate(subset, **kw), "validate")
    figures.update(validate_s=s, validate_ok=float(ok))
    _, s = time_it(lambda: validate(subset, docs_dir=out / "docs", **kw), "validate_with_docs")
    figures["validate_with_docs_s"] = s

    frames = {k: data.load_processed(p) for k, p in paths.items()}
    figures.update(render_prompts(frames["gsm8k_test"]["question"].tolist()[:1000], time_it))

    import pandas as pd
    g = pd.concat([frames["gsm8k_train"], frames["gsm8k_test"]], ignore_index=True)
    score_kw = dict(answers=g["answer"].tolist(), sources=g["source"].tolist(),
                    token_counts=[100] * len(g), max_new_tokens=256,
                    weights={"gsm8k_accuracy": 1.0, "format": 0.5})
    sols = g["solution"].tolist()
    (total, _, _), s = time_it(lambda: rewards.score(sols, **score_kw), "gsm8k_score_main")
    figures.update(gsm8k_score_main_s=s, gsm8k_score_main_per_s=len(g) / s,
                   gsm8k_score_mean=float(total.mean()))
    _, s = time_it(lambda: in_thread(lambda: rewards.score(sols, **score_kw)),
                   "gsm8k_score_thread")
    figures.update(gsm8k_score_thread_s=s, gsm8k_score_thread_per_s=len(g) / s)

    m = frames["math500_test"]
    (total, _, _), s = time_it(lambda: rewards.score(
        m["solution"].tolist(), answers=m["answer"].tolist(), sources=m["source"].tolist(),
        token_counts=[100] * len(m), max_new_tokens=256, weights={"math_accuracy": 1.0}),
        "math500_score")
    figures.update(math500_score_s=s, math500_score_per_s=len(m) / s,
                   math500_accuracy_of_gold=float(total.mean()))


def render_prompts(questions: list[str], time_it) -> dict[str, float]:
    """1,000 chat-template renders with SmolLM2's tokenizer (skipped if it is not installed)."""
    try:
        from transformers import AutoTokenizer

        from tests.conftest import bundled_gguf
        gguf = bundled_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - an optional figure
        print(f"render_prompts skipped: {exc}", file=sys.stderr)
        return {}
    from grpo_core.data.prompts import INSTRUCTIONS, PromptRenderer
    render = PromptRenderer(tok, instruction=INSTRUCTIONS["hashes"])
    _, s = time_it(lambda: render(questions), "render_1000_prompts")
    return {"render_1000_prompts_s": s}


if __name__ == "__main__":
    main()

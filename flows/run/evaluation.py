"""The training run's own evaluations, on its live engine: the starting checkpoint before the
first iteration (the baseline), a quick one with every checkpoint, and the final one, which is
compared with the baseline problem by problem and may promote the policy. They rate the same
sets with the same prompts and decoding as `grpo evaluate` does a saved checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from flows.comparison import attach, compare_sets
from flows.evaluate import eval_settings, flat_metrics, score_sets, write_results
from flows.run.live import LiveRun
from grpo_core.parallel import distributed

BASELINE_STEP = 0  # MLflow step of the starting checkpoint's evaluation


def records_path(output: str | Path) -> Path:
    """metrics/eval.json -> metrics/eval_records.json: each problem's answer and verdict."""
    p = Path(output)
    return p.with_name(f"{p.stem}_records{p.suffix}")


def final_sets(run: LiveRun) -> dict:
    """{name: rows} of the final evaluation: the first `evaluate.final_rows` of each set."""
    rows = run.cfg.evaluate.final_rows
    return {n: f.head(rows) for n, f in run.eval_sets.items()} if rows else dict(run.eval_sets)


@distributed.main_only(dict)
def evaluate_live(run: LiveRun, iteration: int) -> dict:
    """The quick evaluation: the first `evaluate.quick_rows` problems, greedy, with the
    engine's current weights, logged as `eval_quick/...`."""
    rows = run.cfg.evaluate.quick_rows
    sets = {n: f.head(rows) for n, f in run.eval_sets.items()}
    results, _ = score_sets(run.engine, run.render, sets, **eval_settings(run.cfg, quick=True))
    flat = flat_metrics(results, "eval_quick")
    run.tracker.log_metrics(flat, step=iteration)
    return flat


@distributed.main_only()
def baseline_records(run: LiveRun) -> dict[str, list[dict]]:
    """The starting checkpoint's per-problem results on the final evaluation's problems: read
    from `evaluate.baseline_output` while the checkpoint, the problems, the prompts and the
    decoding are those it was made with, else evaluated now and saved. Its metrics go to
    MLflow as `eval/...` at step 0, so the charts show before and after."""
    sets = final_sets(run)
    path, key = Path(run.cfg.evaluate.baseline_output), _fingerprint(run, sets)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("fingerprint") == key:
        print(f"baseline: reusing {path} (same checkpoint and evaluation)", file=sys.stderr)
    else:
        with _starting_weights(run):
            results, records = score_sets(run.engine, run.render, sets, **eval_settings(run.cfg))
        saved = {"fingerprint": key, "results": results, "records": records}
        write_results(saved, path)
    if not run.tracker.has_step(f"eval/{next(iter(sets))}/accuracy", BASELINE_STEP):
        run.tracker.log_metrics(flat_metrics(saved["results"], "eval"), step=BASELINE_STEP)
    return saved["records"]


@distributed.main_only(dict)
def final_evaluation(run: LiveRun, iteration: int, baseline: dict | None) -> dict:
    """The final policy on the final problems, logged as `eval/...` at the last step and
    written to `evaluate.output` (the per-problem records beside it, `records_path`); with a
    baseline, each set also gets its paired change and
    95% CI (`eval/<set>/delta`, `ci_low`, `ci_high`), and the promotion gate decides."""
    results, records = score_sets(run.engine, run.render, final_sets(run),
                                  **eval_settings(run.cfg))
    comparisons = compare_sets(baseline, records) if baseline else {}
    results = attach(results, comparisons)
    flat = flat_metrics(results, "eval")
    if not run.tracker.has_step(f"eval/{next(iter(results))}/accuracy", iteration):
        run.tracker.log_metrics(flat, step=iteration)  # once (a resume may evaluate again)
    run.tracker.log_file(write_results(results, run.cfg.evaluate.output), "eval")
    write_results(records, records_path(run.cfg.evaluate.output))  # what the numbers rest on
    if comparisons and run.cfg.promote.enabled:
        _promote(run, comparisons)
    return flat


def _promote(run: LiveRun, comparisons: dict) -> None:
    from flows.registry import promote
    from grpo_core.evaluation.gate import decide

    p = run.cfg.promote
    scored = {name: by[p.metric] for name, by in comparisons.items() if p.metric in by}
    gain_on = p.gain_on or (next(iter(run.eval_sets)),)
    decision = decide(scored, gain_on=gain_on, no_regression=p.no_regression)
    version = promote(run.tracker.client, run.tracker.run_id, decision, scored,
                      name=p.registered_model, alias=p.alias)
    where = f" -> {p.registered_model} version {version} (alias {p.alias})" if version else ""
    print(decision.summary() + where, file=sys.stderr)


@contextlib.contextmanager
def _starting_weights(run: LiveRun):
    """The engine holds the SFT checkpoint's weights inside the block: it already does before
    the first update; a resumed run swaps them in and its policy's weights back after."""
    if run.start_iteration == 1:
        yield
        return
    run.engine.update_weights(_checkpoint_tensors(run.sft_dir))
    try:
        yield
    finally:
        run.engine.update_weights(run.learner.sync_weights())


def _checkpoint_tensors(model_dir: Path):
    from safetensors.torch import load_file

    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        yield from load_file(shard).items()


def _fingerprint(run: LiveRun, sets: dict) -> str:
    """What the baseline's numbers depend on: the checkpoint files, the problems, the rendered
    prompts and the decoding (a re-materialised checkpoint counts as new)."""
    sft = Path(run.sft_dir)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sft.iterdir()
                   if p.is_file())
    problems = {n: [f["id"].tolist(), f["answer"].tolist(), run.render(f["question"].tolist())]
                for n, f in sets.items()}
    r = run.cfg.rollout
    what = [files, problems, eval_settings(run.cfg), r.engine, r.dtype, r.max_prompt_tokens]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

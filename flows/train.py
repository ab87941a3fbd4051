"""The training flow: per iteration, rollout -> rewards -> advantages -> update -> weight sync
-> resume state -> MLflow; every K iterations a checkpoint and a quick evaluation; at the end
the final model and a full evaluation.

Prefect tasks here are thin and pass only a run key, iteration numbers and paths. The live
objects (policy, optimizer, vLLM engine, tracker) stay in one process in `session.LIVE`, so
no model or tensor goes through Prefect's input hashing or result store.
"""

from __future__ import annotations

import argparse
import json
import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import session
from flows.session import LIVE
from grpo_core.config import Config, load_config
from grpo_core.iteration import (advantages_for, draw_prompts, record_columns, rollout_metrics,
                                 score_groups, update_batch)

THIN = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="rollout", retries=2, retry_delay_seconds=1, **THIN)
def rollout_task(key: str, iteration: int) -> str:
    """Sample G completions for P prompts; the engine is rebuilt if it died (then retried)."""
    run = LIVE[key]
    cfg = run.cfg.rollout
    rows = draw_prompts(run.mixture, iteration, cfg.prompts_per_iteration, run.cfg.data.seed)
    prompts = run.render(rows["question"].tolist())
    try:
        result = run.engine.generate(prompts, cfg.group_size, run.sampling(iteration))
    except Exception:
        session.restart_engine(run)  # a fresh engine with the current policy weights
        raise
    run.scratch = {"rows": rows, "prompts": prompts, "result": result}
    return str(run.write_records(iteration))


@task(name="reward", **THIN)
def reward_task(key: str, iteration: int) -> dict[str, float]:
    """Score every completion, compute group advantages, fill them into the records."""
    run = LIVE[key]
    s, cfg = run.scratch, run.cfg
    start = time.perf_counter()
    rewards, per_fn, metrics = score_groups(
        s["result"], s["rows"], weights=dict(cfg.reward.functions),
        time_limit_s=cfg.reward.timeout_s, max_new_tokens=cfg.rollout.max_new_tokens,
        overlong_buffer=cfg.reward.overlong_buffer, prompts=s["prompts"],
        answer_format=cfg.reward.answer_format, reward_model_dir=cfg.reward.reward_model,
        reward_model_batch_size=cfg.reward.reward_model_batch_size)
    adv, adv_metrics = advantages_for(rewards, cfg.algorithm.advantage, cfg.algorithm.eps)
    s.update(rewards=rewards, advantages=adv)
    run.fill_records(iteration, record_columns(s["result"], rewards, per_fn, adv))
    metrics.update(adv_metrics)
    metrics["time/reward_s"] = time.perf_counter() - start
    return metrics


@task(name="update", **THIN)
def update_task(key: str, iteration: int) -> dict[str, float]:
    """One GRPO update on this iteration's rollouts (groups with zero reward variance are
    dropped first when `algorithm.filter_zero_variance` is on)."""
    from grpo_core.advantages import zero_variance_groups

    run = LIVE[key]
    s, algo = run.scratch, run.cfg.algorithm
    keep = ~zero_variance_groups(s["rewards"]) if algo.filter_zero_variance else None
    batch = update_batch(s["result"], s["advantages"], pad_id=run.pad_id, keep=keep,
                         use_sampler_logprobs=algo.tis_cap is not None)
    metrics = {"groups/filtered": float((~keep).sum()) if keep is not None else 0.0}
    if batch is None:  # every group filtered: nothing to learn, but the schedule moves on
        run.learner.skip_iteration()
        return metrics | {"update/skipped_empty": 1.0}
    stats = run.learner.update(batch)  # also refreshes the reference every K iterations
    metrics.update({f"update/{k}": v for k, v in stats.items() if not k.endswith("_seconds")})
    metrics["time/reference_s"] = stats.get("ref_seconds", 0.0)
    metrics["time/update_s"] = stats.get("update_seconds", 0.0)
    return metrics


@task(name="weight-sync", retries=1, retry_delay_seconds=1, **THIN)
def sync_task(key: str) -> float:
    """Push the updated policy into the engine in memory; seconds taken."""
    run = LIVE[key]
    return float(run.engine.update_weights(run.learner.sync_weights()))


@task(name="save-state", **THIN)
def save_state_task(key: str, iteration: int) -> str:
    return str(session.save_resume_state(LIVE[key], iteration))


@task(name="log", retries=3, retry_delay_seconds=2, **THIN)  # sqlite may be locked briefly
def log_task(key: str, iteration: int, metrics: dict[str, float]) -> None:
    session.log_iteration(LIVE[key], iteration, metrics)


@task(name="checkpoint", **THIN)
def checkpoint_task(key: str, iteration: int) -> str:
    return str(session.save_checkpoint(LIVE[key], iteration))


@task(name="evaluate", retries=1, **THIN)
def evaluate_task(key: str, iteration: int, quick: bool) -> dict:
    return session.evaluate_live(LIVE[key], iteration, quick=quick)


@task(name="finish", **THIN)
def finish_task(key: str) -> str:
    return str(session.save_final(LIVE[key]))


@flow(name="grpo-train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None,
               resume: bool = False, evaluate_at_end: bool = True) -> dict:
    """Train from the SFT checkpoint (or resume the last run); returns the final evaluation
    (empty without `evaluate_at_end`: DVC runs evaluation as its own stage)."""
    cfg = load_config(params, overrides or [])
    run = session.open_run(cfg, resume=resume)
    try:
        n, every = cfg.train.iterations, cfg.train.checkpoint_every
        budget = session.Budget(cfg.train.max_minutes)
        with session.progress(run, n) as bar:
            for it in range(run.start_iteration, n + 1):
                metrics = run_iteration(run.key, it)
                last = it == n or budget.spent()
                if it % every == 0 and not last:
                    checkpoint_task(run.key, it)
                    metrics.update(evaluate_task(run.key, it, quick=True))
                # Log, then save: a kill in between reruns this iteration on resume, and the
                # rerun's log is skipped because MLflow already has the step (no gap, no dupe).
                log_task(run.key, it, metrics)
                save_state_task(run.key, it)
                bar.update(metrics)
                if last:
                    break
        finish_task(run.key)
        results = evaluate_task(run.key, run.last_iteration, quick=False) if evaluate_at_end else {}
        session.close_run(run, "FINISHED")
        return results
    except BaseException:
        session.close_run(run, "FAILED")
        raise


def run_iteration(key: str, it: int) -> dict[str, float]:
    """The tasks of one iteration, up to the weight sync; returns its metrics."""
    start = time.perf_counter()
    rollout_task(key, it)
    result = LIVE[key].scratch["result"]
    metrics = rollout_metrics(result)
    metrics["time/rollout_s"] = result.seconds
    metrics.update(reward_task(key, it))
    metrics.update(update_task(key, it))
    metrics["time/sync_s"] = sync_task(key)
    metrics["time/iteration_s"] = time.perf_counter() - start
    return metrics


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo train [--resume] [--no-eval]`."""
    results = train_flow(args.params, args.overrides, resume=args.resume,
                         evaluate_at_end=not args.no_eval)
    if results:
        print(json.dumps(session.headline(results), indent=2))
    return 0


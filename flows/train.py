"""The training flow: per iteration, rollout -> rewards -> advantages -> update -> weight sync
-> resume state -> MLflow; every K iterations a checkpoint and a quick evaluation; at the end
the final model and a full evaluation.

Prefect tasks here are thin and pass only a run key, iteration numbers and paths. The live
objects (policy, optimizer, vLLM engine, tracker) stay in one process in `session.LIVE`, so
no model or tensor goes through Prefect's input hashing or result store.

Under `torchrun --nproc_per_node N` every rank runs this same loop on its P / N prompts with
its own engine (see README, "Scaling out"). Rank 0 alone runs it as the Prefect flow and
alone writes records, checkpoints, resume state and MLflow logs; the other ranks call the
task functions directly (`_call`: `task.fn`, no Prefect server, no task runs), so the
Prefect UI shows one flow run per job.
"""

from __future__ import annotations

import argparse
import json
import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import session
from flows.session import LIVE
from grpo_core.parallel import distributed
from grpo_core.config import Config, load_config
from grpo_core.algorithm.experience import (advantages_for, draw_prompts, record_columns, rollout_metrics,
                                 score_groups, update_batch)

THIN = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="rollout", retries=2, retry_delay_seconds=1, **THIN)
def rollout_task(key: str, iteration: int) -> str:
    """Sample G completions for P prompts; the engine is rebuilt if it died (then retried)."""
    run = LIVE[key]
    cfg = run.cfg.rollout
    rows = draw_prompts(run.mixture, iteration, cfg.prompts_per_iteration, run.cfg.data.seed)
    rows = rows.iloc[distributed.shard_range(len(rows))].reset_index(drop=True)  # whole groups
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
    everything, mine = distributed.gather_groups(rewards)  # (P, G) over all ranks
    adv_all, adv_metrics = advantages_for(everything, cfg.algorithm.advantage, cfg.algorithm.eps)
    adv = adv_all[mine]  # this rank's groups; batch_std used the batch-wide std
    s.update(rewards=rewards, advantages=adv, advantages_all=adv_all)
    run.fill_records(iteration, record_columns(s["result"], rewards, per_fn, adv))
    metrics.update(adv_metrics)
    metrics["time/reward_s"] = time.perf_counter() - start
    return metrics


@task(name="update", **THIN)
def update_task(key: str, iteration: int) -> dict[str, float]:
    """One GRPO update on this iteration's rollouts (groups with zero reward variance are
    dropped first when `algorithm.filter_zero_variance` is on)."""
    import torch

    from grpo_core.algorithm.advantages import zero_variance_groups

    run = LIVE[key]
    s, algo = run.scratch, run.cfg.algorithm
    keep = ~zero_variance_groups(s["rewards"]) if algo.filter_zero_variance else None
    batch = update_batch(s["result"], s["advantages"], pad_id=run.pad_id, keep=keep,
                         use_sampler_logprobs=algo.tis_cap is not None)
    filtered = float((~keep).sum()) if keep is not None else 0.0
    metrics = {"groups/filtered": float(distributed.all_reduce(torch.tensor(filtered)))}
    if not distributed.any_rank(batch is not None):  # all filtered: the schedule moves on
        run.learner.skip_iteration()
        return metrics | {"update/skipped_empty": 1.0}
    # batch is None on a rank whose groups were all filtered: it still takes part
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
                last = it == n or distributed.any_rank(budget.spent())  # ranks agree
                if it % every == 0 and not last:
                    _call(checkpoint_task, run.key, it)
                    metrics.update(_call(evaluate_task, run.key, it, quick=True))
                # Log, then save: a kill in between reruns the iterations since the last save
                # on resume, and their logs are skipped because MLflow already has the steps
                # (no gap, no dupe; the rerun draws the same prompts and samples).
                _call(log_task, run.key, it, metrics)
                if it % cfg.train.resume_every == 0 or last:
                    _call(save_state_task, run.key, it)
                bar.update(metrics)
                if last:
                    break
        _call(finish_task, run.key)
        results = (_call(evaluate_task, run.key, run.last_iteration, quick=False)
                   if evaluate_at_end else {})
        session.close_run(run, "FINISHED")
        return results
    except BaseException:
        session.close_run(run, "FAILED")
        raise


def run_iteration(key: str, it: int) -> dict[str, float]:
    """The tasks of one iteration, up to the weight sync; returns its metrics."""
    start = time.perf_counter()
    _call(rollout_task, key, it)
    result = LIVE[key].scratch["result"]
    metrics = rollout_metrics(result)
    metrics["time/rollout_s"] = result.seconds
    metrics.update(_call(reward_task, key, it))
    metrics.update(_call(update_task, key, it))
    metrics["time/sync_s"] = _call(sync_task, key)
    metrics["time/iteration_s"] = time.perf_counter() - start
    return distributed.reduce_metrics(metrics)  # over all ranks: rank 0 logs the job's numbers


def _call(task_obj, *args, **kwargs):
    """A task as a Prefect task run on rank 0; the plain function on the other ranks."""
    return (task_obj if distributed.is_main() else task_obj.fn)(*args, **kwargs)


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo train [--resume] [--no-eval]`, also under `torchrun` (one process per rank)."""
    distributed.init_from_env(cfg.train.dist_timeout_s)
    distributed.shard_range(cfg.rollout.prompts_per_iteration)  # fail before any loading
    entry = train_flow if distributed.is_main() else train_flow.fn  # one Prefect flow run
    try:
        results = entry(args.params, args.overrides, resume=args.resume,
                        evaluate_at_end=not args.no_eval)
    finally:
        distributed.shutdown()
    if results:
        print(json.dumps(session.headline(results), indent=2))
    return 0


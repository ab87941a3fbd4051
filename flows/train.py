"""The training flow: per iteration, rollout -> rewards -> advantages -> rollout gate (GX
checks that may stop the run) -> update -> weight sync -> resume state -> MLflow; every K
iterations a checkpoint and a quick evaluation; at the end the final model and a full
evaluation.

Prefect tasks here are thin. Each returns a typed value (`flows.run.values`: the rollout, the
scored batch, the metrics) that the flow body hands to the next task. The long-lived objects
(policy and optimizer, vLLM engine, tracker) stay in this process in `flows.run.live.LIVE`
and tasks find them by the run's key. No value goes through Prefect's hashing, result store
or input walk (`THIN`, `call`).

Under `torchrun --nproc_per_node N` every rank runs this same loop on its P / N prompts with
its own engine (see README, "Scaling out"). Rank 0 alone runs it as the Prefect flow and
alone writes records, checkpoints, resume state and MLflow logs; the other ranks call the
task functions directly (`call`: `task.fn`, no Prefect server, no task runs), so the
Prefect UI shows one flow run per job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from dataclasses import replace

import torch
from prefect import flow, task
from prefect.exceptions import TerminationSignal

from flows.run import gates, writers
from flows.run.console import Budget, headline, progress
from flows.run.evaluation import baseline_records, evaluate_live, final_evaluation
from flows.run.growth import grow
from flows.run.inputs import check_processed
from flows.run.live import LIVE, close_run, open_run
from flows.run.sampling import part_metrics, refill, sample
from flows.run.values import THIN, Rollout, ScoredBatch, call
from flows.run.scoring import score_part
from grpo_core.algorithm.adaptive import cells
from grpo_core.algorithm.experience import (advantages_for, informative_groups, record_columns,
                                            update_batch)
from grpo_core.config import Config, load_config
from grpo_core.errors import UserError
from grpo_core.parallel import distributed
from grpo_core.rewards.functions import check_functions


@task(name="rollout", retries=2, retry_delay_seconds=1, **THIN)
def rollout_task(key: str, iteration: int) -> Rollout:
    """Sample G completions (G_min with adaptive group size) for P prompts; the engine is
    rebuilt if it died (then retried)."""
    run = LIVE[key]
    rollout = sample(run, iteration, run.cfg.rollout.prompts_per_iteration)
    records = writers.write_records(run, iteration, rollout.rows, rollout.prompts, rollout.result)
    return replace(rollout, records=records)


@task(name="grow", retries=2, retry_delay_seconds=1, **THIN)
def grow_task(key: str, rollout: Rollout, scored: ScoredBatch) -> tuple[Rollout, ScoredBatch]:
    """Adaptive group size: the groups without reward variance get more samples (doubling up
    to group_size, within rollout.samples_per_prompt), scored; then the records rewritten
    and the advantages of the ragged groups (flows.run.growth)."""
    start, run = time.perf_counter(), LIVE[key]
    grown, rewards, per_fn, metrics = grow(run, rollout, scored.rewards, scored.per_function,
                                           scored.metrics)
    records = writers.write_records(run, grown.iteration, grown.rows, grown.prompts, grown.result)
    grown = replace(grown, records=records,
                    metrics={**grown.metrics, **part_metrics(grown.result, 1)})
    metrics["time/grow_s"] = time.perf_counter() - start
    return grown, _advantaged(run, grown, rewards, per_fn, metrics)


@task(name="refill", **THIN)
def refill_task(key: str, rollout: Rollout, scored: ScoredBatch) -> tuple[Rollout, ScoredBatch]:
    """DAPO's dynamic sampling: rounds of further prompts while fewer than P groups have
    reward variance (flows.run.sampling.refill), then one rollout of everything drawn, its
    records rewritten, and its advantages. The update keeps the first P informative groups
    (train on what there is if the rounds run out)."""
    began, run = time.perf_counter(), LIVE[key]
    merged, rewards, per_fn, metrics = refill(run, rollout, scored)
    metrics = {**scored.metrics, **metrics, "time/refill_s": time.perf_counter() - began}
    return merged, _advantaged(run, merged, rewards, per_fn, metrics)


@task(name="reward", **THIN)
def reward_task(key: str, rollout: Rollout) -> ScoredBatch:
    """Score every completion, compute group advantages, fill them into the records."""
    start = time.perf_counter()
    rewards, per_fn, metrics = score_part(LIVE[key], rollout.rows, rollout.prompts, rollout.result)
    scored = _advantaged(LIVE[key], rollout, rewards, per_fn, metrics)
    scored.metrics["time/reward_s"] = time.perf_counter() - start
    return scored


def _advantaged(run, rollout: Rollout, rewards, per_fn, metrics: dict[str, float]) -> ScoredBatch:
    """Group advantages of scored groups (over every rank's), filled into the records."""
    cfg = run.cfg
    valid = cells(rollout.result, rewards.shape[1])  # (P', G)
    everything, mine = distributed.gather_groups(rewards)  # (P, G) over all ranks
    valid_all, _ = distributed.gather_groups(valid)
    adv_all, adv_metrics = advantages_for(everything, cfg.algorithm.advantage, cfg.algorithm.eps,
                                          valid_all)
    adv = adv_all[mine]  # this rank's groups; batch_std used the batch-wide std
    writers.fill_records(run, rollout.iteration, rollout.records,
                         record_columns(rollout.result, rewards, per_fn, adv))
    metrics.update(adv_metrics)
    return ScoredBatch(rewards, per_fn, adv, adv_all[valid_all], metrics, valid)


@task(name="gate", **THIN)
def gate_task(key: str, rollout: Rollout, scored: ScoredBatch) -> ScoredBatch:
    """Great Expectations on the iteration's filled records, before its update: a hard failure
    ends the run here (nothing updated or saved), a soft one warns once; `scored` passes on
    with the gate's metrics (flows.run.gates)."""
    return gates.gated(LIVE[key], rollout, scored)


@task(name="update", **THIN)
def update_task(key: str, rollout: Rollout, scored: ScoredBatch) -> dict[str, float]:
    """One GRPO update on this iteration's rollouts (groups with zero reward variance are
    dropped first when `algorithm.filter_zero_variance` is on, and with dynamic sampling,
    which also keeps only the first P informative groups); the update's metrics."""
    run = LIVE[key]
    algo, refill = run.cfg.algorithm, run.cfg.rollout.refill_rounds
    informative = informative_groups(scored.rewards, valid=scored.valid)  # (P',)
    keep = (informative_groups(scored.rewards, run.cfg.rollout.prompts_per_iteration, scored.valid)
            if refill else informative if algo.filter_zero_variance else None)
    batch = update_batch(rollout.result, scored.advantages, pad_id=run.pad_id, keep=keep,
                         use_sampler_logprobs=algo.tis_cap is not None)
    filtered = float((~keep).sum()) if keep is not None else 0.0
    metrics = {"groups/filtered": float(distributed.all_reduce(torch.tensor(filtered))),
               "groups/informative": float(distributed.all_reduce(informative.sum().float()))}
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
    return str(writers.save_resume_state(LIVE[key], iteration))


@task(name="log", retries=3, retry_delay_seconds=2, **THIN)  # sqlite may be locked briefly
def log_task(key: str, rollout: Rollout, scored: ScoredBatch, metrics: dict[str, float]) -> None:
    writers.log_iteration(LIVE[key], rollout.iteration, metrics, records=rollout.records,
                          advantages=scored.advantages_all)  # every rank's groups
    gates.watch_reward_hacking(LIVE[key], metrics)  # after a quick evaluation


@task(name="checkpoint", **THIN)
def checkpoint_task(key: str, iteration: int) -> str:
    return str(writers.save_checkpoint(LIVE[key], iteration))


@task(name="baseline", retries=1, **THIN)
def baseline_task(key: str) -> dict[str, list[dict]] | None:
    """The starting checkpoint's evaluation (reused when unchanged): per-problem records."""
    return baseline_records(LIVE[key])


@task(name="quick-evaluate", retries=1, **THIN)
def quick_evaluate_task(key: str, iteration: int) -> dict[str, float]:
    return evaluate_live(LIVE[key], iteration)


@task(name="evaluate", retries=1, **THIN)
def evaluate_task(key: str, iteration: int, baseline: dict | None) -> dict[str, float]:
    """The final evaluation, compared with the baseline; the promotion gate."""
    return final_evaluation(LIVE[key], iteration, baseline)


@task(name="finish", **THIN)
def finish_task(key: str) -> str:
    return str(writers.save_final(LIVE[key]))


@flow(name="grpo-train")
def train_flow(params: str = "params.yaml", overrides: list[str] | None = None,
               resume: bool = False, evaluate_at_end: bool = True,
               allow_changes: list[str] | None = None) -> dict:
    """Train from the SFT checkpoint (or resume the interrupted run, whose recipe may differ
    only in `allow_changes`); returns the final evaluation (empty without `evaluate_at_end`:
    DVC runs evaluation as its own stage)."""
    from prefect.runtime import flow_run

    cfg = load_config(params, overrides or [])
    # held here too (a no-op under `grpo train`, which took it first): a scheduled run that
    # meets a running one stops at once instead of interleaving with it
    with output_lock(cfg, f"Prefect flow run {flow_run.name!r}"):
        return _train(cfg, resume, evaluate_at_end, tuple(allow_changes or ()))


def _train(cfg: Config, resume: bool, evaluate_at_end: bool, allow_changes: tuple[str, ...]
           ) -> dict:
    run = open_run(cfg, resume=resume, allow_changes=allow_changes)
    try:
        compare = evaluate_at_end and cfg.evaluate.baseline
        baseline = call(baseline_task, run.key) if compare else None
        n, every = cfg.train.iterations, cfg.train.checkpoint_every
        budget = Budget(cfg.train.max_minutes)
        with progress(run.start_iteration, n) as bar:
            for it in range(run.start_iteration, n + 1):
                done = run_iteration(run.key, it)  # None: none of its prompts fit
                last = it == n or distributed.any_rank(budget.spent())  # ranks agree
                if done is not None:
                    rollout, scored, metrics = done
                    if it % every == 0 and not last:
                        call(checkpoint_task, run.key, it)
                        metrics.update(call(quick_evaluate_task, run.key, it))
                    # Log, then save: a kill in between reruns the iterations since the last
                    # save on resume, and their logs are skipped because MLflow already has
                    # the steps (no gap, no dupe; the rerun draws the same prompts and samples)
                    call(log_task, run.key, rollout, scored, metrics)
                if it % cfg.train.resume_every == 0 or last:
                    call(save_state_task, run.key, it)
                bar.update(done[2] if done else {})
                if last:
                    break
        call(finish_task, run.key)
        results = (call(evaluate_task, run.key, run.last_iteration, baseline)
                   if evaluate_at_end else {})
        close_run(run, "FINISHED")
        return results
    except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C; SIGTERM, a cancel from Prefect
        close_run(run, "KILLED")  # resumable, like FAILED
        raise
    except BaseException:
        close_run(run, "FAILED")
        raise


def run_iteration(key: str, it: int) -> tuple[Rollout, ScoredBatch, dict[str, float]] | None:
    """The tasks of one iteration, up to the weight sync: the rollout, its scores, and the
    iteration's metrics over all ranks (rank 0 logs the job's numbers). None, with a warning,
    when every prompt drawn was over the prompt limit (an iteration with nothing to learn)."""
    start = time.perf_counter()
    rollout = call(rollout_task, key, it)
    if distributed.any_rank(not rollout.result.groups):
        skipped_iteration(LIVE[key], it)
        return None
    scored = call(reward_task, key, rollout)
    if LIVE[key].cfg.rollout.min_group_size:
        rollout, scored = call(grow_task, key, rollout, scored)
    if LIVE[key].cfg.rollout.refill_rounds:
        rollout, scored = call(refill_task, key, rollout, scored)
    scored = call(gate_task, key, rollout, scored)
    updated = call(update_task, key, rollout, scored)
    synced_s = call(sync_task, key)
    metrics = {**rollout.metrics, **scored.metrics, **updated, "time/sync_s": synced_s,
               "time/iteration_s": time.perf_counter() - start}
    return rollout, scored, distributed.reduce_metrics(metrics)


def skipped_iteration(run, it: int) -> None:
    run.skipped_iterations += 1
    r = run.cfg.rollout
    if distributed.is_main():
        print(f"iteration {it} skipped: all its prompts are over rollout.max_prompt_tokens="
              f"{r.max_prompt_tokens} (rollout.overlong_prompts={r.overlong_prompts}); "
              f"{run.skipped_iterations} skipped so far", file=sys.stderr)


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo train [--resume] [--no-eval]`, also under `torchrun` (one process per rank)."""
    distributed.init_from_env(cfg.train.dist_timeout_s)
    distributed.shard_range(cfg.rollout.prompts_per_iteration)  # fail before any loading
    if cfg.rollout.refill_rounds and distributed.world() > 1:
        raise UserError(f"rollout.refill_rounds={cfg.rollout.refill_rounds}: dynamic sampling "
                        f"runs on one process for now (the ranks would need to agree on every "
                        f"round); set it to 0 under torchrun")
    if cfg.rollout.min_group_size and distributed.world() > 1:
        raise UserError(f"rollout.min_group_size={cfg.rollout.min_group_size}: adaptive group "
                        f"size runs on one process for now (the ranks would gather groups of "
                        f"different sizes); set it to null under torchrun")
    check_processed(cfg)  # and before Prefect's server starts
    check_functions(list(cfg.reward.functions), cfg.reward.reward_model)
    entry = train_flow if distributed.is_main() else train_flow.fn  # one Prefect flow run
    try:
        with run_context(cfg):
            results = entry(args.params, args.overrides, resume=args.resume,
                            evaluate_at_end=not args.no_eval, allow_changes=args.allow_change)
    finally:
        distributed.shutdown()
    if results:
        print(json.dumps(headline(results), indent=2))
        print_comparison(results)
    return 0


@contextlib.contextmanager
def run_context(cfg: Config):
    """What a training job holds while it runs, on rank 0: the lock on train.output_dir (taken
    first, so a second run stops before anything starts) and the temporary Prefect server."""
    if not distributed.is_main():
        yield
        return
    from flows.prefect_server import temporary_server

    with output_lock(cfg, shlex.join(["grpo", *sys.argv[1:]])), temporary_server():
        yield


@contextlib.contextmanager
def output_lock(cfg: Config, holder: str):
    """The lock on train.output_dir (rank 0 writes it; the other ranks share rank 0's)."""
    from flows.run.lock import run_lock

    if not distributed.is_main():
        yield
        return
    with run_lock(cfg.train.output_dir, holder):
        yield


def print_comparison(flat: dict[str, float]) -> None:
    """The before -> after table of a final evaluation's flat metrics (when it has one)."""
    from flows.comparison import from_results, table
    from flows.evaluate import by_dataset

    comparisons = from_results(by_dataset(flat))
    if comparisons:
        print(f"\nbefore -> after training, paired over the same problems:\n{table(comparisons)}")


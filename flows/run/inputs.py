"""What a run reads: the processed files, the training mixture (less what the pass-rate
filter drops), the evaluation sets, the worked examples of the prompt, the prompt renderer and
the engine's options. Training, `grpo evaluate` and the benchmarks all read them from here,
so they see the same data and the same prompts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from grpo_core.config import Config
from grpo_core.data.prompts import PromptRenderer
from grpo_core.errors import UserError
from grpo_core.parallel import distributed


def processed_files(cfg: Config) -> dict[str, Path]:
    """Every processed file the run reads: the training mixture's and the evaluation's."""
    from flows.prepare import eval_splits, processed_paths, train_splits

    return processed_paths(cfg, train_splits(cfg) + eval_splits(cfg))


def load_data(cfg: Config):
    """(training mixture, {eval name: rows}, few-shot pairs) from the processed files."""
    from grpo_core.data.prompts import few_shot_examples
    from grpo_core.data.sources import (MixturePart, describe_limits, load_processed,
                                        processed_name, training_mixture, within_difficulty)

    files = processed_files(cfg)
    frames = {name: load_processed(path) for name, path in files.items()}
    parts = [MixturePart(processed_name(s.name, s.split), s.rows, s.max_steps, s.max_level)
             for s in cfg.data.train]
    mixture = training_mixture(frames, parts, cfg.data.seed)
    evals = {}
    for s in cfg.evaluate.datasets:
        part = MixturePart(processed_name(s.name, s.split), None, s.max_steps, s.max_level)
        frame = within_difficulty(frames[part.key], part)
        if frame.empty:
            raise UserError(f"evaluate.datasets: {part.key} has 0 rows{describe_limits(part)}")
        evals[s.name] = frame.head(s.rows) if s.rows is not None else frame
    k = cfg.data.prompt.few_shot
    shots = (few_shot_examples(mixture["question"].tolist(), mixture["solution"].tolist(), k)
             if k else [])
    return mixture, evals, shots


def training_rows(cfg: Config, mixture: pd.DataFrame) -> pd.DataFrame:
    """The mixture, less what `data.pass_rates` filters out. Applied after `load_data` chose
    the worked examples, so the prompt stays the one the rates were measured with; evaluation
    never reads the earlier rollouts."""
    from grpo_core.data.pass_rates import filter_mixture

    f = cfg.data.pass_rates
    if f is None:
        return mixture
    kept, said = filter_mixture(mixture, f.rollouts, reward=f.reward, min_rate=f.min_rate,
                                max_rate=f.max_rate, min_samples=f.min_samples,
                                own_rollouts=cfg.rollout.output_dir)
    if distributed.is_main():
        print(said, file=sys.stderr)
    return kept


def prompt_renderer(cfg: Config, tokenizer: Any,
                    few_shot: list[tuple[str, str]]) -> PromptRenderer:
    """The configured prompt (`data.prompt`) with these worked examples."""
    p = cfg.data.prompt
    return PromptRenderer(tokenizer, system=p.system, instruction=p.instruction,
                          few_shot=tuple(few_shot))


def engine_options(cfg: Config) -> dict[str, Any]:
    """The engine's keyword arguments. The context holds the longest prompt plus the longer of
    the rollout's and the evaluation's completions (one engine serves both in training)."""
    from grpo_core.rollout import kv_cache_tokens

    r = cfg.rollout
    longest = r.max_prompt_tokens + max(r.max_new_tokens, cfg.evaluate.max_new_tokens)
    batch = kv_cache_tokens(r.prompts_per_iteration, r.group_size, r.max_prompt_tokens,
                            r.max_new_tokens)
    return dict(dtype=r.dtype, seed=r.seed, max_prompt_tokens=r.max_prompt_tokens,
                overlong_prompts=r.overlong_prompts, cpu_kv_cache_gib=r.cpu_kv_cache_gib,
                gpu_memory_utilization=r.gpu_memory_utilization,
                tensor_parallel_size=r.tensor_parallel_size, sleep_mode=r.sleep_mode,
                max_model_len=longest, kv_cache_tokens=batch, cpu_compile=r.cpu_compile,
                cpu_kv_block_size=r.cpu_kv_block_size)


def start_engine(cfg: Config, model_dir: str | Path) -> Any:
    """The configured rollout engine on `model_dir`, with one line saying what started and
    how long it took (the first start of vLLM is the longest silent wait of a run)."""
    import time

    from grpo_core.parallel.hardware import resolve_dtype
    from grpo_core.rollout import make_engine

    began = time.monotonic()
    engine = make_engine(cfg.rollout.engine, model_dir, **engine_options(cfg))
    if distributed.is_main():
        print(f"rollout engine: {cfg.rollout.engine} ({resolve_dtype(cfg.rollout.dtype)}) on "
              f"{model_dir}, ready in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return engine


def check_prompts_fit(cfg: Config, tokenizer: Any, render: PromptRenderer,
                      mixture: pd.DataFrame) -> None:
    """Stop before training when no training prompt fits `rollout.max_prompt_tokens` (with
    `overlong_prompts: skip` every iteration would have nothing to sample). Tokenizes only
    the prompts of the shortest questions."""
    r = cfg.rollout
    if r.overlong_prompts != "skip" or mixture.empty:
        return
    shortest = mixture["question"].str.len().nsmallest(16).index
    prompts = render(mixture.loc[shortest, "question"].tolist())
    fewest = min(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    if fewest > r.max_prompt_tokens:
        raise UserError(f"rollout.max_prompt_tokens={r.max_prompt_tokens}: no training prompt "
                        f"fits (the shortest has {fewest} tokens), so rollout.overlong_prompts="
                        f"skip would skip them all; raise the limit or use truncate")


def check_processed(cfg: Config, *, evaluate_only: bool = False) -> None:
    """The processed files a run reads exist: checked before its flow starts Prefect's
    server (which takes a while), so a missing `grpo prepare` is one line at once."""
    from flows.prepare import eval_splits, processed_paths, train_splits
    from grpo_core.data.sources import require_processed

    splits = eval_splits(cfg) if evaluate_only else train_splits(cfg) + eval_splits(cfg)
    for path in processed_paths(cfg, splits).values():
        require_processed(path)

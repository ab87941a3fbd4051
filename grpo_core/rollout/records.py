"""Rollout records: one row per completion, written per iteration as parquet
(`<out_dir>/iter_00001.parquet`, DVC-tracked). `reward` and `advantage` start as NaN; the
reward and advantage stages fill them (rows are in group order: prompt, then sample index,
the same order as the `(P, G)` tensors flattened row-major).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from grpo_core.rollout import RolloutResult

COLUMNS = ("iteration", "prompt_id", "prompt_index", "sample_index", "prompt", "completion",
           "completion_tokens", "finish_reason", "logprob_sum", "prompt_truncated",
           "prompt_tokens", "reward", "advantage")


def to_frame(iteration: int, prompt_ids: list[str], prompts: list[str],
             result: RolloutResult) -> pd.DataFrame:
    """`prompt_ids`/`prompts` are the lists given to `generate` (indexed by prompt_index);
    skipped prompts have no rows."""
    if len(prompt_ids) != result.num_prompts or len(prompts) != result.num_prompts:
        raise ValueError(f"{len(prompt_ids)} ids and {len(prompts)} prompts for a rollout of "
                         f"{result.num_prompts} prompts")
    rows = [
        (iteration, str(prompt_ids[g.prompt_index]), g.prompt_index, k, prompts[g.prompt_index],
         c.text, len(c.token_ids), c.finish_reason, c.logprob_sum, g.truncated,
         len(g.prompt_ids), float("nan"), float("nan"))
        for g in result.groups for k, c in enumerate(g.completions)
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"iteration": "int64", "prompt_index": "int64", "sample_index": "int64",
                         "completion_tokens": "int64", "logprob_sum": "float64",
                         "prompt_truncated": "bool", "prompt_tokens": "int64",
                         "reward": "float64", "advantage": "float64"})


def records_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / f"iter_{iteration:05d}.parquet"


def write_records(frame: pd.DataFrame, out_dir: str | Path, iteration: int) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half parquet file."""
    path = records_path(out_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path

"""Offline difficulty filtering: each problem's pass rate in earlier runs' rollouts, and the
training rows whose rate lies in a band.

Why: a GRPO group's advantages are its rewards minus their mean, so a group whose G samples all
fail (or all pass) teaches nothing and still costs a rollout. A small policy fails most GSM8K
problems every time; training on the problems it sometimes solves gives more groups a signal.
Skywork-OR1 (arXiv:2505.22312) filters its data by the policy's own pass rates in the same way;
DAPO's dynamic sampling (arXiv:2503.14476) drops such groups online, at the cost of extra
rollouts.

The rollout files are the ones `grpo train` writes (grpo_core.rollout.records): one row per
sample, its problem in `prompt_id` (the dataset row's `id`) and each reward function's score in
`reward_<name>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from grpo_core.errors import UserError

WHERE = "data.pass_rates"


def rollout_files(paths: Sequence[str | Path], own: str | Path | None = None) -> list[Path]:
    """Each path is a parquet file or a folder searched recursively for them -> sorted files.
    None of them may be or hold `own`, the folder this run writes its rollouts to: the filter
    would then change as the run goes (and on resume), so a resumed run would not draw the
    problems an uninterrupted one would."""
    files: list[Path] = []
    mine = Path(own).resolve() if own is not None else None
    for raw in paths:
        path = Path(raw)
        full = path.resolve()
        if mine is not None and (full == mine or mine in full.parents or full in mine.parents):
            raise UserError(f"{WHERE}.rollouts: {path} is or holds this run's own rollouts "
                            f"(rollout.output_dir {own}); point it at earlier runs' rollouts")
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(path.rglob("*.parquet"))
            if not found:
                raise UserError(f"{WHERE}.rollouts: {path} holds no .parquet rollout files")
            files.extend(found)
        else:
            raise UserError(f"{WHERE}.rollouts: {path} does not exist")
    return files


def read_samples(files: Sequence[Path], reward: str) -> pd.DataFrame:
    """(S rows: prompt_id, passed) over every sample of `files`; a sample passed when its
    `reward_<reward>` score is > 0 (the accuracy rewards score 0 or 1)."""
    import pyarrow.parquet as pq

    column = f"reward_{reward}"
    frames = []
    for path in files:
        try:
            names = pq.read_schema(path).names
        except Exception as exc:
            raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
        if "prompt_id" not in names or column not in names:
            scored = [n.removeprefix("reward_") for n in names if n.startswith("reward_")]
            raise UserError(f"{path}: no column prompt_id and {column} ({WHERE}.reward = "
                            f"{reward!r}; rewards in this file: {', '.join(scored) or 'none'})")
        frame = pd.read_parquet(path, columns=["prompt_id", column])
        frames.append(pd.DataFrame({"prompt_id": frame["prompt_id"].astype(str),
                                    "passed": frame[column].fillna(0.0) > 0}))
    return pd.concat(frames, ignore_index=True)


def pass_rates(samples: pd.DataFrame) -> pd.DataFrame:
    """(S rows: prompt_id, passed) -> one row per prompt_id (the index): samples, rate."""
    grouped = samples.groupby("prompt_id")["passed"]
    return pd.DataFrame({"samples": grouped.size(), "rate": grouped.mean()})


def within_pass_rates(frame: pd.DataFrame, rates: pd.DataFrame, *, min_rate: float,
                      max_rate: float, min_samples: int) -> pd.DataFrame:
    """The rows of `frame` (an `id` column) whose problem has at least `min_samples` samples in
    `rates` and a rate in [min_rate, max_rate]; the order of `frame` is kept."""
    known = rates[(rates["samples"] >= min_samples)
                  & rates["rate"].between(min_rate, max_rate)]
    return frame[frame["id"].astype(str).isin(known.index)].reset_index(drop=True)


def filter_mixture(mixture: pd.DataFrame, paths: Sequence[str | Path], *, reward: str,
                   min_rate: float, max_rate: float, min_samples: int,
                   own_rollouts: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The mixture rows within the band, and one line saying what was kept and from what.
    An empty result is the user's mistake (wrong files, band or reward): a UserError."""
    files = rollout_files(paths, own_rollouts)
    rates = pass_rates(read_samples(files, reward))
    measured = rates[rates["samples"] >= min_samples]
    kept = within_pass_rates(mixture, rates, min_rate=min_rate, max_rate=max_rate,
                             min_samples=min_samples)
    band = f"pass rate {min_rate:g}-{max_rate:g} of {reward} over >= {min_samples} samples"
    if kept.empty:
        raise UserError(f"{WHERE}: no training problem has a {band} in {len(files)} rollout "
                        f"file(s) ({len(measured)} problems had enough samples)")
    return kept, (f"{WHERE}: training on {len(kept)} of {len(mixture)} problems ({band}; "
                  f"{len(measured)} measured in {len(files)} rollout files)")

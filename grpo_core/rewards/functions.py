"""Reward functions: a registry with one signature, combined with weights by `score`.

Every reward function takes the batch and returns one value per completion:

    fn(completions: list[str], *, answers: list[str], sources: list[str],
       token_counts: list[int], max_new_tokens: int, **context) -> list[float | None]

`context` carries the rest (prompts, questions, solutions and checkers, the names of the rows'
answer checkers: one per completion; time_limit_s, answer_format, overlong_buffer,
reward_model_dir, reward_model_batch_size, ...); a function
takes what it needs and ignores the rest (`**_`). `None` means "could not score this
completion": it becomes 0 and is counted as a failure. Functions written per completion are
lifted with `@per_completion`, which also applies the time limit and turns an exception into a
failure for that one completion only.

`soft_overlong` is DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), with
L_max = the generation limit and L_cache = `overlong_buffer`. `reward_model` scores
prompt + completion with a Hugging Face sequence-classification model (logit 0), as the
reward-model variant of DeepSeekMath's GRPO (arXiv 2402.03300) does; it is batched and cached
per directory.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from grpo_core.rewards.answers import (gsm8k_correct, gsm8k_intermediates, is_correct, last_boxed,
                               math_correct, numbers_in, to_number)
from grpo_core.errors import UserError
from grpo_core.rewards.ranges import bounded, scored_range

RewardFn = Callable[..., Sequence[Optional[float]]]


class RewardTimeout(Exception):
    """A reward call ran past its time limit."""


# ------------------------------------------------------------------ time limits
def call_with_limit(fn: Callable[[], Any], seconds: float) -> Any:
    """Run fn() with a wall-clock limit; raise RewardTimeout past it. In the main thread a
    SIGALRM timer interrupts the call itself; elsewhere (Prefect runs tasks in threads, where
    signals cannot be used) the call runs in a daemon thread that is abandoned on timeout:
    the caller moves on, the stray thread finishes or dies with the process."""
    if threading.current_thread() is threading.main_thread():
        return _with_alarm(fn, seconds)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout(f"exceeded {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _with_alarm(fn: Callable[[], Any], seconds: float) -> Any:
    """SIGALRM limit that nests: an enclosing timer keeps running and is re-armed after."""
    def on_alarm(signum, frame):
        raise RewardTimeout(f"exceeded {seconds:g} s")

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left > 0 else seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:  # the enclosing limit goes on counting from where it was
            left = outer_left - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


# -------------------------------------------------------------------- lifting
class _Failed:
    """Marker of a per-completion failure; `timeout` tells the two kinds apart in metrics,
    `error` is what the user sees (the first failure of each function is reported)."""

    def __init__(self, timeout: bool, error: str = ""):
        self.timeout, self.error = timeout, error

    @classmethod
    def of(cls, exc: BaseException, limit_s: float) -> "_Failed":
        if isinstance(exc, RewardTimeout):
            return cls(True, f"timed out after {limit_s:g} s (reward.timeout_s)")
        text = str(exc).strip().splitlines()
        return cls(False, f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)


# Context lists with one entry per completion; `per_completion` hands each function its own
# entry under the singular name (prompts[i] -> prompt=...).
PER_ITEM_CONTEXT = {"prompts": "prompt", "questions": "question", "solutions": "solution",
                    "checkers": "checker"}


def per_completion(item_fn: Callable[..., float]) -> RewardFn:
    """Lift `item_fn(completion, *, answer, source, token_count, max_new_tokens, **context)`
    to the batch signature, with the time limit and failure isolation per completion."""
    @functools.wraps(item_fn)
    def batch(completions, *, answers, sources, token_counts, max_new_tokens, time_limit_s=5.0,
              **context):
        items = {one: context.pop(many) for many, one in PER_ITEM_CONTEXT.items()
                 if context.get(many) is not None}
        out: list[Any] = []
        for i, (c, a, s, n) in enumerate(zip(completions, answers, sources, token_counts,
                                             strict=True)):
            call = functools.partial(item_fn, c, answer=a, source=s, token_count=n,
                                     max_new_tokens=max_new_tokens, **context,
                                     **{one: values[i] for one, values in items.items()})
            try:
                out.append(call_with_limit(call, time_limit_s))
            except UserError:  # a configuration mistake, not a bad completion
                raise
            except Exception as exc:  # RewardTimeout included
                out.append(_Failed.of(exc, time_limit_s))
        return out

    batch.per_completion = True  # score() must not apply a second, whole-batch limit
    return batch


# ------------------------------------------------------------------- functions
@per_completion
def gsm8k_accuracy(completion: str, *, answer: str, **_) -> float:
    """1 if the final number equals the gold number (after ####, in \\boxed{}, or the last one)."""
    return float(gsm8k_correct(completion, answer))


@per_completion
def math_accuracy(completion: str, *, answer: str, **_) -> float:
    """1 if math-verify finds the completion's answer equivalent to the gold answer."""
    return float(math_correct(completion, answer))


@per_completion
def accuracy(completion: str, *, answer: str, checker: str | None = None, **_) -> float:
    """1 if the row's own checker (its `checker` column: numeric, exact or math_verify) finds
    the completion right, so a mixture of datasets is judged row by row."""
    if checker is None:
        raise UserError("the accuracy reward needs each row's checker (the `checker` column "
                        "of the processed data; rerun `grpo prepare`)")
    return float(is_correct(completion, answer, checker))


@per_completion
def gsm8k_steps(completion: str, *, answer: str, source: str, solution: str | None = None,
                question: str = "", **_) -> float:
    """Credit for the work, not just the answer: the F1 overlap between the values the reference
    solution computes on the way (`grpo_core.rewards.answers.gsm8k_intermediates`) and the numbers the
    completion writes before its final '####' line (less the question's numbers and the gold
    answer). Recall rewards the steps found; precision keeps a list of guesses from paying.
    0 for problems of one step, for other datasets and without a reference solution: a constant
    within a group, so it moves no advantage there."""
    if source != "gsm8k" or not solution:
        return 0.0
    wanted = gsm8k_intermediates(solution, question)
    if not wanted:
        return 0.0
    work, mark, _ = completion.rpartition("####")
    work = work if mark else completion
    written = numbers_in(work) - numbers_in(question) - {to_number(answer)}
    hits = len(wanted & written)
    return 2 * hits / (len(wanted) + len(written)) if hits else 0.0


def _hashes_once(text: str) -> bool:
    """Exactly one line starts with '####', and a number follows it there."""
    marked = [line.strip() for line in text.splitlines() if line.strip().startswith("####")]
    return len(marked) == 1 and has_number(marked[0][4:])


def _hashes_once_at_end(text: str) -> bool:
    """The GSM8K convention, strictly: the last non-empty line is '#### <number>' and no other
    line starts with '####'. A lax "some line starts with '####'" was reward-hacked in a
    learning run: the policy learned to print '####' lines until the token limit (2026-11-23,
    docs/experiments.md)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    marked = sum(line.startswith("####") for line in lines)
    return marked == 1 and lines[-1].startswith("####") and has_number(lines[-1][4:])


FORMATS: dict[str, Callable[[str], bool]] = {
    "hashes": _hashes_once_at_end,
    # exactly one non-empty \boxed{...} (several would be the same hack as above)
    "boxed": lambda text: bool(last_boxed(text)) and len(_BOXED_MARK.findall(text)) == 1,
}
# Half credit on the way to the strict form: the answer stated once, but not as the last line.
# The SFT checkpoint's samples rarely meet the strict form, too rare a signal for it alone to
# be learned (the 2026-11-23 runs in docs/experiments.md); the answer stated once is commoner.
HALF_FORMATS: dict[str, Callable[[str], bool]] = {"hashes": _hashes_once}
ANSWER_FORMATS = tuple(FORMATS)


_BOXED_MARK = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def has_number(text: str) -> bool:
    return to_number(text) is not None


@per_completion
def format_reward(completion: str, *, answer_format: str = "hashes", **_) -> float:
    """1 if the completion states its final answer in the instructed form (`answer_format`),
    0.5 if it states it once in that form but not at the end ('hashes'), else 0."""
    if answer_format not in FORMATS:
        raise UserError(f"reward.answer_format must be one of {', '.join(FORMATS)}, "
                        f"got {answer_format!r}")
    if FORMATS[answer_format](completion):
        return 1.0
    half = HALF_FORMATS.get(answer_format)
    return 0.5 if half is not None and half(completion) else 0.0


@per_completion
def soft_overlong(completion: str, *, token_count: int, max_new_tokens: int,
                  overlong_buffer: int = 64, **_) -> float:
    """DAPO eq. 13: 0 up to L_max - L_cache tokens, then falling linearly to -1 at L_max."""
    safe = max_new_tokens - overlong_buffer
    if token_count <= safe:
        return 0.0
    if token_count <= max_new_tokens:
        return (safe - token_count) / overlong_buffer
    return -1.0


def reward_model(completions, *, prompts: Optional[Sequence[str]] = None,
                 reward_model_dir: Optional[str] = None, reward_model_batch_size: int = 8,
                 **_) -> list[float]:
    """Logit 0 of a sequence-classification model on prompt + completion, in batches."""
    import torch

    if reward_model_dir is None:
        raise UserError("reward function reward_model needs reward.reward_model: "
                        "a local directory with a sequence-classification model")
    model, tokenizer = _load_reward_model(reward_model_dir)
    texts = [p + c for p, c in zip(prompts or [""] * len(completions), completions, strict=True)]
    scores: list[float] = []
    for start in range(0, len(texts), reward_model_batch_size):
        batch = tokenizer(texts[start:start + reward_model_batch_size], return_tensors="pt",
                          padding=True, truncation=True)
        with torch.inference_mode():
            logits = model(**batch).logits  # (B, num_labels)
        scores.extend(logits[:, 0].float().tolist())
    return scores


@functools.lru_cache(maxsize=2)
def _load_reward_model(path: str):
    from pathlib import Path

    if not Path(path).is_dir():  # before importing transformers: that takes seconds
        raise UserError(f"reward.reward_model: directory not found: {path}")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # batching needs one; the model finds the last real token
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# each with the range it can score (`grpo_core.rewards.ranges`; the rollout gate checks it)
REWARDS: dict[str, RewardFn] = {
    "gsm8k_accuracy": bounded(gsm8k_accuracy, 0.0, 1.0),
    "math_accuracy": bounded(math_accuracy, 0.0, 1.0),
    "accuracy": bounded(accuracy, 0.0, 1.0),
    "gsm8k_steps": bounded(gsm8k_steps, 0.0, 1.0),  # an F1 score
    "format": bounded(format_reward, 0.0, 1.0),
    "soft_overlong": bounded(soft_overlong, -1.0, 0.0),
    "reward_model": reward_model,  # a logit: no range, only finiteness is checked
}


# ------------------------------------------------------------------- resolving
def resolve(name: str) -> RewardFn:
    """A registered name, or a user function by dotted path ('pkg.module:fn' or 'pkg.module.fn')."""
    if name in REWARDS:
        return REWARDS[name]
    module, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module or not attr:
        raise UserError(f"reward.functions: unknown reward function {name!r} "
                        f"(built in: {', '.join(REWARDS)}; or a dotted path 'pkg.module:function')")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"reward.functions: cannot import {name!r}: {exc}") from None
    if not callable(fn):
        raise UserError(f"reward.functions: {name!r} is not callable")
    return fn


def check_functions(names: Sequence[str], reward_model_dir: Optional[str] = None) -> dict[str, RewardFn]:
    """Resolve every configured function at start-up, so a typo fails before any rollout."""
    fns = {name: resolve(name) for name in names}
    for name, fn in fns.items():
        scored_range(name, fn)  # a malformed `reward_range` fails here too
    if "reward_model" in fns:
        if reward_model_dir is None:
            raise UserError("reward.functions has reward_model but reward.reward_model is not set")
        _load_reward_model(reward_model_dir)
    return fns


# --------------------------------------------------------------------- scoring
def score(completions: Sequence[str], *, answers: Sequence[str], sources: Sequence[str],
          token_counts: Sequence[int], max_new_tokens: int, weights: dict[str, float],
          time_limit_s: float = 5.0, errors: dict[str, str] | None = None,
          **context: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Weighted sum of the configured reward functions.

    Returns (total (N,), {name: (N,)}, metrics). A per-completion function gets `time_limit_s`
    for each completion; any other function gets `time_limit_s * N` for the whole batch, and if it
    raises or runs out of time every completion gets 0 from it. Failures are counted in
    `reward/<name>/failures` (timeouts also in `reward/<name>/timeouts`); `errors`, if given,
    receives each failing function's first failure as text."""
    n = len(completions)
    for label, values in (("answers", answers), ("sources", sources), ("token_counts", token_counts)):
        if len(values) != n:
            raise ValueError(f"score: {len(values)} {label} for {n} completions")
    kwargs = dict(answers=list(answers), sources=list(sources), token_counts=list(token_counts),
                  max_new_tokens=max_new_tokens, time_limit_s=time_limit_s, **context)
    total = np.zeros(n)  # (N,)
    per_function: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}
    for name, weight in weights.items():
        raw = _call(resolve(name), list(completions), kwargs, time_limit_s * max(n, 1))
        values, failures, timeouts, first = _check(name, raw, n)
        if errors is not None and failures:
            errors[name] = first
        per_function[name] = values
        total += weight * values
        metrics.update({f"reward/{name}/mean": float(values.mean()) if n else 0.0,
                        f"reward/{name}/failures": failures,
                        f"reward/{name}/timeouts": timeouts})
    metrics["reward/total/mean"] = float(total.mean()) if n else 0.0
    metrics["reward/total/std"] = float(total.std()) if n else 0.0
    return total, per_function, metrics


def _call(fn: RewardFn, completions: list[str], kwargs: dict, batch_limit: float) -> Any:
    if getattr(fn, "per_completion", False):
        return fn(completions, **kwargs)
    try:
        return call_with_limit(lambda: fn(completions, **kwargs), batch_limit)
    except UserError:
        raise
    except Exception as exc:  # RewardTimeout included
        return [_Failed.of(exc, batch_limit)] * len(completions)


def _check(name: str, raw: Any, n: int) -> tuple[np.ndarray, int, int, str]:
    """(values as (N,) float64 with failures as 0, failures, time-outs, the first failure's
    text); a wrong length or a non-finite value -> UserError."""
    try:
        raw = list(raw)
    except TypeError:
        raise UserError(f"reward function {name} returned {type(raw).__name__}, "
                        "expected a list of numbers") from None
    if len(raw) != n:
        raise UserError(f"reward function {name} returned {len(raw)} values for {n} completions")
    values = np.zeros(n)
    failures = timeouts = 0
    first = ""
    for i, v in enumerate(raw):
        if v is None or isinstance(v, _Failed):
            failures += 1
            timeouts += int(isinstance(v, _Failed) and v.timeout)
            first = first or (v.error if isinstance(v, _Failed) else "returned None")
            continue
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            raise UserError(f"reward function {name} returned {v!r} for completion {i}, "
                            "expected a number") from None
        if not math.isfinite(values[i]):
            raise UserError(f"reward function {name} returned a non-finite value ({v}) "
                            f"for completion {i}")
    return values, failures, timeouts, first

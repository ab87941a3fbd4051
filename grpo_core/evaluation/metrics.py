"""Evaluation metrics on (P, k) correctness: greedy pass@1, sampled pass@k and maj@k.

- pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1):
  1 - C(n - c, k) / C(n, k) with n samples of which c are correct, averaged over problems.
- maj@k (self-consistency, Wang et al. 2022, arXiv 2203.11171) votes over the k extracted
  final answers; unparseable answers do not vote. Ties go to the answer seen first, so the
  result is deterministic for a given sample order.
- Breakdowns (MATH by level and subject) are the same metric over subsets of rows.
"""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Sequence

import torch

from grpo_core.errors import UserError


def pass_at_k(correct: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased pass@k per problem.

    correct: (P, n) bool, n >= k samples per problem. Returns (P,) float in [0, 1].
    """
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    c = correct.sum(dim=1).tolist()
    # C(n - c, k) / C(n, k): the chance that k draws without replacement are all wrong
    return torch.tensor([1.0 - comb(n - ci, k) / comb(n, k) for ci in c], dtype=torch.float64)


def majority_vote(answers: Sequence[Sequence[str | None]], correct: torch.Tensor) -> torch.Tensor:
    """maj@k per problem: is the most common extracted answer a correct one?

    answers: P lists of k normalised answer strings (None = no answer found).
    correct: (P, k) bool, whether each sample is correct. Returns (P,) bool.
    """
    out = torch.zeros(len(answers), dtype=torch.bool)
    for p, row in enumerate(answers):
        votes = Counter(a for a in row if a is not None)
        if not votes:
            continue
        winner = max(votes, key=lambda a: (votes[a], -row.index(a)))  # first seen wins ties
        out[p] = bool(correct[p, row.index(winner)])
    return out


def summarize(correct: torch.Tensor, answers: Sequence[Sequence[str | None]] | None = None,
              ks: Sequence[int] = ()) -> dict[str, float]:
    """Metrics for one set of problems.

    correct: (P, n) bool; column 0 is the greedy (or first) sample.
    Returns {"accuracy": pass@1 of column 0, "pass@k": ..., "maj@k": ..., "count": P}.
    """
    metrics = {"accuracy": correct[:, 0].double().mean().item() if len(correct) else 0.0,
               "count": float(correct.shape[0])}
    for k in ks:
        if k <= correct.shape[1] and len(correct):
            metrics[f"pass@{k}"] = pass_at_k(correct, k).mean().item()
            if answers is not None:
                voted = majority_vote([row[:k] for row in answers], correct[:, :k])
                metrics[f"maj@{k}"] = voted.double().mean().item()
    return metrics


def breakdown(correct: torch.Tensor, groups: Sequence[object]) -> dict[str, dict[str, float]]:
    """Accuracy (column 0) and count per group label, e.g. MATH level or subject.

    correct: (P, n) bool; groups: P labels. Labels are stringified and sorted.
    """
    out: dict[str, dict[str, float]] = {}
    labels = [str(g) for g in groups]
    for label in sorted(set(labels)):
        rows = torch.tensor([lab == label for lab in labels])
        out[label] = {"accuracy": correct[rows, 0].double().mean().item(),
                      "count": float(rows.sum())}
    return out


# ------------------------------------------------------------------------------ runner
def vote_key(completion: str, checker: str) -> str | None:
    """The normalised final answer that maj@k votes on, as the row's checker reads answers
    (None: no answer to vote for)."""
    from grpo_core.rewards.answers import checker as checker_named

    return checker_named(checker).answer_key(completion)


def check_all(completions: Sequence[str], golds: Sequence[str], checkers: Sequence[str],
              time_limit_s: float) -> list[bool]:
    """Correctness of each completion by its row's checker; a check that raises or exceeds its
    limit is wrong (an unknown checker name is a UserError: stale processed data)."""
    from grpo_core.rewards.answers import checker as checker_named
    from grpo_core.rewards.functions import call_with_limit

    out = []
    for text, gold, name in zip(completions, golds, checkers, strict=True):
        correct = checker_named(name).correct
        try:
            out.append(bool(call_with_limit(lambda: correct(text, gold), time_limit_s)))
        except Exception:  # noqa: BLE001 - a failed check scores as wrong, like the reward
            out.append(False)
    return out


def evaluate_frame(engine, prompts: Sequence[str], frame, *, max_new_tokens: int,
                   samples: int, temperature: float, time_limit_s: float = 5.0,
                   seed: int = 0) -> tuple[dict, list[dict]]:
    """Greedy pass@1, and with samples > 1 sampled pass@k / maj@k, on one dataset.

    prompts: P rendered prompts for the P rows of `frame` (processed schema). Returns
    (metrics with breakdowns by level and subject where present, one record per problem).
    """
    from grpo_core.rollout import SamplingSettings

    greedy = engine.generate(list(prompts), 1, SamplingSettings(
        temperature=0.0, max_new_tokens=max_new_tokens, seed=seed))
    rows = [g.prompt_index for g in greedy.groups]  # overlong prompts may have been skipped
    if prompts and not rows:  # else a score of 0 of 0 problems would read as accuracy 0
        raise UserError(f"evaluation: all {len(prompts)} prompts are longer than the prompt "
                        f"limit (rollout.max_prompt_tokens = {engine.max_prompt_tokens}) and "
                        "were skipped; raise it or lower data.prompt.few_shot")
    sub = frame.iloc[rows]
    texts = [[g.completions[0].text] for g in greedy.groups]
    if samples > 1:
        sampled = engine.generate([prompts[i] for i in rows], samples, SamplingSettings(
            temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))
        for row, g in zip(texts, sampled.groups, strict=True):
            row.extend(c.text for c in g.completions)
    golds, checkers = sub["answer"].tolist(), sub["checker"].tolist()
    flat = check_all([t for row in texts for t in row],
                     [gd for gd, row in zip(golds, texts) for _ in row],
                     [c for c, row in zip(checkers, texts) for _ in row], time_limit_s)
    width = len(texts[0]) if texts else 1
    correct = torch.tensor(flat, dtype=torch.bool).reshape(len(texts), width)  # (P, 1 + k)
    metrics = summarize(correct[:, :1], ks=())
    metrics["skipped"] = float(len(prompts) - len(rows))
    if samples > 1:
        votes = [[vote_key(t, c) for t in row[1:]] for row, c in zip(texts, checkers)]
        sampled_metrics = summarize(correct[:, 1:], votes, ks=sorted({1, samples}))
        metrics.update({k: v for k, v in sampled_metrics.items() if "@" in k})
    for column in ("level", "subject"):
        labels = sub[column]
        if labels.notna().any():  # GSM8K has neither
            metrics[f"by_{column}"] = breakdown(correct, labels.astype(str).tolist())
    records = [{"id": i, "correct": bool(c[0]), "completion": row[0]}
               for i, c, row in zip(sub["id"].tolist(), correct, texts)]
    if samples > 1:  # each problem's mean-of-k accuracy, for paired before/after comparisons
        for record, c in zip(records, correct):
            record["sampled_correct"] = c[1:].double().mean().item()
    return metrics, records

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

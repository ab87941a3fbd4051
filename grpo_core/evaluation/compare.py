"""Before/after comparison of two evaluations on the same problems, with a paired 95% CI.

Each problem i has a score before (x_i) and after (y_i): 0/1 for greedy accuracy, the fraction
of correct samples for mean-of-k accuracy. The change is the mean of d_i = y_i - x_i, and its
confidence interval is Student's t interval on the d_i (the paired t-test's interval, df = N - 1).
Pairing removes the between-problem variance that two independent accuracies would carry: at
low accuracy most problems are wrong both times, and d_i = 0 for them. For 0/1 scores this is
the Wald interval of the paired difference of proportions (McNemar's setting); we use t
rather than z quantiles so that small evaluations are not overconfident.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class PairedDifference:
    count: int
    before: float  # mean score before
    after: float
    delta: float  # after - before
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (a change at the 5% level, two-sided)."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_difference(before: Sequence[float], after: Sequence[float],
                      level: float = 0.95) -> PairedDifference:
    """(N,) scores before and (N,) after, in the same problem order -> the paired change and
    its `level` confidence interval. With one problem the interval is unknown (NaN); with no
    spread in the differences it is the single point."""
    if len(before) != len(after):
        raise ValueError(f"paired scores need the same problems: {len(before)} before, "
                         f"{len(after)} after")
    n = len(before)
    if n == 0:
        raise ValueError("paired scores need at least one problem")
    d = [float(y) - float(x) for x, y in zip(before, after)]
    mean = sum(d) / n
    half = math.nan
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
        half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, sum(map(float, before)) / n, sum(map(float, after)) / n, mean,
                            mean - half, mean + half)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy's, which the stack installs with scikit-learn and MLflow)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


# per-problem record field -> the name its comparison goes by
SCORES = {"correct": "accuracy", "sampled_correct": "mean_of_k"}


def compare_records(before: Sequence[dict], after: Sequence[dict]) -> dict[str, PairedDifference]:
    """Per-problem evaluation records (`id`, `correct`, optionally `sampled_correct`) of the
    same set before and after -> {"accuracy": ..., "mean_of_k": ...}, paired by problem id
    over the problems both evaluated (in `before`'s order)."""
    by_id = {r["id"]: r for r in after}
    pairs = [(b, by_id[b["id"]]) for b in before if b["id"] in by_id]
    if not pairs:
        raise ValueError("before and after share no problem: they were not evaluated on the "
                         "same set")
    out = {}
    for field, name in SCORES.items():
        if all(field in b and field in a for b, a in pairs):
            out[name] = paired_difference([float(b[field]) for b, _ in pairs],
                                          [float(a[field]) for _, a in pairs])
    return out

"""The promotion gate: does a trained policy measurably beat its starting checkpoint?

A rule over paired comparisons (`grpo_core.evaluation.compare`): every set named in `gain_on`
must have its 95% interval above 0, and, with `no_regression`, no evaluated set may have its
interval below 0. Training reward never enters: a reward can rise while accuracy falls (format
hacking, constant-answer guessing), so only held-out accuracy decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from grpo_core.evaluation.compare import PairedDifference


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: tuple[str, ...]  # one per set that decided, e.g. "arithmetic: +21.4% (CI ...)"

    def summary(self) -> str:
        return ("promoted: " if self.passed else "not promoted: ") + "; ".join(self.reasons)


def describe(name: str, d: PairedDifference) -> str:
    return (f"{name} {d.before:.1%} -> {d.after:.1%} ({d.delta:+.1%}, 95% CI {d.ci_low:+.1%} "
            f"to {d.ci_high:+.1%})")


def decide(comparisons: Mapping[str, PairedDifference], *, gain_on: Sequence[str],
           no_regression: bool) -> Decision:
    """Apply the rule. A set in `gain_on` that was not evaluated fails the gate (a typo must
    not promote a model)."""
    reasons, passed = [], True
    for name in gain_on:
        d = comparisons.get(name)
        if d is None:
            passed = False
            reasons.append(f"{name} was not evaluated (evaluated: {', '.join(comparisons)})")
        elif not d.ci_low > 0:
            passed = False
            reasons.append(f"no gain on {describe(name, d)}")
        else:
            reasons.append(f"gain on {describe(name, d)}")
    if no_regression:
        for name, d in comparisons.items():
            if d.ci_high < 0:
                passed = False
                reasons.append(f"worse on {describe(name, d)}")
    return Decision(passed, tuple(reasons))

"""Watching reward functions fail over a run: a function that raises on every call would
otherwise train the whole run on reward 0 with nothing said.

`FailureWatch.observe` takes one iteration's counts per function and returns what to tell the
user: the first failure of each function (with its text), and a second warning when its
failure rate over the run crosses `warn_rate`. Past `stop_rate` (over at least `min_samples`
completions) it raises the one-line UserError that ends the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from grpo_core.errors import UserError


@dataclass
class FailureWatch:
    warn_rate: float = 0.1
    stop_rate: Optional[float] = 0.5
    min_samples: int = 64
    calls: dict[str, int] = field(default_factory=dict)  # completions scored, per function
    failed: dict[str, int] = field(default_factory=dict)  # of which failed (time-outs included)
    said: set[tuple[str, str]] = field(default_factory=set)  # (function, "first" | "rate")

    def observe(self, counts: dict[str, tuple[int, int]], errors: dict[str, str]
                ) -> list[tuple[str, str]]:
        """counts: {function: (completions, failures)} of one iteration; errors: {function:
        first failure's text}. -> the warnings to show now, (function, text), each kind said
        once per function and run."""
        out = []
        for name, (n, bad) in counts.items():
            self.calls[name] = self.calls.get(name, 0) + n
            self.failed[name] = self.failed.get(name, 0) + bad
            rate = self.failed[name] / max(self.calls[name], 1)
            if bad and (name, "first") not in self.said:
                self.said.add((name, "first"))
                out.append((name, f"reward function {name} failed on {bad} of {n} completions "
                                  f"(scored 0); first failure: {errors.get(name, 'unknown')}"))
            enough = self.calls[name] >= self.min_samples
            if self.stop_rate is not None and enough and rate >= self.stop_rate:
                raise UserError(f"reward function {name} failed on {rate:.0%} of "
                                f"{self.calls[name]} completions (reward.failure_stop_rate="
                                f"{self.stop_rate:g}): {errors.get(name, 'see the warnings')}")
            if enough and rate >= self.warn_rate and (name, "rate") not in self.said:
                self.said.add((name, "rate"))
                out.append((name, f"reward function {name} has failed on {rate:.0%} of "
                                  f"{self.calls[name]} completions so far "
                                  f"(reward.failure_warn_rate={self.warn_rate:g})"))
        return out

"""Before/after: the paired comparison of two evaluations, as the numbers that go to MLflow,
metrics/eval.json and the console (`grpo train` against its starting checkpoint, `grpo
evaluate --baseline DIR` between any two checkpoints)."""

from __future__ import annotations

from typing import Mapping

from grpo_core.evaluation.compare import PairedDifference, compare_records

# comparison name -> the prefix of its keys in a set's metrics ("" for greedy accuracy)
_PREFIX = {"accuracy": "", "mean_of_k": "mean_of_k_"}


def compare_sets(before: Mapping[str, list[dict]], after: Mapping[str, list[dict]]
                 ) -> dict[str, dict[str, PairedDifference]]:
    """{set: {"accuracy": ..., "mean_of_k": ...}} for the sets both evaluations have."""
    return {name: compare_records(before[name], records)
            for name, records in after.items() if name in before}


def attach(results: dict[str, dict], comparisons: Mapping[str, Mapping[str, PairedDifference]]
           ) -> dict[str, dict]:
    """Add each set's before, delta, ci_low and ci_high (and mean_of_k_*) to its metrics, so
    MLflow logs `eval/<set>/delta` and `dvc metrics diff` shows them."""
    out = {name: dict(metrics) for name, metrics in results.items()}
    for name, by_score in comparisons.items():
        for score, d in by_score.items():
            p = _PREFIX[score]
            if p:
                out[name][f"{p}after"] = d.after
            out[name].update({f"{p}before": d.before, f"{p}delta": d.delta,
                              f"{p}ci_low": d.ci_low, f"{p}ci_high": d.ci_high,
                              f"{p}paired": float(d.count)})
    return out


def from_results(results: Mapping[str, Mapping[str, float]]
                 ) -> dict[str, dict[str, PairedDifference]]:
    """The comparisons back from metrics that `attach` filled (sets without one are left out)."""
    out: dict[str, dict[str, PairedDifference]] = {}
    for name, m in results.items():
        for score, p in _PREFIX.items():
            if f"{p}delta" in m:
                after = m[f"{p}after"] if p else m["accuracy"]
                out.setdefault(name, {})[score] = PairedDifference(
                    int(m[f"{p}paired"]), m[f"{p}before"], after, m[f"{p}delta"],
                    m[f"{p}ci_low"], m[f"{p}ci_high"])
    return out


def table(comparisons: Mapping[str, Mapping[str, PairedDifference]]) -> str:
    """One line per set and score: before -> after (delta, 95% CI), then the verdict."""
    lines = [f"{'dataset':<14}{'score':<11}{'n':>5}  before -> after   change  (95% CI)"]
    for name, by_score in comparisons.items():
        for score, d in by_score.items():
            mark = "  *" if d.significant else ""
            lines.append(f"{name:<14}{score:<11}{d.count:>5}  {d.before:6.1%} -> {d.after:6.1%}"
                         f"  {d.delta:+6.1%}  ({d.ci_low:+.1%} to {d.ci_high:+.1%}){mark}")
    lines.append(verdict(comparisons))
    return "\n".join(lines)


def verdict(comparisons: Mapping[str, Mapping[str, PairedDifference]]) -> str:
    """The one line that says whether anything changed beyond the noise."""
    up = [n for n, s in comparisons.items() if any(d.ci_low > 0 for d in s.values())]
    down = [n for n, s in comparisons.items() if any(d.ci_high < 0 for d in s.values())]
    said = ([f"better on {', '.join(up)}"] if up else []) + \
        ([f"worse on {', '.join(down)}"] if down else [])
    if not said:
        return "no significant change: every 95% CI holds 0 (* marks a CI that excludes 0)"
    return f"significant (95% CI excludes 0, marked *): {'; '.join(said)}"

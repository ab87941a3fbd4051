"""A failing reward function is reported, not silently scored 0 for the whole run."""

import pytest

from grpo_core.errors import UserError
from grpo_core.rewards.failures import FailureWatch
from grpo_core.rewards.functions import per_completion, score


def _always_raises(completions, **_):
    raise KeyError("answer_field")


@per_completion
def _raises_on_short(completion, **_):
    if len(completion) < 3:
        raise ValueError(f"too short: {completion!r}\nsecond line")
    return 1.0


def test_score_reports_each_failing_functions_first_error(monkeypatch):
    import grpo_core.rewards.functions as functions

    monkeypatch.setitem(functions.REWARDS, "boom", _always_raises)
    monkeypatch.setitem(functions.REWARDS, "short", _raises_on_short)
    errors = {}
    total, per, metrics = score(["ab", "abcdef", "x"], answers=["1"] * 3, sources=["s"] * 3,
                                token_counts=[1, 2, 1], max_new_tokens=8,
                                weights={"boom": 1.0, "short": 1.0}, errors=errors)
    assert errors == {"boom": "KeyError: 'answer_field'", "short": "ValueError: too short: 'ab'"}
    assert metrics["reward/boom/failures"] == 3 and metrics["reward/short/failures"] == 2
    assert total.tolist() == [0.0, 1.0, 0.0]


def test_the_watch_warns_once_on_the_first_failure_and_once_past_the_warn_rate():
    watch = FailureWatch(warn_rate=0.25, stop_rate=None, min_samples=8)
    said = watch.observe({"f": (4, 1), "g": (4, 0)}, {"f": "ValueError: x"})
    assert said == [("f", "reward function f failed on 1 of 4 completions (scored 0); first "
                          "failure: ValueError: x")]
    assert watch.observe({"f": (4, 0), "g": (4, 0)}, {}) == []  # 1 of 8: under 25%
    said = watch.observe({"f": (4, 3), "g": (4, 0)}, {"f": "ValueError: y"})
    assert said == [("f", "reward function f has failed on 33% of 12 completions so far "
                          "(reward.failure_warn_rate=0.25)")]
    assert watch.observe({"f": (4, 4), "g": (4, 0)}, {}) == []  # each kind said once


def test_the_watch_stops_the_run_past_the_stop_rate_once_enough_is_scored():
    watch = FailureWatch(warn_rate=0.1, stop_rate=0.5, min_samples=64)
    watch.observe({"f": (32, 32)}, {"f": "KeyError: 'a'"})  # 32 completions: not enough yet
    with pytest.raises(UserError) as e:
        watch.observe({"f": (32, 32)}, {"f": "KeyError: 'a'"})
    assert str(e.value) == ("reward function f failed on 100% of 64 completions "
                            "(reward.failure_stop_rate=0.5): KeyError: 'a'")

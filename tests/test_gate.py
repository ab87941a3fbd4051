"""The promotion rule on hand-made comparisons."""

from __future__ import annotations

from grpo_core.evaluation.compare import PairedDifference
from grpo_core.evaluation.gate import decide


def diff(delta, low, high):
    return PairedDifference(100, 0.1, 0.1 + delta, delta, low, high)


GAIN, FLAT, LOSS = diff(0.2, 0.1, 0.3), diff(0.01, -0.02, 0.04), diff(-0.05, -0.08, -0.02)


def test_a_gain_outside_the_interval_passes():
    d = decide({"arithmetic": GAIN, "gsm8k": FLAT}, gain_on=["arithmetic"], no_regression=True)
    assert d.passed and d.summary().startswith("promoted: gain on arithmetic 10.0% -> 30.0%")


def test_a_gain_whose_interval_holds_zero_fails():
    d = decide({"arithmetic": FLAT}, gain_on=["arithmetic"], no_regression=True)
    assert not d.passed and "no gain on arithmetic" in d.summary()


def test_a_regression_beyond_its_interval_fails_unless_allowed():
    sets = {"arithmetic": GAIN, "gsm8k": LOSS}
    d = decide(sets, gain_on=["arithmetic"], no_regression=True)
    assert not d.passed and "worse on gsm8k" in d.summary()
    assert decide(sets, gain_on=["arithmetic"], no_regression=False).passed


def test_a_set_that_was_not_evaluated_fails():
    d = decide({"gsm8k": GAIN}, gain_on=["arithmetc"], no_regression=True)
    assert not d.passed and "arithmetc was not evaluated (evaluated: gsm8k)" in d.summary()

"""The paired before/after comparison against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from grpo_core.evaluation.compare import paired_difference


def test_hand_computed_interval():
    # d = [0, 1, 0, 0, 1]: mean 0.4, sample sd sqrt(0.3), se sqrt(0.3 / 5);
    # t(0.975, df 4) = 2.776445 -> half-width 0.680087
    r = paired_difference([1, 0, 0, 1, 0], [1, 1, 0, 1, 1])
    assert (r.count, r.before, r.after, r.delta) == (5, 0.4, 0.8, 0.4)
    half = 2.776445105 * math.sqrt(0.3 / 5)
    assert r.ci_low == pytest.approx(0.4 - half, abs=1e-9)
    assert r.ci_high == pytest.approx(0.4 + half, abs=1e-9)
    assert not r.significant


def test_a_consistent_gain_is_significant_and_a_loss_is_negative():
    before, after = [0] * 40 + [1] * 10, [1] * 30 + [0] * 10 + [1] * 10
    up = paired_difference(before, after)
    assert up.delta == pytest.approx(0.6) and up.significant and up.ci_low > 0
    down = paired_difference(after, before)
    assert down.delta == pytest.approx(-0.6) and down.significant and down.ci_high < 0


def test_mean_of_k_scores_pair_the_same_way():
    r = paired_difference([0.25, 0.5, 0.0], [0.5, 0.5, 0.25])
    assert r.delta == pytest.approx(1 / 6)
    assert r.ci_low < r.delta < r.ci_high


def test_edge_cases():
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0) and not same.significant
    one = paired_difference([0], [1])
    assert one.delta == 1.0 and math.isnan(one.ci_low) and not one.significant
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([0, 1], [1])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [])


def test_records_pair_by_problem_id_whatever_their_order():
    from grpo_core.evaluation.compare import compare_records

    before = [{"id": "a", "correct": False, "sampled_correct": 0.25},
              {"id": "b", "correct": True, "sampled_correct": 0.5},
              {"id": "c", "correct": False, "sampled_correct": 0.0}]
    after = [{"id": "c", "correct": True, "sampled_correct": 0.25},
             {"id": "a", "correct": True, "sampled_correct": 0.5},
             {"id": "b", "correct": True, "sampled_correct": 0.5}]
    out = compare_records(before, after)
    assert out["accuracy"] == paired_difference([0, 1, 0], [1, 1, 1])
    assert out["mean_of_k"] == paired_difference([0.25, 0.5, 0.0], [0.5, 0.5, 0.25])
    greedy_only = compare_records([{"id": "a", "correct": False}], [{"id": "a", "correct": True}])
    assert set(greedy_only) == {"accuracy"}
    with pytest.raises(ValueError, match="share no problem"):
        compare_records([{"id": "a", "correct": True}], [{"id": "z", "correct": True}])

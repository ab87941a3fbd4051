"""Evaluation metrics: hand-computed cases and a brute-force pass@k reference."""

from itertools import combinations

import pytest
import torch

from grpo_core.evaluation.metrics import breakdown, majority_vote, pass_at_k, summarize


def brute_pass_at_k(row: list[bool], k: int) -> float:
    """The definition: the fraction of all k-subsets with at least one correct sample."""
    subsets = list(combinations(row, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(20, 6, generator=g) < 0.3
    for k in range(1, 7):
        want = torch.tensor([brute_pass_at_k(r.tolist(), k) for r in correct], dtype=torch.float64)
        assert torch.allclose(pass_at_k(correct, k), want)


def test_pass_at_k_hand_cases():
    correct = torch.tensor([[True, False, False, False], [False] * 4, [True] * 4])
    # one correct of four: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(correct, 1).tolist() == [0.25, 0.0, 1.0]
    assert pass_at_k(correct, 2).tolist() == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(correct, 5)


def test_majority_vote_ties_and_missing_answers():
    answers = [["3", "4", "4", None], ["7", "8", "7", "8"], [None, None, None, None], ["1", "2", "3", "2"]]
    correct = torch.tensor([[True, False, False, False], [False, True, False, True],
                            [False] * 4, [False, True, False, True]])
    # row 0: "4" wins 2-1 and is wrong; row 1: tie 7/8, "7" seen first and wrong;
    # row 2: nobody answered; row 3: "2" wins and is right
    assert majority_vote(answers, correct).tolist() == [False, False, False, True]


def test_summarize_and_breakdown():
    correct = torch.tensor([[True, True], [False, True], [False, False], [True, False]])
    answers = [["1", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    m = summarize(correct, answers, ks=(1, 2))
    assert m["accuracy"] == 0.5 and m["count"] == 4.0
    assert m["pass@2"] == 0.75 and m["maj@2"] == 0.5
    by = breakdown(correct, [1, 1, 2, 2])
    assert by == {"1": {"accuracy": 0.5, "count": 2.0}, "2": {"accuracy": 0.5, "count": 2.0}}

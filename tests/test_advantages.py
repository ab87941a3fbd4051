"""Advantages: hand-computed cases per mode, a loop reference, edge cases, the registry."""

from __future__ import annotations

import math
import statistics
import typing

import pytest
import torch

from grpo_core.algorithm.advantages import ADVANTAGES, group_advantages, zero_variance_groups
from grpo_core.config import AlgorithmConfig
from grpo_core.errors import UserError

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])  # (P=2, G=4)


def test_grpo_hand_computed():
    # group 0: mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.57735; group 1: all equal
    adv = group_advantages(REWARDS, "grpo", eps=0.0)
    z = 0.5 / math.sqrt(1 / 3)  # 0.866025
    torch.testing.assert_close(adv, torch.tensor([[z, -z, -z, z], [0.0, 0.0, 0.0, 0.0]]))


def test_dr_grpo_hand_computed():
    adv = group_advantages(REWARDS, "dr_grpo")
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))


def test_rloo_hand_computed():
    # r=1: others are {0, 0, 1} -> 1 - 1/3; r=0: others {1, 0, 1} -> 0 - 2/3
    adv = group_advantages(REWARDS, "rloo")
    torch.testing.assert_close(adv, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0] * 4]))


def test_batch_std_hand_computed():
    # whole-batch sample std of the 8 rewards: mean 1.25, sum of squares 5.5, /7 -> 0.886405
    adv = group_advantages(REWARDS, "batch_std", eps=0.0)
    s = 0.5 / math.sqrt(5.5 / 7)
    torch.testing.assert_close(adv, torch.tensor([[s, -s, -s, s], [0.0] * 4]))


def test_median_hand_computed_odd_and_even_groups():
    # odd G = 3: sorted [0, 1, 5] -> median 1 (the 5 does not move it, the mean 2 would)
    adv = group_advantages(torch.tensor([[5.0, 0.0, 1.0]]), "median")
    torch.testing.assert_close(adv, torch.tensor([[4.0, -1.0, 0.0]]))
    # even G = 4: sorted [0, 1, 3, 10] -> (1 + 3) / 2 = 2, not torch.median's lower value 1
    adv = group_advantages(torch.tensor([[10.0, 1.0, 0.0, 3.0]]), "median")
    torch.testing.assert_close(adv, torch.tensor([[8.0, -1.0, -2.0, 1.0]]))
    # G = 2: the midpoint, so the pair gets +-half the gap (as with the mean)
    adv = group_advantages(torch.tensor([[0.0, 1.0]]), "median")
    torch.testing.assert_close(adv, torch.tensor([[-0.5, 0.5]]))


def test_median_ties_and_binary_rewards():
    # ties at the middle: sorted [0, 1, 1, 1, 2] -> 1, every tied completion exactly 0
    adv = group_advantages(torch.tensor([[1.0, 2.0, 1.0, 0.0, 1.0]]), "median")
    assert adv.tolist() == [[0.0, 1.0, 0.0, -1.0, 0.0]]
    # 0/1 rewards: the majority reward is the median; an even split gives the midpoint
    adv = group_advantages(REWARDS, "median")
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "median")
    assert adv.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_median_std_hand_computed():
    # sorted [0, 1, 5]: median 1; sample std of {5, 0, 1}: mean 2, (9 + 4 + 1) / 2 = 7
    adv = group_advantages(torch.tensor([[5.0, 0.0, 1.0]]), "median_std", eps=0.0)
    s = math.sqrt(7.0)
    torch.testing.assert_close(adv, torch.tensor([[4 / s, -1 / s, 0.0]]))
    # [1, 0, 0, 0]: median 0 and MAD 0, but the std is sqrt(0.25) = 0.5: a finite advantage
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]]),
                           "median_std", eps=0.0)
    assert adv.tolist() == [[2.0, 0.0, 0.0, 0.0], [0.0] * 4]


@pytest.mark.parametrize("mode", ["median", "median_std"])
@pytest.mark.parametrize("g", [2, 3, 4, 7, 8, 64, 257])
def test_median_modes_equal_statistics_median_per_group(mode, g):
    gen = torch.Generator().manual_seed(g)
    continuous = torch.randn(5, g, generator=gen, dtype=torch.float64)
    tied = torch.randint(0, 3, (5, g), generator=gen).double() * 0.5  # many ties
    for rewards in (continuous, tied):
        got = group_advantages(rewards, mode, eps=1e-6)
        torch.testing.assert_close(got, _loop_reference(rewards.tolist(), mode, 1e-6).double(),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", sorted(ADVANTAGES))
def test_all_equal_groups_are_exactly_zero(mode):
    # 0.1 * 3 / 3 != 0.1 in floating point: the naive formula would leave ~1e-9 / eps noise
    rewards = torch.full((3, 5), 0.1)
    adv = group_advantages(rewards, mode)
    assert torch.equal(adv, torch.zeros_like(adv))
    assert not torch.isnan(adv).any()


@pytest.mark.parametrize("mode", sorted(ADVANTAGES))
def test_vectorised_equals_loop_reference(mode):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (6, 5), generator=g).double() * 0.5
    adv = group_advantages(rewards, mode, eps=1e-6)
    torch.testing.assert_close(adv, _loop_reference(rewards.tolist(), mode, 1e-6).double())


def _loop_reference(rows, mode, eps):
    return torch.tensor(loop_advantages(rows, mode, eps), dtype=torch.float64)


def loop_advantages(rows, mode, eps):
    """Each group's advantages from its own list of rewards (rows may differ in length)."""
    flat = [r for row in rows for r in row]
    batch_mean = sum(flat) / len(flat)
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in flat) / (len(flat) - 1))
    out = []
    for row in rows:
        g = len(row)
        mean = sum(row) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / (g - 1))
        if all(r == row[0] for r in row):
            out.append([0.0] * g)
        elif mode == "grpo":
            out.append([(r - mean) / (std + eps) for r in row])
        elif mode == "dr_grpo":
            out.append([r - mean for r in row])
        elif mode == "rloo":
            out.append([r - (sum(row) - r) / (g - 1) for r in row])
        elif mode == "median":
            out.append([r - statistics.median(row) for r in row])
        elif mode == "median_std":
            out.append([(r - statistics.median(row)) / (std + eps) for r in row])
        elif mode == "batch_std":
            out.append([(r - mean) / (batch_std + eps) for r in row])
        else:
            raise AssertionError(f"no loop reference for advantage mode {mode!r}")
    return out


def test_nan_rewards_rejected_with_location():
    rewards = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    with pytest.raises(UserError, match="prompt 1, completion 1"):
        group_advantages(rewards)
    with pytest.raises(UserError):
        zero_variance_groups(rewards)


def test_unknown_mode_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown advantage mode 'ppo'"):
        group_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([[1.0], [0.0]]))


def test_zero_variance_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert zero_variance_groups(rewards).tolist() == [True, False, True]


def test_integer_rewards_give_float_advantages():
    adv = group_advantages(torch.tensor([[1, 0]]), "dr_grpo")
    assert adv.dtype == torch.float32 and adv.tolist() == [[0.5, -0.5]]


def test_config_choices_equal_registry_keys():
    from grpo_core.algorithm.losses import AGGREGATIONS, RATIO_LEVELS
    from grpo_core.algorithm.optim import SCHEDULES
    from grpo_core.config import TrainConfig

    def choices(model, field):
        return set(typing.get_args(model.model_fields[field].annotation))

    assert choices(AlgorithmConfig, "advantage") == set(ADVANTAGES)
    assert choices(AlgorithmConfig, "loss_aggregation") == set(AGGREGATIONS)
    assert choices(AlgorithmConfig, "ratio_level") == set(RATIO_LEVELS)
    assert choices(TrainConfig, "lr_schedule") == set(SCHEDULES)

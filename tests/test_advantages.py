"""Advantages: hand-computed cases per mode, a loop reference, edge cases, the registry."""

from __future__ import annotations

import math
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
        else:
            out.append([(r - mean) / (batch_std + eps) for r in row])
    return torch.tensor(out)


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

"""Adaptive group size: ragged groups as `(P, G_max)` plus a validity mask give exactly what
each group would give on its own (advantages, the objective and its gradient, micro-batches),
and the growth rule doubles the groups without signal within the budget."""

from __future__ import annotations

import copy

import pytest
import torch

from grpo_core.algorithm.adaptive import (append_completions, extend, group_sizes, growth,
                                          pad_groups, valid_mask)
from grpo_core.algorithm.advantages import ADVANTAGES, group_advantages, zero_variance_groups
from grpo_core.algorithm.batch import build_batch
from grpo_core.algorithm.experience import informative_groups, record_columns, update_batch
from grpo_core.algorithm.learner import Learner
from grpo_core.algorithm.losses import AGGREGATIONS, aggregate, policy_loss
from grpo_core.rollout import Completion, Group, RolloutResult
from tests.test_advantages import loop_advantages
from tests.test_trainer import hyper

RAGGED = [[1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.5],  # G_max = 8
          [0.0, 1.0],
          [1.0, 1.0, 1.0, 1.0],  # all equal: exactly 0
          [0.5, 0.0, 1.0, 1.0, 0.0],
          [0.0, 0.5, 0.5]]


def padded(rows, width=8, fill=0.0):
    sizes = torch.tensor([len(r) for r in rows])
    values = pad_groups([v for r in rows for v in r], sizes, width)
    valid = valid_mask(sizes, width)
    return torch.where(valid, values, fill).double(), valid


@pytest.mark.parametrize("mode", sorted(ADVANTAGES))
def test_ragged_advantages_equal_the_loop_reference_of_each_group(mode):
    rewards, valid = padded(RAGGED)
    adv = group_advantages(rewards, mode, eps=1e-6, valid=valid)
    expected = loop_advantages(RAGGED, mode, 1e-6)  # a list of lists: each row its own size
    for p, row in enumerate(expected):
        torch.testing.assert_close(adv[p, :len(row)], torch.tensor(row, dtype=torch.float64))
    assert (adv[~valid] == 0).all()


@pytest.mark.parametrize("mode", sorted(ADVANTAGES))
def test_padding_cells_cannot_change_any_advantage(mode):
    clean, valid = padded(RAGGED)
    noisy, _ = padded(RAGGED, fill=99.0)
    torch.testing.assert_close(group_advantages(noisy, mode, valid=valid),
                               group_advantages(clean, mode, valid=valid), rtol=0, atol=0)
    assert zero_variance_groups(noisy, valid).tolist() == [False, False, True, False, False]
    assert informative_groups(noisy, 2, valid).tolist() == [True, True, False, False, False]


def test_a_full_mask_is_the_fixed_group_case_and_bad_masks_are_refused():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 1.0]])
    full = torch.ones(2, 3, dtype=torch.bool)
    for mode in ADVANTAGES:
        torch.testing.assert_close(group_advantages(rewards, mode, valid=full),
                                   group_advantages(rewards, mode))
    with pytest.raises(ValueError, match="at least 2 completions"):
        group_advantages(rewards, valid=torch.tensor([[True, True, True], [True, False, False]]))
    with pytest.raises(ValueError, match="first cell"):
        group_advantages(rewards, valid=torch.tensor([[True, True, True], [False, True, True]]))
    with pytest.raises(ValueError, match="must match"):
        group_advantages(rewards, valid=full[:, :2])


def _ragged_objective(logp, old, adv_rows, masks, mode, budget):
    """The clipped surrogate (clip 0.2 / 0.28, token ratios, no KL) written out per group and
    completion, from each group's own advantages: token_mean over every token of the batch;
    seq_mean_token_mean over every completion that has a token; Dr. GRPO over every sampled
    completion times the budget. Row r of logp/old/masks is the r-th completion overall."""
    flat_adv = [a for row in adv_rows for a in row]
    kept = [[t for t in range(len(m)) if m[t] > 0] for m in masks]
    tokens, rows = sum(len(k) for k in kept), len(masks)
    nonempty = sum(1 for k in kept if k)
    out = torch.zeros((), dtype=logp.dtype)
    for r, toks in enumerate(kept):
        for t in toks:
            rho = torch.exp(logp[r, t] - old[r, t])
            term = -torch.minimum(rho * flat_adv[r], rho.clamp(0.8, 1.28) * flat_adv[r])
            norm = {"token_mean": tokens, "seq_mean_token_mean": nonempty * len(toks),
                    "seq_mean_token_sum_norm": rows * budget}[mode]
            out = out + term / norm
    return out


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "median"])
def test_ragged_objective_and_gradient_equal_the_per_group_loop(mode, advantage):
    g = torch.Generator().manual_seed(5)
    rewards, valid = padded(RAGGED)
    adv = group_advantages(rewards, advantage, valid=valid)[valid]  # (B,) group-major
    b, t = int(valid.sum()), 6
    old = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3 - 2
    logp0 = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    lengths = torch.randint(0, t + 1, (b,), generator=g)  # some empty rows
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()

    logp = logp0.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    value = aggregate(loss, mask, mode, max_len=8)
    value.backward()
    ref = logp0.clone().requires_grad_(True)
    per_group = loop_advantages(RAGGED, advantage, 1e-6)
    expected = _ragged_objective(ref, old, per_group, mask.tolist(), mode, 8)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(logp.grad, ref.grad)


def _ragged_batch(sizes=(2, 5, 3), seed=0):
    """Groups of different sizes sharing their prompt, as the engine returns them."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for n in sizes:
        prompt = [1] + torch.randint(3, 256, (int(torch.randint(2, 6, (1,), generator=g)),),
                                     generator=g).tolist()
        for _ in range(n):
            prompts.append(prompt)
            length = int(torch.randint(1, 7, (1,), generator=g))
            completions.append(torch.randint(3, 256, (length,), generator=g).tolist())
    rows = [[float(torch.randint(0, 3, (1,), generator=g)) / 2 for _ in range(n)] for n in sizes]
    rows[0] = [0.0, 1.0]  # at least one informative group
    rewards, valid = padded(rows, width=max(sizes))
    adv = group_advantages(rewards, valid=valid)[valid]
    return build_batch(prompts, completions, adv.float(), pad_id=0)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("shared", [True, False])
def test_ragged_micro_batches_equal_the_full_batch(tiny_llama, mode, shared):
    batch = _ragged_batch()
    kw = dict(loss_aggregation=mode, beta=0.05, max_completion_len=8, shared_prompt_forward=shared)
    grads = []
    for size in (16, 3):
        learner = Learner(copy.deepcopy(tiny_llama), hyper(micro_batch_size=size, **kw))
        learner.update(batch)
        grads.append([p.grad.clone() for p in learner.model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_growth_doubles_the_groups_without_signal_up_to_g_max():
    rewards, valid = padded([[0, 0], [1, 0], [1, 1, 1, 1], [0] * 6, [0] * 8])
    assert growth(rewards, valid, most=8, budget=None).tolist() == [2, 0, 4, 2, 0]


def test_growth_serves_groups_in_draw_order_within_the_budget():
    rewards, valid = padded([[0, 0], [1, 1], [0, 1], [0, 0, 0, 0]])  # 10 held, wants 2+2+0+4
    assert growth(rewards, valid, most=8, budget=None).tolist() == [2, 2, 0, 4]
    assert growth(rewards, valid, most=8, budget=17).tolist() == [2, 2, 0, 3]  # the last: 3 of 4
    assert growth(rewards, valid, most=8, budget=13).tolist() == [2, 1, 0, 0]
    assert growth(rewards, valid, most=8, budget=10).tolist() == [0, 0, 0, 0]
    assert growth(rewards, valid, most=8, budget=4).tolist() == [0, 0, 0, 0]  # already over


def test_extend_places_new_values_after_each_row():
    values, valid = padded([[1, 2], [3, 4, 5], [6, 7]], width=5)
    values, valid = extend(values, valid, torch.tensor([0, 2]), torch.tensor([[8.0, 9.0], [10, 11]]))
    assert values.tolist() == [[1, 2, 8, 9, 0], [3, 4, 5, 0, 0], [6, 7, 10, 11, 0]]
    assert valid.sum(dim=1).tolist() == [4, 3, 4]
    with pytest.raises(ValueError, match="no room"):
        extend(values, valid, torch.tensor([0]), torch.tensor([[1.0, 2.0]]))


def _group(index, texts):
    return Group(index, (1, 2), tuple(Completion((3,), t, (-0.5,), "stop") for t in texts))


def test_append_completions_grows_the_named_groups_and_records_follow():
    result = RolloutResult((_group(0, "ab"), _group(1, "c"), _group(2, "de")), 3, seconds=1.0)
    extra = RolloutResult((_group(0, "xy"), _group(1, "z")), 2, seconds=0.5)
    grown = append_completions(result, extra, [2, 0])
    assert ["".join(c.text for c in g.completions) for g in grown.groups] == ["abz", "c", "dexy"]
    assert group_sizes(grown).tolist() == [3, 1, 4] and grown.seconds == 1.5
    rewards = pad_groups([1, 2, 3, 4, 5, 6, 7, 8], group_sizes(grown), 4)
    cols = record_columns(grown, rewards, {}, rewards * 10)
    assert cols["reward"] == [1, 2, 3, 4, 5, 6, 7, 8]  # group-major, padding skipped
    with pytest.raises(RuntimeError, match="returned 1"):
        append_completions(result, RolloutResult((_group(0, "q"),), 2), [0, 1])


def test_update_batch_of_ragged_groups_is_group_major():
    result = RolloutResult((_group(0, "ab"), _group(1, "cde")), 2)
    rewards, valid = padded([[1, 0], [0, 1, 1]], width=4)
    adv = group_advantages(rewards, "dr_grpo", valid=valid)
    batch = update_batch(result, adv, pad_id=0)
    torch.testing.assert_close(batch.advantages, adv[valid].float())
    assert batch.size == 5

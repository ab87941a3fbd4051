"""The iteration plumbing between the engine and the update step, on real rollout records."""

import pandas as pd
import pytest
import torch

from grpo_core.algorithm.experience import (advantages_for, concat_results, cross_prompt_answer_frac,
                                            draw_prompts, draw_prompts_at, informative_groups,
                                            merged_reward_metrics, record_columns, refill_count,
                                            rollout_metrics, score_groups, update_batch)
from grpo_core.rewards.functions import score
from grpo_core.rollout import Completion, Group, RolloutResult


def _result() -> RolloutResult:
    """Two prompts x 3 samples; prompt 1's completions are all wrong (a zero-variance group)."""
    def c(text, ids, reason="stop"):
        return Completion(tuple(ids), text, tuple(-0.5 for _ in ids), reason)

    return RolloutResult(groups=(
        Group(0, (5, 6), (c("so #### 12", [1, 2, 3]), c("#### 13", [4]),
                          c("12", [7, 8], "length"))),
        Group(1, (9,), (c("#### 1", [1]), c("#### 2", [2, 2]), c("#### 3", [3, 3, 3]))),
    ), num_prompts=2, seconds=2.0)


ROWS = pd.DataFrame({"id": ["a", "b"], "answer": ["12", "7"], "source": ["gsm8k", "gsm8k"],
                     "question": ["q1", "q2"],
                     "solution": ["3 * 2 = <<3*2=6>>6\n6 * 2 = <<6*2=12>>12\n#### 12", "#### 7"]})


def test_draw_prompts_is_a_function_of_seed_and_iteration():
    mixture = pd.DataFrame({"id": [str(i) for i in range(10)]})
    first = [draw_prompts(mixture, it, 4, seed=3)["id"].tolist() for it in (1, 2, 3)]
    assert first == [draw_prompts(mixture, it, 4, seed=3)["id"].tolist() for it in (1, 2, 3)]
    # the first pass over the data (iterations 1-2 and half of 3) has no repeats
    seen = first[0] + first[1] + first[2][:2]
    assert len(set(seen)) == 10
    assert draw_prompts(mixture, 1, 4, seed=4)["id"].tolist() != first[0]


def test_scores_are_grouped_and_advantages_follow():
    rewards, per_fn, metrics = score_groups(_result(), ROWS, weights={"gsm8k_accuracy": 1.0},
                                            time_limit_s=5.0, max_new_tokens=3)
    assert rewards.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert per_fn["gsm8k_accuracy"].shape == (2, 3)
    assert metrics["reward/total/max"] == 1.0 and metrics["reward/total/min"] == 0.0
    adv, m = advantages_for(rewards, "grpo", 1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0]  # the all-equal group learns nothing
    assert m["advantage/zero_groups_frac"] == 0.5
    assert adv[0, 0] > 0 > adv[0, 1]


@pytest.mark.parametrize("mode", ["median", "median_std"])
def test_median_advantages_follow_the_scores(mode):
    rewards, _, _ = score_groups(_result(), ROWS, weights={"gsm8k_accuracy": 1.0},
                                 time_limit_s=5.0, max_new_tokens=3)
    adv, m = advantages_for(rewards, mode, 1e-6)  # group 0: [1, 0, 1], median 1
    assert adv[0, 0] == adv[0, 2] == 0.0 and adv[0, 1] < 0  # the majority reward is the baseline
    assert adv[1].tolist() == [0.0, 0.0, 0.0] and m["advantage/zero_groups_frac"] == 0.5


def prompt_lengths(completions, *, prompts, **_):
    """A batch reward function (like reward_model) that reads the prompt of every completion."""
    return [float(len(p)) for p in prompts]


def test_every_completion_gets_its_own_prompt_question_and_solution():
    # Before, `prompts` reached reward functions one per prompt: reward_model's strict zip with
    # the P * G completions failed and every completion silently scored 0.
    _, per_fn, m = score_groups(_result(), ROWS, weights={
        "tests.test_experience:prompt_lengths": 1.0, "gsm8k_steps": 1.0},
        time_limit_s=5.0, max_new_tokens=3, prompts=["four", "sixteen-chars..."])
    assert per_fn["tests.test_experience:prompt_lengths"].tolist() == [[4.0] * 3, [16.0] * 3]
    assert m["reward/tests.test_experience:prompt_lengths/failures"] == 0
    # prompt 0's reference computes 6 on the way to 12; no completion shows work (all 0), and
    # prompt 1 is one step (0 by definition)
    assert per_fn["gsm8k_steps"].tolist() == [[0.0] * 3, [0.0] * 3]
    worked = RolloutResult(groups=(Group(0, (5,), (
        Completion((1,), "3 * 2 = 6, and 6 * 2 = 12\n#### 12", (-0.5,), "stop"),)),),
        num_prompts=1, seconds=1.0)
    _, per_fn, _ = score_groups(worked, ROWS, weights={"gsm8k_steps": 1.0}, time_limit_s=5.0,
                                max_new_tokens=3)
    assert per_fn["gsm8k_steps"].tolist() == [[pytest.approx(2 / (1 + 3))]]  # {6} vs {3, 2, 6}


def test_update_batch_keeps_group_order_and_filters_groups():
    result = _result()
    adv = torch.tensor([[1.0, -2.0, 1.0], [0.0, 0.0, 0.0]])
    batch = update_batch(result, adv, pad_id=0)
    assert batch.advantages.tolist() == [1.0, -2.0, 1.0, 0.0, 0.0, 0.0]
    assert batch.truncated.tolist() == [False, False, True, False, False, False]
    assert batch.completion_mask.sum(dim=1).tolist() == [3, 1, 2, 1, 2, 3]
    kept = update_batch(result, adv, pad_id=0, keep=torch.tensor([True, False]))
    assert kept.advantages.tolist() == [1.0, -2.0, 1.0]
    assert update_batch(result, adv, pad_id=0, keep=torch.tensor([False, False])) is None
    with_lp = update_batch(result, adv, pad_id=0, use_sampler_logprobs=True)
    assert with_lp.sampler_logp is not None


def test_rollout_metrics_and_record_columns():
    m = rollout_metrics(_result())
    assert m["completion/length_max"] == 3.0
    assert m["completion/length_mean"] == pytest.approx(12 / 6)
    assert m["completion/truncated_frac"] == pytest.approx(1 / 6)
    assert m["rollout/tokens_per_s"] == 6.0
    assert m["completion/cross_prompt_answer_frac"] == 0.0  # 12, 13, 12 vs 1, 2, 3


def test_cross_prompt_answer_frac_flags_one_answer_for_every_question():
    def group(p, *texts):
        return Group(p, (p,), tuple(Completion((1,), t, (-0.5,), "stop") for t in texts))

    healthy = [group(0, "#### 12", "#### 12", "#### 13"), group(1, "#### 7", "#### 8", "no")]
    assert cross_prompt_answer_frac(healthy) == 0.0
    collapsed = [group(0, "#### 10", "so 10.0", "#### 12"), group(1, "#### $10", "#### 10", "x")]
    assert cross_prompt_answer_frac(collapsed) == pytest.approx(4 / 6)
    assert cross_prompt_answer_frac([]) == 0.0
    cols = record_columns(_result(), torch.ones(2, 3), {"f": torch.zeros(2, 3)}, torch.eye(2, 3))
    assert cols["advantage"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert set(cols) == {"reward", "advantage", "reward_f"}


# ------------------------------------------------------------------ dynamic sampling (DAPO)
def test_the_prompt_stream_continues_where_a_refill_left_it():
    mixture = pd.DataFrame({"id": [str(i) for i in range(10)]})
    stream = draw_prompts_at(mixture, 0, 25, seed=3)["id"].tolist()  # 2.5 passes
    assert [draw_prompts(mixture, it, 4, seed=3)["id"].tolist() for it in (1, 2, 3)] == [
        stream[0:4], stream[4:8], stream[8:12]]
    assert draw_prompts_at(mixture, 13, 7, seed=3)["id"].tolist() == stream[13:20]


def test_joined_rounds_index_the_joined_prompt_lists():
    a, b = _result(), RolloutResult(groups=(Group(1, (4,), ()),), num_prompts=3,
                                    skipped=(0, 2), truncated=(1,), seconds=1.0)
    joined = concat_results([a, b])
    assert [g.prompt_index for g in joined.groups] == [0, 1, 3]
    assert (joined.num_prompts, joined.skipped, joined.truncated, joined.seconds) == (
        5, (2, 4), (3,), 3.0)
    assert joined.groups[2].prompt_ids == (4,)


def test_informative_groups_keeps_the_first_p_with_reward_variance():
    rewards = torch.tensor([[0., 0.], [1., 0.], [1., 1.], [0., 1.], [.5, 0.]])
    assert informative_groups(rewards).tolist() == [False, True, False, True, True]
    assert informative_groups(rewards, 2).tolist() == [False, True, False, True, False]
    assert informative_groups(rewards, 9).tolist() == [False, True, False, True, True]


@pytest.mark.parametrize("want,informative,drawn,most,expected", [
    (4, 4, 4, 16, 0),   # full: no round
    (4, 6, 8, 16, 0),   # more than enough
    (4, 1, 4, 16, 12),  # 3 missing at 1 in 4: 12 prompts expected to fill them
    (4, 2, 4, 16, 4),   # 2 missing at 1 in 2
    (4, 3, 5, 16, 2),   # ceil(1 / 0.6)
    (4, 1, 40, 16, 16),  # capped
    (4, 0, 4, 16, 16),  # no signal yet: the most
])
def test_refill_count(want, informative, drawn, most, expected):
    assert refill_count(want, informative, drawn, most) == expected


def test_reward_metrics_of_rounds_equal_scoring_everything_at_once():
    texts = ["#### 12", "12 apples", "#### 7", "no", "#### 7", "#### 12"]
    answers = ["12", "12", "7", "7", "8", "12"]
    kwargs = dict(sources=["gsm8k"] * 6, token_counts=[3] * 6, max_new_tokens=8,
                  weights={"gsm8k_accuracy": 1.0, "format": 0.5}, time_limit_s=5.0)
    rounds = [score(texts[:2], answers=answers[:2], **{**kwargs, "sources": ["gsm8k"] * 2,
                                                        "token_counts": [3] * 2}),
              score(texts[2:], answers=answers[2:], **{**kwargs, "sources": ["gsm8k"] * 4,
                                                        "token_counts": [3] * 4})]
    total, per_fn, expected = score(texts, answers=answers, **kwargs)
    rewards = torch.cat([torch.as_tensor(t, dtype=torch.float32) for t, _, _ in rounds]).reshape(3, 2)
    per = {k: torch.cat([torch.as_tensor(p[k], dtype=torch.float32) for _, p, _ in rounds])
           .reshape(3, 2) for k in per_fn}
    got = merged_reward_metrics([m for _, _, m in rounds], rewards, per)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["reward/total/max"] == pytest.approx(float(total.max()))

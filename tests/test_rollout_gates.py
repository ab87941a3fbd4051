"""The gates on every iteration's rollouts (issue 22, item 5): real Great Expectations suites
over records built as the records module builds them, the declared reward ranges, the
advantage modes whose groups sum to 0, the reward-hacking comparison, and one real
`grpo train` (HF engine, tiny model) stopped by a hard failure after a soft warning."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.run.gates import limits, warn
from grpo_core.algorithm.advantages import ADVANTAGES, ZERO_SUM, group_advantages
from grpo_core.algorithm.experience import record_columns
from grpo_core.config import load_config
from grpo_core.errors import UserError
from grpo_core.rewards.functions import REWARDS, check_functions, score
from grpo_core.rewards.ranges import scored_range, total_range
from grpo_core.rollout import Completion, Group, RolloutResult
from grpo_core.rollout.gates import check, reward_hacking
from grpo_core.rollout.records import to_frame
from tests.pipeline_support import run_grpo, tiny_params

TEXTS = [["3 + 4 = 7\n#### 7", "#### 8"], ["#### 12", "12 - 2 = 10\n#### 10"]]


def _completion(text: str, tokens: int = 5, finish: str = "stop") -> Completion:
    return Completion(tuple(range(tokens)), text, (-0.5,) * tokens, finish)


def records(texts=TEXTS, rewards=((1.0, 0.0), (0.0, 1.0)), finish="stop", extra=None):
    """Two prompts x two completions as `records.to_frame` writes them, the scores filled in
    as the reward task fills them (`record_columns`, `grpo` advantages)."""
    groups = tuple(Group(p, (1, 2, 3), tuple(_completion(t, finish=finish) for t in row))
                   for p, row in enumerate(texts))
    result = RolloutResult(groups, len(groups))
    frame = to_frame(1, [f"arith/{p}" for p in range(len(groups))], ["p"] * len(groups), result)
    scores = torch.tensor(rewards)  # (P, G)
    per_fn = {"accuracy": scores, **(extra or {})}
    for name, values in record_columns(result, scores, per_fn, group_advantages(scores)).items():
        frame[name] = values
    return frame


def test_a_clean_rollout_passes_and_reports_its_shares():
    verdict = check(records(), limits(load_config(None)))
    assert verdict.hard == () and verdict.soft == {}
    assert verdict.metrics == {"gate/truncated_frac": 0.0, "gate/empty_frac": 0.0,
                               "gate/cross_prompt_answer_frac": 0.0,
                               "gate/advantage_sum_error": pytest.approx(0.0, abs=1e-6)}


def _set(column, row, value):
    def change(frame):
        frame.loc[row, column] = value
    return change


HARD = [  # (what breaks the records, the phrase of the one failed check)
    (_set("reward", 1, math.nan), "reward NaN in 1 of 4 completions (e.g. arith/0#1 = nan)"),
    (lambda f: f.__setitem__("reward_accuracy", [1.0, 0.0, 2.0, 1.0]),
     "reward_accuracy outside [0, 1] (what the reward functions can score) in 1 of 4 "
     "completions (e.g. arith/1#0 = 2)"),
    (_set("advantage", 0, 0.9), "advantages not summing to 0 (|sum| / max(1, sum |A|) over "
                                "0.001) in 1 of 2 groups (e.g. arith/0 = 0.12"),
    (_set("completion_tokens", 3, 129),
     "completion_tokens over rollout.max_new_tokens=128 in 1 of 4 completions (e.g. arith/1#1 "
     "= 129)"),
    (lambda f: f.__setitem__("prompt_tokens", [3, 3, 600, 600]),
     "prompt_tokens over rollout.max_prompt_tokens=512 in 2 of 4 completions (e.g. arith/1#0 "
     "= 600, arith/1#1 = 600)"),
    (_set("advantage", 2, math.inf), "advantage infinite in 1 of 4 completions"),
]


@pytest.mark.parametrize("breaks,says", HARD, ids=["nan", "range", "adv_sum", "completion_tokens",
                                                    "prompt_tokens", "inf_advantage"])
def test_each_hard_expectation_fails_alone_and_says_where(breaks, says):
    frame = records()
    breaks(frame)
    verdict = check(frame, limits(load_config(None)))
    assert len(verdict.hard) == 1 and verdict.hard[0].startswith(says), verdict.hard


def test_a_function_without_a_range_is_checked_for_finiteness_only():
    cfg = load_config(None, ['reward.functions={"accuracy": 1.0, "reward_model": 0.5}'])
    big = {"reward_model": torch.tensor([[40.0, -3.0], [1e6, 0.0]])}
    frame = records(extra=big)
    assert check(frame, limits(cfg)).hard == ()  # any finite logit (the total's range: none)
    frame.loc[1, "reward_reward_model"] = math.inf
    assert check(frame, limits(cfg)).hard == (
        "reward_reward_model infinite in 1 of 4 completions (e.g. arith/0#1 = inf)",)


@pytest.mark.parametrize("frame,setting,share,value", [
    (records(finish="length"), "gates.max_truncated_frac=0.5", "truncated_frac", 1.0),
    (records([["", "#### 8"], ["  \n", "#### 10"]]), None, "empty_frac", 0.5),
    (records([["#### 7", "#### 7"], ["#### 7", "so #### 7"]], rewards=((0., 0.), (1., 1.))),
     None, "cross_prompt_answer_frac", 1.0),
])
def test_each_soft_share_over_its_limit_is_a_soft_failure_only(frame, setting, share, value):
    cfg = load_config(None, [setting] if setting else [])
    verdict = check(frame, limits(cfg))
    assert verdict.hard == ()
    assert verdict.soft == {share: (value, getattr(cfg.gates, f"max_{share}"))}
    assert verdict.metrics[f"gate/{share}"] == value
    at_limit = load_config(None, [f"gates.max_{share}={value}"])
    assert check(frame, limits(at_limit)).soft == {}  # the limit itself is allowed


def test_the_advantage_sum_is_checked_only_for_the_modes_that_centre_their_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.9, 0.3], [0.5, 0.5, 0.5]])  # (P, G)
    for mode in ADVANTAGES:
        sums = group_advantages(rewards, mode=mode).sum(dim=1)  # (P,)
        assert bool(torch.allclose(sums, torch.zeros(3), atol=1e-5)) == (mode in ZERO_SUM), mode
    median = load_config(None, ["algorithm.advantage=median"])
    assert limits(median).advantage_sum_tol is None
    frame = records([["a", "b", "c"]] * 3, rewards=rewards.tolist())
    frame["advantage"] = group_advantages(rewards, mode="median").reshape(-1).tolist()
    assert check(frame, limits(median)).hard == ()
    assert len(check(frame, limits(load_config(None))).hard) == 1  # off 0 for grpo


def test_built_in_rewards_declare_their_ranges_and_stay_inside_them():
    assert {name: getattr(fn, "reward_range", None) for name, fn in REWARDS.items()} == {
        "gsm8k_accuracy": (0.0, 1.0), "math_accuracy": (0.0, 1.0), "accuracy": (0.0, 1.0),
        "gsm8k_steps": (0.0, 1.0), "format": (0.0, 1.0), "soft_overlong": (-1.0, 0.0),
        "reward_model": None}
    texts = ["#### 7", "3 + 4 = 7\n#### 7", "\\boxed{7}", "", "#### 7\n#### 8", "seven"] * 2
    counts = [1, 50, 62, 63, 64, 200] * 2
    weights = {n: 1.0 for n in REWARDS if n != "reward_model"}
    _, per_fn, _ = score(texts, answers=["7"] * 12, sources=["gsm8k"] * 12, token_counts=counts,
                         max_new_tokens=64, weights=weights, checkers=["numeric"] * 12,
                         solutions=["3 + 4 = <<3+4=7>>7\n#### 7"] * 12, questions=["3+4?"] * 12)
    for name, values in per_fn.items():
        low, high = REWARDS[name].reward_range
        assert low <= values.min() and values.max() <= high, name


def test_the_total_range_follows_the_weights_and_a_failure_scores_0():
    ranges = {n: scored_range(n, REWARDS[n]) for n in ("accuracy", "soft_overlong", "format")}
    assert total_range(ranges, {"accuracy": 1.0, "soft_overlong": 0.5, "format": -0.2}) == (
        pytest.approx(-0.7), 1.0)
    assert total_range({**ranges, "reward_model": None}, {"accuracy": 1.0, "reward_model": 1.0}
                       ) is None
    assert total_range({"reward_model": None, "accuracy": (0.0, 1.0)},
                       {"accuracy": 2.0, "reward_model": 0.0}) == (0.0, 2.0)  # weight 0: no term

    def user(completions, **_):
        return [1.5] * len(completions)
    assert scored_range("mine", user) is None
    user.reward_range = (1, 2)
    assert scored_range("mine", user) == (0.0, 2.0)  # 0: what a failed call scores
    user.reward_range = (2, 1)
    with pytest.raises(UserError, match=r"reward function mine: reward_range must have low <= "
                                        r"high, got \(2, 1\)"):
        scored_range("mine", user)


def test_a_malformed_declared_range_fails_at_start_up(tmp_path, monkeypatch):
    (tmp_path / "ranged.py").write_text("def f(c, **_):\n    return [0.0] * len(c)\n"
                                        "f.reward_range = 'low to high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"reward function ranged:f: reward_range must be "
                                        r"\(low, high\), got 'low to high'"):
        check_functions(["accuracy", "ranged:f"])


def test_reward_rising_while_the_quick_evaluation_falls_is_reported_with_the_numbers():
    train = {1: 0.1, 2: 0.2, 3: 0.5, 4: 0.6, 5: 0.9, 6: 0.9}
    assert reward_hacking(train, {2: 0.5}) is None  # one evaluation: nothing to compare
    assert reward_hacking(train, {2: 0.5, 4: 0.75}) is None  # both rose
    assert reward_hacking(train, {2: 0.5, 4: 0.25}) == (
        "training reward rose 0.15 -> 0.55 (mean over iterations 1-2 -> 3-4) while the quick "
        "evaluation fell 0.5 -> 0.25 (iteration 2 -> 4): reward hacking? look at the rollouts' "
        "completions")
    said = reward_hacking(train, {2: 0.5, 4: 0.75, 6: 0.25})  # the last two windows only
    assert said.startswith("training reward rose 0.55 -> 0.9 (mean over iterations 3-4 -> 5-6)")
    assert reward_hacking({**train, 5: 0.1, 6: 0.1}, {2: 0.5, 4: 0.75, 6: 0.25}) is None


def test_a_soft_warning_is_said_once_a_run(capsys):
    run = SimpleNamespace(gate_said=set(), tracker=None)
    warn(run, 1, {"truncated_frac": (1.0, 0.5)})
    warn(run, 2, {"truncated_frac": (0.75, 0.5)})
    err = capsys.readouterr().err
    assert err == ("warning: rollout gate: 100% of iteration 1's completions were cut off at "
                   "rollout.max_new_tokens (gates.max_truncated_frac=0.5); said once, logged "
                   "as gate/truncated_frac every iteration\n")


def test_the_reward_hacking_watch_reads_the_quick_evaluations_from_mlflow(tmp_path, capsys):
    from flows.run.gates import watch_reward_hacking
    from flows.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "hacking")
    quick = {2: (0.5, 0.5), 4: (0.25, 0.0)}  # iteration -> (arithmetic, gsm8k) accuracy
    for step, (a, g) in quick.items():
        tracker.log_metrics({"eval_quick/arithmetic/accuracy": a,
                             "eval_quick/gsm8k/accuracy": g}, step=step)
    run = SimpleNamespace(cfg=load_config(None), eval_sets={"arithmetic": None, "gsm8k": None},
                          tracker=tracker, gate_said=set(),
                          history=[{"iteration": i, "reward/total/mean": r}
                                   for i, r in enumerate([0.1, 0.1, 0.4, 0.6], start=1)])
    capsys.readouterr()  # MLflow's own lines, creating the store
    watch_reward_hacking(run, {"reward/total/mean": 0.6})  # no quick evaluation: nothing
    assert capsys.readouterr().err == ""
    for _ in range(2):
        watch_reward_hacking(run, {"eval_quick/arithmetic/accuracy": 0.25})
    said = ("rollout gate: training reward rose 0.1 -> 0.5 (mean over iterations 1-2 -> 3-4) "
            "while the quick evaluation fell 0.5 -> 0.125 (iteration 2 -> 4): reward hacking? "
            "look at the rollouts' completions")
    assert capsys.readouterr().err == f"warning: {said}\n"  # once
    assert tracker.client.get_run(tracker.run_id).data.tags["gate.reward_hacking"] == said


# A user reward with a declared range that it keeps for two iterations and breaks on the third
# (each iteration calls a batch function once): nothing but the gate checks a declared range.
CAPPED_REWARD = """
CALLS = []

def capped(completions, **_):
    CALLS.append(1)
    return [5.0 if len(CALLS) == 3 else 0.25 * (i % 3) for i in range(len(completions))]

capped.reward_range = (0.0, 1.0)
"""


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_run_warns_once_then_stops_before_the_update_of_a_broken_iteration(
        tmp_path, tiny_sft_dir, data_dir):
    (tmp_path / "myrewards.py").write_text(CAPPED_REWARD)
    tiny_params(tmp_path, tiny_sft_dir, data_dir, engine="hf", iterations=4,
                train={"checkpoint_every": 10, "resume_every": 1},
                reward={"functions": {"myrewards:capped": 1.0}},
                gates={"max_truncated_frac": 0.5})  # the tiny model is always cut off
    assert run_grpo(tmp_path, "prepare").returncode == 0
    out = run_grpo(tmp_path, "train", "--no-eval")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("grpo: error: ")]
    assert line.startswith("grpo: error: rollout gate: iteration 3 stopped before its update: ")
    assert ("reward_myrewards:capped outside [0, 1] (what the reward functions can score) in 4 "
            "of 4 completions (e.g. ") in line, line  # and the total, `reward`, likewise
    warned = ("warning: rollout gate: 100% of iteration 1's completions were cut off at "
              "rollout.max_new_tokens (gates.max_truncated_frac=0.5); said once, logged as "
              "gate/truncated_frac every iteration")
    assert out.stderr.count(warned) == 1 and out.stderr.count("rollout gate: 100%") == 1

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["gate.failure"] == line.removeprefix("grpo: error: ")
    assert run.data.tags["gate.truncated_frac"] == warned.removeprefix("warning: ")
    steps = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
             for key in ("gate/truncated_frac", "update/kl", "reward/total/mean")}
    assert steps == {key: [1, 2] for key in steps}  # iteration 3: neither trained nor logged
    resume = tmp_path / "models" / "grpo" / "resume"
    assert json.loads((resume / "meta.json").read_text())["iteration"] == 2
    kept = pd.read_parquet(tmp_path / "rollouts" / "iter_00003.parquet")  # left for a look
    assert (kept["reward_myrewards:capped"] == 5.0).all()

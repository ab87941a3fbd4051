"""Reward functions on real gold solutions and hand-written completions; failure handling."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from grpo_core.data import sources as data

from grpo_core.rewards import functions as rewards
from grpo_core.rewards.answers import gsm8k_intermediates, is_correct, last_boxed, numbers_in
from grpo_core.config import RewardConfig, load_config
from grpo_core.errors import UserError


def _score(completions, answers, weights, sources=None, token_counts=None, max_new_tokens=200,
           **context):
    n = len(completions)
    return rewards.score(completions, answers=answers, sources=sources or ["gsm8k"] * n,
                         token_counts=token_counts or [10] * n, max_new_tokens=max_new_tokens,
                         weights=weights, **context)


@pytest.fixture(scope="module")
def frames(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    paths, _ = data.prepare(data_dir, out, [("gsm8k", "train"), ("gsm8k", "test"),
                                            ("math500", "test")])
    return {k: data.load_processed(p) for k, p in paths.items()}


# ------------------------------------------------------------------ real gold data
def test_every_gsm8k_gold_solution_scores_one(frames):
    for key in ("gsm8k_train", "gsm8k_test"):
        f = frames[key]
        total, per_fn, metrics = _score(f["solution"].tolist(), f["answer"].tolist(),
                                        {"gsm8k_accuracy": 1.0})
        assert total.shape == (len(f),)
        assert per_fn["gsm8k_accuracy"].min() == 1.0, key
        assert metrics["reward/gsm8k_accuracy/failures"] == 0
        # against the previous problem's answer: 1 exactly where the two golds are equal
        # (small round numbers repeat: about 1% of neighbours share their answer)
        shifted = np.roll(f["answer"].to_numpy(), 1)
        cross, _, _ = _score(f["solution"].tolist(), shifted.tolist(), {"gsm8k_accuracy": 1.0})
        same = np.array([float(a) == float(b) for a, b in zip(f["answer"], shifted)])
        np.testing.assert_array_equal(cross, same.astype(float))
        assert (cross == 0).mean() >= 0.98


def test_math500_solutions_verify_against_their_answers(frames):
    f = frames["math500_test"]
    sols, golds = f["solution"].tolist(), f["answer"].tolist()
    own, _, m = _score(sols, golds, {"math_accuracy": 1.0}, sources=["math500"] * len(f),
                       time_limit_s=10.0)
    assert own.mean() >= 0.99, f"{own.mean():.3f}"
    cross, _, _ = _score(sols, golds[1:] + golds[:1], {"math_accuracy": 1.0},
                         sources=["math500"] * len(f), time_limit_s=10.0)
    assert (cross == 0).mean() >= 0.99, f"{(cross == 0).mean():.3f}"


# ---------------------------------------------------------------- hand-written
@pytest.mark.parametrize("completion, expected", [
    ("500 + 500 = 1000\n#### 1000", 1.0),
    ("Total: $1,000.00\n#### $1,000", 1.0),      # gold below is 1000
    ("The answer is \\boxed{1000}.", 1.0),
    ("So she earns 1000 dollars.", 1.0),         # last number, with a unit after it
    ("That makes 1000.0", 1.0),                  # trailing .0
    ("#### 1000\nI checked it 3 times.", 1.0),   # '####' wins over the last number
    ("#### 999", 0.0),
    ("I do not know.", 0.0),
    ("1,000 is wrong, it is 1,001", 0.0),
])
def test_gsm8k_accuracy_formats(completion, expected):
    total, _, _ = _score([completion], ["1000"], {"gsm8k_accuracy": 1.0})
    assert total.tolist() == [expected]


@pytest.mark.parametrize("completion, gold, expected", [
    ("so $x = \\boxed{\\frac{1}{2}}$", "\\frac12", 1.0),
    ("the value is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),
    ("\\boxed{x^2+2x}", "x(x+2)", 1.0),
    ("\\boxed{3}", "4", 0.0),
    ("no answer at all", "4", 0.0),
])
def test_math_accuracy_cases(completion, gold, expected):
    total, _, _ = _score([completion], [gold], {"math_accuracy": 1.0}, sources=["math"])
    assert total.tolist() == [expected]


def test_accuracy_and_is_correct_dispatch_by_checker():
    # "1/2" vs gold "0.5": GSM8K's check reads the last number (2); math-verify sees 1/2 = 0.5
    assert is_correct("so it is 1/2", "0.5", "math_verify")
    assert not is_correct("so it is 1/2", "0.5", "numeric")
    assert is_correct("#### 12", "12", "numeric") and not is_correct("#### 13", "12", "numeric")
    # the row's checker decides, not its source: one mixture, three rules
    total, _, _ = _score(["#### 12", "\\boxed{\\pi}", "#### Paris.", "#### Paris."],
                         ["12", "\\pi", "paris", "paris"], {"accuracy": 1.0},
                         sources=["gsm8k", "math500", "capitals", "capitals"],
                         checkers=["numeric", "math_verify", "exact", "numeric"])
    assert total.tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(UserError, match=r"^no answer checker 'aime' \(known: numeric, exact, "
                                        r"math_verify\); rerun `grpo prepare`"):
        is_correct("1", "1", "aime")
    with pytest.raises(UserError, match=r"^the accuracy reward needs each row's checker"):
        _score(["#### 12"], ["12"], {"accuracy": 1.0})


@pytest.mark.parametrize("completion, gold, expected", [
    ("The capital is\n#### Paris.", "paris", True),  # trailing period, case
    ("#### New   York\nmore text", " new york ", True),  # whitespace collapsed, one line
    ("so \\boxed{Blue Whale}", "blue whale", True),  # no '####': the last \\boxed{}
    ("I think\n\n  Lima  \n", "lima", True),  # neither: the last non-empty line
    ("#### Paris, France", "paris", False),  # equality, not containment
    ("#### paris..", "paris", False),  # one period only
    ("####", "paris", False),  # nothing after the mark
    ("", "paris", False),
])
def test_exact_checker_normalisation(completion, gold, expected):
    assert is_correct(completion, gold, "exact") is expected
    total, _, _ = _score([completion], [gold], {"accuracy": 1.0}, checkers=["exact"])
    assert total.tolist() == [float(expected)]


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{b^{2}}} c") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed 9.") == "9"
    assert last_boxed("\\boxed{ok} then \\boxed{unclosed") == "ok"
    assert last_boxed("\\fbox{7}") == "7" and last_boxed("none") is None


@pytest.mark.parametrize("completion, form, expected", [
    ("steps\n#### 42", "hashes", 1.0),
    ("steps\n####42.5", "hashes", 1.0),
    ("steps #### 42", "hashes", 0.0),   # not on its own line
    ("steps\n#### forty", "hashes", 0.0),
    ("steps\n#### 42\n\n", "hashes", 1.0),  # trailing blank lines are fine
    ("steps\n#### 42\nand more", "hashes", 0.5),  # stated once, not as the last line
    ("#### 4\n#### 42", "hashes", 0.0),  # stated twice: the reward hack this rule stops
    ("so \\boxed{42}", "boxed", 1.0),
    ("so \\boxed{}", "boxed", 0.0),
    ("\\boxed{4} or \\boxed{42}", "boxed", 0.0),
    ("steps\n#### 42", "boxed", 0.0),
])
def test_format(completion, form, expected):
    total, _, _ = _score([completion], ["42"], {"format": 1.0}, answer_format=form)
    assert total.tolist() == [expected]


def test_unknown_answer_format_is_a_user_error_not_a_silent_zero():
    with pytest.raises(UserError, match="reward.answer_format must be one of hashes, boxed"):
        _score(["#### 1"], ["1"], {"format": 1.0}, answer_format="xml")


def test_soft_overlong_is_dapo_eq13_by_hand():
    # L_max = 200, L_cache = 64: 0 up to 136 tokens, then (136 - L) / 64, -1 beyond 200
    counts = [10, 136, 150, 190, 200, 250]
    total, _, _ = _score(["x"] * 6, ["1"] * 6, {"soft_overlong": 1.0}, token_counts=counts,
                         overlong_buffer=64)
    assert total.tolist() == [0.0, 0.0, -14 / 64, -54 / 64, -1.0, -1.0]


def test_weights_combine_and_every_function_is_kept():
    completions = ["#### 7", "the answer is 7", "#### 8"]
    total, per_fn, metrics = _score(completions, ["7"] * 3, {"gsm8k_accuracy": 1.0, "format": 0.5})
    assert per_fn["gsm8k_accuracy"].tolist() == [1.0, 1.0, 0.0]
    assert per_fn["format"].tolist() == [1.0, 0.0, 1.0]
    assert total.tolist() == [1.5, 1.0, 0.5]
    assert metrics["reward/total/mean"] == pytest.approx(1.0)
    assert metrics["reward/format/mean"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------- gsm8k_steps
NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")


def test_intermediates_of_real_gsm8k_solutions(frames):
    f = frames["gsm8k_train"].set_index("question")
    natalia, betty = f.loc[NATALIA], f.iloc[2]
    assert gsm8k_intermediates(natalia["solution"], NATALIA) == {24}  # 48 is given, 72 the answer
    assert gsm8k_intermediates(betty["solution"], betty.name) == {50, 30}  # 5 is the answer
    # lines without calculator annotations: the number after '='
    assert gsm8k_intermediates("a = 3 + 4 = 7\nb = 7 * 2 = 14\n#### 14", "add 3 and 4") == {7}
    # the same numbers as a completion's: a bare decimal too (GSM8K train has '6/3=.5 hour')
    assert gsm8k_intermediates("run 6/3=.5 hour\n.5 * 60 = 30\n#### 30", "6 km at 3") == {0.5}
    # every value found is written in the reference's own work (its recall is 1), and most
    # problems have at least one (the rest are one-step problems)
    train = frames["gsm8k_train"]
    found = 0
    for solution, question in zip(train["solution"], train["question"], strict=True):
        wanted = gsm8k_intermediates(solution, question)
        assert wanted <= numbers_in(solution.rpartition("####")[0]), solution
        found += bool(wanted)
    assert 0.9 < found / len(train) < 1.0


@pytest.mark.parametrize("completion, expected", [
    ("Half of 48 is 24. Then 48 + 24 = 72.\n#### 72", 1.0),   # the step, nothing else
    ("Half of 48 is 24. Then 48 + 24 = 72.\n#### 70", 1.0),   # the step; the answer is accuracy's
    ("She sold 48 / 2 = 24 in May.\n#### 72", 2 / 3),        # {24} against {2, 24}
    ("24 25 26 27 28 29\n#### 72", 2 / 7),                   # a list of guesses pays little
    ("#### 72", 0.0),                                         # no work shown
    ("The answer is 10.\n#### 10", 0.0),                     # a guess
])
def test_gsm8k_steps_by_hand(completion, expected):
    natalia = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72")
    _, per_fn, m = _score([completion], ["72"], {"gsm8k_steps": 1.0}, questions=[NATALIA],
                          solutions=[natalia])
    assert per_fn["gsm8k_steps"][0] == pytest.approx(expected)
    assert m["reward/gsm8k_steps/failures"] == 0


def test_gsm8k_steps_is_zero_where_it_has_nothing_to_check():
    _, per_fn, m = _score(["24 so 72", "24 so 72", "24 so 72"], ["72", "72", "72"],
                          {"gsm8k_steps": 1.0}, sources=["gsm8k", "math500", "gsm8k"],
                          questions=[NATALIA] * 3,
                          solutions=["48 + 24 = 72\n#### 72", "\\boxed{72}", None])
    assert per_fn["gsm8k_steps"].tolist() == [0.0, 0.0, 0.0]  # one step; MATH; no reference
    assert m["reward/gsm8k_steps/failures"] == 0
    _, per_fn, _ = _score(["24 so 72"], ["72"], {"gsm8k_steps": 1.0})  # no context at all
    assert per_fn["gsm8k_steps"].tolist() == [0.0]


# ------------------------------------------------------------ failures and limits
USER_MODULE = '''
import time
from grpo_core.rewards.functions import per_completion

@per_completion
def picky(completion, **_):
    if completion == "boom":
        raise RuntimeError("cannot score")
    if completion == "slow":
        time.sleep(2.0)
    return 1.0

def short(completions, **_):
    return [1.0] * (len(completions) - 1)

def nan(completions, **_):
    return [float("nan")] * len(completions)

def words(completions, **_):
    return ["high"] * len(completions)

def crash(completions, **_):
    raise ValueError("whole batch failed")

def length(completions, *, token_counts, **_):
    return [n / 100 for n in token_counts]

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_a_raising_or_slow_completion_scores_zero_and_is_counted(user_rewards):
    t0 = time.perf_counter()
    total, _, m = _score(["ok", "boom", "slow", "ok"], ["1"] * 4, {f"{user_rewards}:picky": 1.0},
                         time_limit_s=0.3)
    assert time.perf_counter() - t0 < 1.5  # the sleeping call was interrupted
    assert total.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert (m[f"reward/{user_rewards}:picky/failures"],
            m[f"reward/{user_rewards}:picky/timeouts"]) == (2, 1)


def test_nested_limits_keep_the_outer_one():
    def inner_then_sleep():
        assert rewards.call_with_limit(lambda: "fast", 5.0) == "fast"
        time.sleep(2.0)  # the outer 0.3 s limit must still fire

    t0 = time.perf_counter()
    with pytest.raises(rewards.RewardTimeout):
        rewards.call_with_limit(inner_then_sleep, 0.3)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(rewards.RewardTimeout):  # an inner limit shorter than the outer one
        rewards.call_with_limit(lambda: rewards.call_with_limit(lambda: time.sleep(2), 0.2), 5.0)


def test_time_limit_also_holds_outside_the_main_thread(user_rewards):
    out = {}

    def work():
        out["result"] = _score(["slow", "ok"], ["1", "1"], {f"{user_rewards}.picky": 1.0},
                               time_limit_s=0.3)

    t0 = time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    assert time.perf_counter() - t0 < 1.5
    total, _, m = out["result"]
    assert total.tolist() == [0.0, 1.0] and m[f"reward/{user_rewards}.picky/timeouts"] == 1


def test_a_batch_function_that_raises_gives_zeros_and_user_functions_get_context(user_rewards):
    total, per_fn, m = _score(["a", "b"], ["1", "1"],
                              {f"{user_rewards}:crash": 1.0, f"{user_rewards}:length": 2.0},
                              token_counts=[50, 100])
    assert per_fn[f"{user_rewards}:crash"].tolist() == [0.0, 0.0]
    assert m[f"reward/{user_rewards}:crash/failures"] == 2
    assert total.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("fn, message", [
    ("short", r"reward function my_rewards:short returned 1 values for 2 completions"),
    ("nan", r"reward function my_rewards:nan returned a non-finite value \(nan\) for completion 0"),
    ("words", r"reward function my_rewards:words returned 'high' for completion 0"),
])
def test_wrong_length_non_finite_or_non_numbers_are_clear_errors(user_rewards, fn, message):
    with pytest.raises(UserError, match=message):
        _score(["a", "b"], ["1", "1"], {f"{user_rewards}:{fn}": 1.0})


def test_check_functions_at_start_up(user_rewards):
    fns = rewards.check_functions(["gsm8k_accuracy", f"{user_rewards}:length"])
    assert list(fns) == ["gsm8k_accuracy", f"{user_rewards}:length"]
    for name, message in [("gsm8k_acc", "unknown reward function 'gsm8k_acc'"),
                          ("no_such_module:fn", "cannot import 'no_such_module:fn'"),
                          (f"{user_rewards}:missing", f"cannot import '{user_rewards}:missing'"),
                          (f"{user_rewards}:NOT_CALLABLE", "is not callable")]:
        with pytest.raises(UserError, match=message):
            rewards.check_functions([name])
    with pytest.raises(UserError, match="reward.reward_model is not set"):
        rewards.check_functions(["reward_model"])
    with pytest.raises(UserError, match="directory not found"):
        rewards.check_functions(["reward_model"], reward_model_dir="/no/such/rm")


def test_config_defaults_name_registered_functions():
    assert set(RewardConfig.model_fields["answer_format"].annotation.__args__) == set(
        rewards.ANSWER_FORMATS)
    rewards.check_functions(list(load_config(None).reward.functions))


# ------------------------------------------------------------------ reward model
@pytest.fixture(scope="module")
def tiny_reward_model(smollm2_tokenizer, tmp_path_factory):
    """No real reward model is available offline: a tiny random LlamaForSequenceClassification
    with SmolLM2's tokenizer, saved like any HF reward model directory."""
    import torch
    from transformers import LlamaForSequenceClassification

    from tests.conftest import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(smollm2_tokenizer), num_labels=1,
                               pad_token_id=smollm2_tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).eval().save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return str(path)


def test_reward_model_scores_in_batches_like_one_at_a_time(tiny_reward_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = ["Q: 2+2?\n", "Q: what is the capital of France?\n", "Q: 1?\n"]
    completions = ["4", "It is Paris, a city on the Seine.", "one, as a number: 1"]
    kw = dict(prompts=prompts, reward_model_dir=tiny_reward_model)
    batched, _, m = _score(completions, ["", "", ""], {"reward_model": 1.0},
                           reward_model_batch_size=3, **kw)
    single, _, _ = _score(completions, ["", "", ""], {"reward_model": 1.0},
                          reward_model_batch_size=1, **kw)
    assert m["reward/reward_model/failures"] == 0
    np.testing.assert_allclose(batched, single, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    with torch.inference_mode():
        ref = [model(**tok(p + c, return_tensors="pt")).logits[0, 0].item()
               for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(single, ref, atol=1e-5)
    assert len(set(np.round(batched, 6))) == 3  # different texts, different scores

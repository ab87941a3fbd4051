"""Prompts rendered with SmolLM2-135M-Instruct's real chat template."""

from __future__ import annotations

import pytest

from grpo_core.errors import UserError
from grpo_core.data.prompts import INSTRUCTIONS, few_shot_examples, render_prompt, render_prompts

Q = "Natalia sold 48 clips in April and half as many in May. How many in total?"


def test_rendered_with_the_chat_template_and_generation_prompt(smollm2_tokenizer):
    text = render_prompt(smollm2_tokenizer, Q + "\n", system="You are a careful tutor.",
                         instruction=INSTRUCTIONS["hashes"])
    assert text == (
        "<|im_start|>system\nYou are a careful tutor.<|im_end|>\n"
        f"<|im_start|>user\n{Q}\n\n{INSTRUCTIONS['hashes']}<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_empty_system_keeps_the_template_default(smollm2_tokenizer):
    text = render_prompt(smollm2_tokenizer, Q, instruction="")
    # SmolLM2's template inserts its own system turn when none is given
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")


def test_few_shot_turns_come_before_the_question(smollm2_tokenizer):
    shots = [("What is 1+1?", "1+1 = 2\n#### 2"), ("What is 2*3?", "2*3 = 6\n#### 6")]
    text = render_prompt(smollm2_tokenizer, Q, system="S", instruction="Answer after ####.",
                         few_shot=shots)
    turns = text.split("<|im_start|>")[1:]
    assert [t.split("\n", 1)[0] for t in turns] == [
        "system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert turns[2] == "assistant\n1+1 = 2\n#### 2<|im_end|>\n"
    assert turns[5] == f"user\n{Q}\n\nAnswer after ####.<|im_end|>\n"


def test_render_prompts_is_render_prompt_for_each(smollm2_tokenizer):
    qs = [Q, "What is 7 squared?"]
    kw = dict(system="", instruction=INSTRUCTIONS["boxed"])
    assert render_prompts(smollm2_tokenizer, qs, **kw) == [
        render_prompt(smollm2_tokenizer, q, **kw) for q in qs]


def test_few_shot_examples_never_include_the_question_itself():
    qs, sols = ["a?", "b?", "c?"], ["A", "B", "C"]
    assert few_shot_examples(qs, sols, 2) == [("a?", "A"), ("b?", "B")]
    assert few_shot_examples(qs, sols, 2, exclude=["a?"]) == [("b?", "B"), ("c?", "C")]
    with pytest.raises(UserError, match="data.prompt.few_shot = 3, but only 2 examples"):
        few_shot_examples(qs, sols, 3, exclude=["c?"])


def test_a_tokenizer_without_a_chat_template_is_a_user_error():
    class Plain:
        chat_template = None

    with pytest.raises(UserError, match="has no chat template"):
        render_prompt(Plain(), Q)


def test_few_shot_examples_drop_gsm8k_calculator_annotations():
    sol = "They have $200 + $100 = $<<200+100=300>>300.\nSo 300/2 = <<300/2=150>>150 apples.\n#### 150"
    assert few_shot_examples(["q?"], [sol], 1) == [
        ("q?", "They have $200 + $100 = $300.\nSo 300/2 = 150 apples.\n#### 150")]

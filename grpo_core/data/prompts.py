"""Prompts rendered with the checkpoint's own chat template, identical for training and evaluation.

A prompt is: an optional system message; optional few-shot turns (user: question +
instruction, assistant: the worked solution); then the user turn with the question followed by
the instruction. The template adds the assistant header (`add_generation_prompt=True`), so the
policy continues as the assistant, exactly as the SFT checkpoint was tuned to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from grpo_core.errors import UserError

# Instructions that match the two answer forms the `format` reward checks (rewards.ANSWER_FORMATS).
INSTRUCTIONS = {
    "hashes": "Solve the problem step by step. At the end, write the final answer as a number "
              "on its own line after '####'.",
    "boxed": "Solve the problem step by step. Put the final answer in \\boxed{}.",
}


def user_turn(question: str, instruction: str) -> str:
    return f"{question.strip()}\n\n{instruction.strip()}" if instruction.strip() else question.strip()


def messages(question: str, *, system: str = "", instruction: str = "",
             few_shot: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The chat as a list of {"role", "content"}; few_shot holds (question, solution) pairs."""
    chat = [{"role": "system", "content": system}] if system.strip() else []
    for q, solution in few_shot:
        chat.append({"role": "user", "content": user_turn(q, instruction)})
        chat.append({"role": "assistant", "content": solution.strip()})
    chat.append({"role": "user", "content": user_turn(question, instruction)})
    return chat


def render_prompt(tokenizer: Any, question: str, *, system: str = "", instruction: str = "",
                  few_shot: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt text for one question, ready for generation (not tokenized)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the checkpoint's tokenizer has no chat template; use an "
                        "instruction-tuned (SFT) checkpoint that ships one")
    chat = messages(question, system=system, instruction=instruction, few_shot=few_shot)
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def render_prompts(tokenizer: Any, questions: Sequence[str], *, system: str = "",
                   instruction: str = "", few_shot: Sequence[tuple[str, str]] = ()) -> list[str]:
    """`render_prompt` for each question, with the same system, instruction and examples."""
    return [render_prompt(tokenizer, q, system=system, instruction=instruction, few_shot=few_shot)
            for q in questions]


@dataclass(frozen=True)
class PromptRenderer:
    """The one way prompts are rendered for a run: the checkpoint's tokenizer with the
    configured system message, instruction and worked examples, called on a list of questions.
    Training, evaluation and the benchmarks build it the same way, so their prompts agree."""

    tokenizer: Any
    system: str = ""
    instruction: str = ""
    few_shot: tuple[tuple[str, str], ...] = ()

    def __call__(self, questions: Sequence[str]) -> list[str]:
        return render_prompts(self.tokenizer, questions, system=self.system,
                              instruction=self.instruction, few_shot=self.few_shot)


def few_shot_examples(questions: Sequence[str], solutions: Sequence[str], k: int,
                      exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The first k (question, solution) pairs whose question is not in `exclude` (so a
    problem is never its own example), GSM8K calculator annotations removed. Deterministic: the
    same examples for every prompt. Rows without a solution (a data.custom dataset may have
    none) cannot be examples."""
    skip = set(exclude)
    pairs = [(q, s) for q, s in zip(questions, solutions, strict=True)
             if q not in skip and isinstance(s, str) and s.strip()]
    if len(pairs) < k:
        raise UserError(f"data.prompt.few_shot = {k}, but only {len(pairs)} examples "
                        "(rows with a solution) are available")
    return [(q, _CALCULATOR.sub("", s)) for q, s in pairs[:k]]


# GSM8K solutions carry calculator annotations, '$<<200+100=300>>300': tool calls for the
# dataset's own trained calculator, not text a model should learn to write. Examples drop them.
_CALCULATOR = re.compile(r"<<[^<>]*>>")

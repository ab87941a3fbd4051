"""The built-in arithmetic dataset: deterministic, disjoint splits, correct answers."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from grpo_core.data.arithmetic import KINDS, SIZES, generate, split_of


def test_generation_is_deterministic_and_sized():
    assert generate("train", 300) == generate("train", 300)
    assert generate("train", 300, seed=1) != generate("train", 300)
    assert [len(generate(s)) for s in ("train", "test")] == [SIZES["train"], SIZES["test"]]
    assert generate("test")[:50] == generate("test", 50)  # a prefix is a smaller dataset


def test_splits_are_disjoint_by_construction():
    train, test = generate("train"), generate("test")
    def problems(rows):
        # kind, numbers and result: "gets 17 more" and "gives away 17" are two problems
        return {(r["subject"], tuple(re.findall(r"\d+", r["question"])), r["answer"])
                for r in rows}
    assert not problems(train) & problems(test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for rows, split in ((train, "train"), (test, "test")):
        assert len({r["question"] for r in rows}) == len(rows)  # no repeats within a split
        assert len({r["id"] for r in rows}) == len(rows)
    assert split_of("add", (47, 38)) == split_of("add", (47, 38))


def test_every_kind_is_balanced_and_levelled():
    rows = generate("test")
    counts = {k: sum(r["subject"] == k for r in rows) for k in KINDS}
    assert set(counts.values()) == {SIZES["test"] // len(KINDS)}
    assert {r["subject"]: r["level"] for r in rows} == {k: lvl for k, (lvl, _) in KINDS.items()}


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_follow_from_the_worked_solution(split):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for r in generate(split, 600):
        *steps, last = r["solution"].split("\n")
        assert last == f"#### {r['answer']}"
        for step in steps:  # each "a op b = c" is true arithmetic
            a, op, b, _, c = step.split()
            assert ops[op](int(a), int(b)) == int(c)
        assert steps[-1].split()[-1] == r["answer"] and Fraction(r["answer"]) >= 0
        for n in re.findall(r"\d+", r["question"]):  # the question holds the step inputs
            assert n in r["solution"]


def test_unknown_split_and_too_many_rows():
    with pytest.raises(ValueError, match="no split 'dev'"):
        generate("dev")
    with pytest.raises(ValueError, match="distinct problems"):
        generate("test", 10_000)

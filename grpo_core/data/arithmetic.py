"""A built-in dataset of arithmetic and short word problems: a smoke test of learning.

Why it exists: GRPO sharpens what a policy can already sample. A group of G samples carries a
signal only when some of them are right, so a checkpoint that almost never solves GSM8K (the
bundled 135M model) gives GRPO nothing to learn from there. These problems sit where a small
instruction-tuned model is right some of the time, so a short run on a laptop shows whether
the loop makes a checkpoint better at all. It is a product dataset like GSM8K (prepared,
validated, versioned, rewarded and evaluated the same way), not a benchmark of reasoning.

Kinds, each with a fixed difficulty level (the `level` column, so `max_level` selects them):

    level 1  add            "What is 47 + 38?"                  two 2-digit numbers
    level 1  subtract       "What is 83 - 29?"                  2-digit, result >= 0
    level 2  multiply       "What is 33 times 7?"               2-digit x 1-digit
    level 2  word_one_step  "Mia has 45 stickers. She gets 17 more. ..."   add or subtract
    level 3  word_two_step  "There are 6 boxes with 14 pens in each box and 9 loose pens. ..."
    level 3  chain          "Compute 47 + 38 - 16."             three 2-digit numbers

Splits are disjoint by construction: a problem's split is a hash of its kind and numbers
(never of its wording), so no arithmetic of the test split appears in training under another
story. Generation is deterministic: the same split and size give the same rows, in order.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, NamedTuple

TEST_SHARE = 5  # one problem in TEST_SHARE (by hash) belongs to the test split
SIZES = {"train": 3000, "test": 600}  # rows per split: multiply has 720 problems in all


class Problem(NamedTuple):
    kind: str
    numbers: tuple[int, ...]
    question: str
    steps: tuple[str, ...]  # the worked solution's lines, each "a op b = c"
    answer: int


_NAMES = ("Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom")
_ITEMS = ("stickers", "marbles", "stamps", "shells", "coins", "cards", "beads", "books")
_CONTAINERS = (("boxes", "box"), ("bags", "bag"), ("crates", "crate"), ("jars", "jar"))


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Problem("add", (a, b), f"What is {a} + {b}?", (f"{a} + {b} = {a + b}",), a + b)


def _subtract(rng: random.Random) -> Problem:
    a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
    return Problem("subtract", (a, b), f"What is {a} - {b}?", (f"{a} - {b} = {a - b}",), a - b)


def _multiply(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    return Problem("multiply", (a, b), f"What is {a} times {b}?", (f"{a} * {b} = {a * b}",),
                   a * b)


def _word_one_step(rng: random.Random) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(20, 99), rng.randint(2, 19)
    if rng.random() < 0.5:
        text = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        return Problem("word_one_step", (a, b, 1), text, (f"{a} + {b} = {a + b}",), a + b)
    text = f"{name} has {a} {item}. {name} gives away {b}. How many {item} does {name} have left?"
    return Problem("word_one_step", (a, b, -1), text, (f"{a} - {b} = {a - b}",), a - b)


def _word_two_step(rng: random.Random) -> Problem:
    (many, one), item = rng.choice(_CONTAINERS), rng.choice(_ITEMS)
    n, each, loose = rng.randint(2, 9), rng.randint(11, 29), rng.randint(2, 19)
    text = (f"There are {n} {many} with {each} {item} in each {one}, and {loose} more {item} "
            f"outside the {many}. How many {item} are there in total?")
    steps = (f"{n} * {each} = {n * each}", f"{n * each} + {loose} = {n * each + loose}")
    return Problem("word_two_step", (n, each, loose), text, steps, n * each + loose)


def _chain(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    c = rng.randint(10, min(99, a + b))  # the result stays >= 0
    steps = (f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}")
    return Problem("chain", (a, b, c), f"Compute {a} + {b} - {c}.", steps, a + b - c)


# kind -> (level, generator); the order is the round-robin order of generation
KINDS: dict[str, tuple[int, Callable[[random.Random], Problem]]] = {
    "add": (1, _add), "subtract": (1, _subtract), "multiply": (2, _multiply),
    "word_one_step": (2, _word_one_step), "word_two_step": (3, _word_two_step),
    "chain": (3, _chain),
}


def split_of(kind: str, numbers: tuple[int, ...]) -> str:
    """"test" for one (kind, numbers) in TEST_SHARE, else "train": a property of the problem."""
    digest = hashlib.sha256(f"{kind}:{numbers}".encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def generate(split: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` raw rows (default SIZES[split]) of `split`, each problem's numbers unique within
    the split; kinds take turns, so every prefix of the list is balanced across kinds."""
    if split not in SIZES:
        raise ValueError(f"arithmetic has no split {split!r} (splits: {', '.join(SIZES)})")
    n = SIZES[split] if n is None else n
    rng = random.Random(f"arithmetic:{seed}:{split}")
    seen: set[tuple[str, tuple[int, ...]]] = set()
    rows: list[dict] = []
    kinds = list(KINDS.items())
    for _ in range(200 * n):
        if len(rows) == n:
            break
        kind, (level, make) = kinds[len(rows) % len(kinds)]
        p = make(rng)
        if split_of(p.kind, p.numbers) != split or (p.kind, p.numbers) in seen:
            continue
        seen.add((p.kind, p.numbers))
        rows.append(dict(id=f"arithmetic/{split}/{len(rows)}", question=p.question,
                         answer=str(p.answer), solution="\n".join((*p.steps, f"#### {p.answer}")),
                         level=level, subject=kind))
    if len(rows) < n:
        raise ValueError(f"arithmetic {split}: only {len(rows)} distinct problems, {n} asked")
    return rows

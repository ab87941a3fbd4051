"""Final-answer extraction and the checkers that judge completions: `numeric` (GSM8K),
`math_verify` (MATH) and `exact` (a string answer of a user's own dataset), in `CHECKERS`.

GSM8K (Cobbe et al., arXiv 2110.14168) gold answers are the number after `####`; a completion's
answer is taken, in order of preference, after its last `####`, inside its last `\\boxed{}`, or
as its last number. Numbers compare exactly as fractions after removing thousands commas, `$`,
`%`, units and a trailing `.0`: we depart from the paper's exact string match so that "1,000.00"
and "1000" agree (the paper's own verifier was a trained model, not a string match).

MATH (Hendrycks et al., arXiv 2103.03874) answers are the last `\\boxed{...}` of the solution with
balanced braces; equivalence is decided by math-verify (symbolic and numeric), not by the
paper's string normalisation. math-verify's own signal-based timeouts are switched off here:
the caller (`grpo_core.rewards.functions.score`) enforces the time limit, in any thread.

`exact` is for answers that are words, not numbers or formulas: the completion's answer (after
its last `####`, else its last `\\boxed{}`, else its last non-empty line) equals the gold after
both are stripped, whitespace-collapsed, case-folded and stripped of one trailing period.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Callable, NamedTuple, Optional

from grpo_core.errors import UserError

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
# A number: optional sign, digits with optional thousands commas, optional decimals, or a
# bare decimal such as ".5". Commas are checked for the 3-digit grouping so "1,2" stays two numbers.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_HASHES = "####"


def last_boxed(text: str) -> Optional[str]:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or of the
    brace-less form `\\boxed 9` (two MATH train solutions use it). None when there is none."""
    for m in reversed(list(_BOXED.finditer(text))):  # the last one that closes
        start = m.end()
        if start < len(text) and text[start] != "{":
            token = re.match(r"[^\s$]+", text[start:])
            if token and m.group(0) != m.group(0).rstrip():  # "\boxed 9", not "\boxedx"
                return token.group(0).rstrip(".,;")
            continue
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + 1:i].strip()
    return None


def gsm8k_gold(solution: str) -> Optional[str]:
    """The canonical answer of a GSM8K solution: the number after `####`, commas removed."""
    if _HASHES not in solution:
        return None
    tail = solution.rsplit(_HASHES, 1)[1].strip()
    return tail.replace(",", "").strip() or None


def to_number(text: str) -> Optional[Fraction]:
    """Parse '$1,234.50', '12 apples', '3.0', '-7', '50%' or '\\frac{3}{4}' into an exact number."""
    text = text.strip().replace("\\$", "").replace("$", "").replace("\\!", "")
    frac = re.fullmatch(r"-?\\d?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if frac and int(frac.group(2)) != 0:
        sign = -1 if text.startswith("-") else 1
        return sign * Fraction(int(frac.group(1)), int(frac.group(2)))
    found = _NUMBER.search(text)
    if not found:
        return None
    try:
        return Fraction(found.group(0).replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def extract_number_answer(completion: str) -> Optional[str]:
    """A completion's final numeric answer as text: after the last `####`, else in the last
    `\\boxed{}`, else the last number anywhere. None when there is no number."""
    if _HASHES in completion:
        tail = completion.rsplit(_HASHES, 1)[1].strip()
        line = tail.splitlines()[0] if tail else ""
        if to_number(line) is not None:
            return line.strip()
    boxed = last_boxed(completion)
    if boxed is not None and to_number(boxed) is not None:
        return boxed
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def gsm8k_correct(completion: str, gold: str) -> bool:
    """Numeric equality of the completion's final answer and the gold number."""
    pred = extract_number_answer(completion)
    if pred is None:
        return False
    a, b = to_number(pred), to_number(gold)
    return a is not None and b is not None and a == b


def numbers_in(text: str) -> set[Fraction]:
    """Every number written in `text`, as exact values ('1,000', '1000.0' and '1000' are one)."""
    return {v for v in (to_number(m) for m in _NUMBER.findall(text)) if v is not None}


_CALCULATOR_RESULT = re.compile(r"<<[^<>=]*=([^<>]*)>>")
_EQUALS_RESULT = re.compile(r"=\s*\$?\s*(" + _NUMBER.pattern + ")")


@functools.lru_cache(maxsize=4096)  # a group's G completions are checked against one solution
def gsm8k_intermediates(solution: str, question: str) -> frozenset[Fraction]:
    """The values a GSM8K reference solution computes on the way to its answer: the result of
    each calculator annotation ('<<48/2=24>>'), or in a line without one the number after each
    '='. Values the question already states, and the final answer, are left out: the first are
    no work, the second is the accuracy reward's business."""
    body, hashes, final = solution.rpartition(_HASHES)
    if not hashes:
        body, final = solution, ""
    found: set[Fraction] = set()
    for line in body.splitlines():
        results = _CALCULATOR_RESULT.findall(line) or _EQUALS_RESULT.findall(line)
        found.update(v for v in map(to_number, results) if v is not None)
    return frozenset(found - numbers_in(question) - {to_number(final)})


def math_correct(completion: str, gold: str) -> bool:
    """math-verify equivalence of the completion's answer and the gold MATH answer. The gold is
    wrapped in `\\boxed{}` so math-verify reads it as LaTeX. No internal timeout (see module doc)."""
    parse, verify = _math_verify()
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = parse(completion, parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    """Parsed once per gold answer: a GRPO group checks G completions against the same one.
    (An interrupted parse raises, so nothing partial is cached.)"""
    parse, _ = _math_verify()
    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None)


def _math_verify():
    """math-verify's parse and verify, imported on first use (sympy costs about a second).
    Its one-time warning that its timeout is off is silenced: the limit is enforced by
    `grpo_core.rewards.functions.call_with_limit`, which also works outside the main thread."""
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify.parser.parse, math_verify.grader.verify


def exact_answer(completion: str) -> Optional[str]:
    """A completion's final answer as text, for the `exact` checker: the rest of the line after
    its last `####`, else the content of its last `\\boxed{}`, else its last non-empty line."""
    if _HASHES in completion:
        tail = completion.rsplit(_HASHES, 1)[1].strip()
        return tail.splitlines()[0] if tail else None
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


def normalise_exact(text: str) -> str:
    """How `exact` compares: whitespace stripped and runs of it collapsed to one space,
    case-folded, one trailing period dropped (" Paris. " == "paris")."""
    text = re.sub(r"\s+", " ", text).strip().casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_correct(completion: str, gold: str) -> bool:
    """String equality of the completion's final answer and the gold, after `normalise_exact`."""
    pred = exact_answer(completion)
    return pred is not None and normalise_exact(pred) == normalise_exact(gold)


def number_key(completion: str) -> Optional[str]:
    """The completion's final number in one canonical form ('10', '10.0' and '$10' agree)."""
    text = extract_number_answer(completion)
    number = to_number(text) if text is not None else None
    return None if number is None else str(number)


def boxed_key(completion: str) -> Optional[str]:
    """The completion's last `\\boxed{}` answer, whitespace removed."""
    boxed = last_boxed(completion)
    return None if boxed is None else "".join(boxed.split())


def exact_key(completion: str) -> Optional[str]:
    pred = exact_answer(completion)
    return None if pred is None else normalise_exact(pred)


class Checker(NamedTuple):
    """How one kind of answer is judged: `correct(completion, gold)`, and `answer_key(completion)`,
    the normalised answer that maj@k votes on (None: no answer to vote for)."""

    correct: Callable[[str, str], bool]
    answer_key: Callable[[str], Optional[str]]


# checker name -> Checker. Every processed row names its checker (the `checker` column, from its
# dataset: gsm8k and arithmetic numeric, math and math500 math_verify, a data.custom dataset its
# own), so a mixture of datasets is judged row by row. The config lists these names too
# (grpo_core.config.schema.CHECKER_NAMES; a test keeps the two equal).
CHECKERS: dict[str, Checker] = {
    "numeric": Checker(gsm8k_correct, number_key),  # GSM8K's exact numeric equality
    "exact": Checker(exact_correct, exact_key),  # string equality after normalise_exact
    "math_verify": Checker(math_correct, boxed_key),  # MATH's symbolic equivalence
}


def checker(name: str) -> Checker:
    try:
        return CHECKERS[name]
    except KeyError:
        raise UserError(f"no answer checker {name!r} (known: {', '.join(CHECKERS)}); "
                        "rerun `grpo prepare` if the processed data is older") from None


def is_correct(completion: str, gold: str, checker_name: str) -> bool:
    """Whether `completion` answers `gold`, judged by the named checker (the row's `checker`)."""
    return checker(checker_name).correct(completion, gold)

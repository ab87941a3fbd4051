"""The datasets a run trains and evaluates on: built-in ones by name (`DatasetSpec`) and the
user's own (`CustomDataset`, the values of data.custom), with the rules that tie them together:
a name used in data.train or evaluate.datasets must be built in or defined."""

from __future__ import annotations

import re
from typing import Literal, Mapping, Optional, Sequence

from pydantic import Field, model_validator

from grpo_core.config.base import KeyedError, Section

# The built-in datasets (the keys of grpo_core.data.sources.SOURCES) and the difficulty limit
# each one takes (grpo_core.data.sources.within_difficulty); a test keeps them equal.
DIFFICULTY = {"gsm8k": "max_steps", "math": "max_level", "math500": "max_level",
              "arithmetic": "max_level"}
BUILT_IN_DATASETS = tuple(DIFFICULTY)
# How a completion is judged against a dataset's answer: grpo_core.rewards.answers.CHECKERS.
CheckerName = Literal["numeric", "exact", "math_verify"]
FILE_TYPES = (".jsonl", ".json", ".parquet")  # what grpo_core.data.sources.read_records reads


def _either(words) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


class DatasetSpec(Section):
    """One dataset split. `name` is a built-in dataset: gsm8k, math or math500 (files under
    data.dir, else the hub), or arithmetic, generated arithmetic and word problems that need no
    files (grpo_core.data.arithmetic): a product dataset, the smoke test of whether training
    makes a checkpoint better at all, not a benchmark; or the name of one of your own datasets
    in data.custom."""

    name: str
    split: Literal["train", "test"] = "train"
    rows: Optional[int] = Field(default=None, ge=1)  # None = every row
    # difficulty, applied before `rows` are drawn (training sets; null = no limit):
    max_steps: Optional[int] = Field(default=None, ge=1)  # gsm8k: reference-solution lines
    # math, math500: MATH level 1-5; arithmetic: 1 add/subtract, 2 multiply and one-step word
    # problems, 3 two-step problems
    max_level: Optional[int] = Field(default=None, ge=1, le=5)

    @model_validator(mode="after")
    def _difficulty_fits_the_dataset(self) -> "DatasetSpec":
        limit = DIFFICULTY.get(self.name)  # a data.custom name: checked by `Config`, which knows it
        if limit is None:
            return self
        if self.max_steps is not None and limit != "max_steps":
            raise ValueError(f"max_steps counts GSM8K solution steps; {self.name} has levels, "
                             "use max_level")
        if self.max_level is not None and limit != "max_level":
            levelled = _either([n for n, lim in DIFFICULTY.items() if lim == "max_level"])
            raise ValueError(f"max_level is a level of {levelled}; {self.name} has none, "
                             "use max_steps")
        return self


class CustomDataset(Section):
    """A verifiable dataset of your own: a value of data.custom, whose key is the name that
    data.train and evaluate.datasets use. Each split is a local .jsonl, .json or .parquet file
    (`files`, paths relative to the project folder) or, for a split without a file, the Hugging
    Face hub dataset `hub` (needs internet). `question`, `answer`, `solution` and `id` name the
    raw fields (without `id`, rows are numbered; answers are strings, integers are accepted).
    `checker` judges a completion against the answer: numeric (GSM8K's numeric equality), exact
    (equal strings after stripping, collapsing whitespace, case-folding and dropping one
    trailing period) or math_verify (MATH's symbolic equivalence)."""

    files: dict[Literal["train", "test"], str] = {}
    hub: Optional[str] = Field(default=None, min_length=1)  # a hub dataset id: "org/name"
    hub_config: Optional[str] = Field(default=None, min_length=1)
    question: str = Field(default="question", min_length=1)
    answer: str = Field(default="answer", min_length=1)
    solution: Optional[str] = Field(default=None, min_length=1)  # shown as a worked example
    id: Optional[str] = Field(default=None, min_length=1)
    checker: CheckerName

    @model_validator(mode="after")
    def _has_readable_splits(self) -> "CustomDataset":
        for split, path in self.files.items():
            if not path.endswith(FILE_TYPES):
                raise KeyedError(("files", split), f"must be a {_either(FILE_TYPES)} file, "
                                 f"got {path!r}")
        if not self.files and self.hub is None:
            raise ValueError("give files (a path per split) or hub (a Hugging Face dataset id)")
        return self

    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.hub is not None else tuple(self.files)


_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # it names files and MLflow metrics


def check_custom_names(custom: Mapping[str, CustomDataset]) -> None:
    """A data.custom name may not shadow a built-in dataset and must be usable in file names."""
    for name in custom:
        if name in BUILT_IN_DATASETS:
            raise KeyedError(("custom", name), f"{name} is a built-in dataset; give yours "
                             "another name")
        if not _DATASET_NAME.match(name):
            raise KeyedError(("custom", name), "a dataset name holds letters, digits, '_' and "
                             "'-' (it names files and metrics)")


def check_dataset_uses(where: tuple[str, ...], specs: Sequence[DatasetSpec],
                       custom: Mapping[str, CustomDataset]) -> None:
    """Each spec names a built-in dataset or a data.custom one, with a split it has and no
    difficulty limit (a dataset of your own has no levels). `where` is the list's key."""
    for i, spec in enumerate(specs):
        if spec.name in BUILT_IN_DATASETS:
            continue
        if spec.name not in custom:
            known = ", ".join(custom) or "none defined"
            raise KeyedError((*where, i, "name"), f"must be a built-in dataset "
                             f"({', '.join(BUILT_IN_DATASETS)}) or a key of data.custom "
                             f"({known}), got {spec.name!r}")
        if spec.max_steps is not None or spec.max_level is not None:
            raise KeyedError((*where, i), f"{spec.name} is a data.custom dataset, without "
                             "difficulty levels: drop max_steps and max_level (use rows)")
        splits = custom[spec.name].splits()
        if spec.split not in splits:
            raise KeyedError((*where, i, "split"), f"{spec.name} has no split {spec.split!r} "
                             f"(data.custom.{spec.name}.files has {', '.join(splits)}; or set hub)")

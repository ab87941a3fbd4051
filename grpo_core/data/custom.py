"""Your own verifiable datasets (data.custom): a local .jsonl, .json or .parquet file per split,
or a Hugging Face hub dataset, with the names of its question and answer fields and the checker
that judges a completion (grpo_core.rewards.answers.CHECKERS: numeric, exact, math_verify).

Each definition becomes a `Source` beside the built-in ones, so the dataset is prepared to
`<processed_dir>/<name>_<split>.parquet`, validated by the same GX suites, versioned as a
processed output, and rewarded (`accuracy`) and evaluated by its own checker: every row
carries it in the `checker` column.

Rows keep the text as written, except that answers are stripped, and an integer answer or id
(a JSON number, an int parquet column) becomes its decimal text. Floats are refused: their text
("1e+20", "0.30000000000000004") need not be what the user meant. Without an `id` field, rows
are numbered `<name>/<split>/<index>`. Errors are one line naming the file and line (`file:row
N` for parquet) and the config key that named the field.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from grpo_core.data.readers import read_records
from grpo_core.data.sources import Records, Source
from grpo_core.errors import UserError

HUB_SPLITS = ("train", "test")  # a hub dataset may give either split


@dataclass(frozen=True)
class UserDataset:
    """One data.custom entry as plain values (its config form: grpo_core.config.CustomDataset)."""

    checker: str
    files: Mapping[str, str] = field(default_factory=dict)  # split -> path
    question: str = "question"
    answer: str = "answer"
    solution: Optional[str] = None
    id: Optional[str] = None
    hub: Optional[str] = None  # hub dataset id, read for the splits without a file
    hub_config: Optional[str] = None


def user_sources(definitions: Mapping[str, UserDataset]) -> dict[str, Source]:
    """{name: Source} for data.custom, to pass to `grpo_core.data.sources.prepare`."""
    return {name: user_source(name, spec) for name, spec in definitions.items()}


def user_source(name: str, spec: UserDataset) -> Source:
    splits = HUB_SPLITS if spec.hub else tuple(spec.files)
    fields = tuple(f for f in (spec.question, spec.answer, spec.solution) if f)
    return Source(splits, functools.partial(_records, name, spec),
                  functools.partial(_row, name, spec), fields, spec.checker)


def _records(name: str, spec: UserDataset, data_dir: Optional[Path], split: str) -> Records:
    """The split's own file (as configured; data.dir plays no part), else the hub."""
    key = f"data.custom.{name}"
    if split in spec.files:
        path = Path(spec.files[split])
        if not path.is_file():
            raise UserError(f"{key}.files.{split}: file not found: {path}")
        return read_records(path)
    return _hub_records(key, spec, split)


def _hub_records(key: str, spec: UserDataset, split: str) -> Records:
    """The split from the Hugging Face hub through `datasets` (needs internet or its cache)."""
    instead = f"or give {key}.files.{split} a local file"
    try:
        import datasets
    except ImportError:
        raise UserError(f"{key}.hub: reading {spec.hub} needs the `datasets` package "
                        f"(`pip install datasets`), {instead}") from None
    try:
        rows = datasets.load_dataset(spec.hub, spec.hub_config, split=split)
    except Exception as exc:  # offline, unknown name, no such split: one actionable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}.hub: cannot load {spec.hub} split {split!r} from the Hugging "
                        f"Face hub ({first}); {instead}") from None
    return ((f"hub:{spec.hub}/{split}[{i}]", dict(r)) for i, r in enumerate(rows))


def _row(name: str, spec: UserDataset, raw: dict, split: str, index: int, where: str) -> dict:
    key = f"data.custom.{name}"

    def text(field_name: str, which: str, integers: bool = False) -> str:
        return _text(raw, field_name, where, f"{key}.{which}", integers)

    return dict(id=text(spec.id, "id", True) if spec.id else f"{name}/{split}/{index}",
                source=name, split=split, question=text(spec.question, "question"),
                answer=text(spec.answer, "answer", True).strip(),
                solution=text(spec.solution, "solution") if spec.solution else None,
                level=None, subject=None)


def _text(raw: dict, name: str, where: str, key: str, integers: bool) -> str:
    """The string in field `name` of a raw row, else a UserError naming the row and `key`."""
    value: Any = raw.get(name)
    if value is None:
        has = ", ".join(map(str, list(raw)[:8])) + (", ..." if len(raw) > 8 else "")
        raise UserError(f"{where}: missing field '{name}' (named by {key}; the row has: "
                        f"{has or 'no fields'})")
    if integers and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))  # numpy integers too
    if not isinstance(value, str):
        kind = "a string or an integer" if integers else "a string"
        raise UserError(f"{where}: field '{name}' (named by {key}) must be {kind}, "
                        f"got {type(value).__name__}")
    return value

"""Load the datasets, normalise them to one schema, write parquet, build the training mixture.

Every dataset becomes rows of `SCHEMA`: id, source, split, question, answer (the canonical final
answer), solution, level (1-5 or null), subject, and checker: the name of the check that judges
a completion against the answer (grpo_core.rewards.answers.CHECKERS), so that rows from several
datasets in one mixture are rewarded and evaluated each by its own rule.

The built-in datasets (`SOURCES`): gsm8k, math and math500, and arithmetic, generated arithmetic
and short word problems (grpo_core.data.arithmetic) that need no files and no hub. arithmetic is
a product dataset, prepared, validated, rewarded and evaluated like GSM8K: the smoke test of
whether training makes a checkpoint better at all, sized where a small model is right some of
the time; it is not a benchmark of reasoning. A user's own datasets (data.custom) are built as
`Source`s too (grpo_core.data.custom) and passed to `prepare` beside these.

GSM8K and MATH files come from a local folder laid out as

    <data_dir>/gsm8k/{train,test}.jsonl    <data_dir>/math/{train,test}.jsonl
    <data_dir>/math/math500.jsonl

(`.json` arrays and `.parquet` files with the same fields are accepted in place of `.jsonl`), or,
with no folder, from the Hugging Face hub through `datasets`.

Departures from the sources, on purpose: GSM8K answers lose thousands commas ("1,000" -> "1000");
MATH answers without an `answer` field are the last balanced `\\boxed{...}` of the solution;
MATH's "Level ?" becomes a null level; rows with no final answer at all (two MATH train rows
have an empty `\\boxed{}`) cannot be rewarded and are dropped, with their ids in the returned
metrics, rather than failing the whole dataset.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import pandas as pd

from grpo_core.data import arithmetic
from grpo_core.data.readers import EXTENSIONS, read_records
from grpo_core.rewards.answers import gsm8k_gold, last_boxed
from grpo_core.errors import UserError

SCHEMA = ("id", "source", "split", "question", "answer", "solution", "level", "subject",
          "checker")
Records = Iterable[tuple[str, dict]]  # (location for error messages, raw row)


@dataclass(frozen=True)
class Source:
    """One dataset: its splits, where their raw rows come from, how a raw row maps to SCHEMA,
    and the checker its answers are judged by (written into every row)."""

    splits: tuple[str, ...]
    records: Callable[[Optional[Path], str], Records]  # (data_dir, split) -> raw rows
    normalise: Callable[[dict, str, int, str], dict]  # (raw, split, index, where) -> row
    fields: tuple[str, ...]  # required raw fields, for the error message
    checker: str  # a key of grpo_core.rewards.answers.CHECKERS


def _need(raw: dict, fields: Sequence[str], where: str) -> None:
    for f in fields:
        if f not in raw or raw[f] is None:
            raise UserError(f"{where}: missing field '{f}' (rows need {', '.join(fields)})")
        if not isinstance(raw[f], str):
            raise UserError(f"{where}: field '{f}' must be a string, got {type(raw[f]).__name__}")


def _gsm8k_row(raw: dict, split: str, index: int, where: str) -> dict:
    _need(raw, ("question", "answer"), where)
    gold = gsm8k_gold(raw["answer"])
    if gold is None:
        raise UserError(f"{where}: field 'answer' has no final '#### <number>' line")
    return dict(id=str(raw.get("id") or f"gsm8k/{split}/{index}"), source="gsm8k", split=split,
                question=raw["question"], answer=gold, solution=raw["answer"], level=None,
                subject=None)


_LEVEL = re.compile(r"^(?:Level\s*)?(\d+)$")


def _level(value: Any, where: str) -> Optional[int]:
    """5, "5" or "Level 5" -> 5; null, "?" or "Level ?" -> None (MATH has two of those)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy ints too
        return int(value)
    if isinstance(value, float) and value.is_integer():  # parquet may hold levels as floats
        return int(value)
    text = str(value).strip()
    if text in ("?", "Level ?", ""):
        return None
    m = _LEVEL.match(text)
    if not m:
        raise UserError(f"{where}: field 'level' must be an integer or 'Level N', got {value!r}")
    return int(m.group(1))


def _math_row(source: str) -> Callable[[dict, str, int, str], dict]:
    def row(raw: dict, split: str, index: int, where: str) -> dict:
        _need(raw, ("problem", "solution"), where)
        answer = raw.get("answer")
        if answer is not None and not isinstance(answer, str):
            answer = str(answer)
        if answer is None:
            answer = last_boxed(raw["solution"]) or ""
        subject = raw.get("subject") or raw.get("type")
        return dict(id=str(raw.get("unique_id") or raw.get("id") or f"{source}/{split}/{index}"),
                    source=source, split=split, question=raw["problem"], answer=answer.strip(),
                    solution=raw["solution"], level=_level(raw.get("level"), where),
                    subject=None if subject is None else str(subject))
    return row


_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                  "number_theory", "prealgebra", "precalculus")


def _hub(name: str, config: Optional[str] = None, split_map: Optional[dict] = None,
         configs: Sequence[str] = ()) -> Callable[[str], list[dict]]:
    def load(split: str) -> list[dict]:
        try:
            import datasets
        except ImportError:
            raise UserError("no local data and the `datasets` package is missing: "
                            "`pip install datasets`, or set GRPO_DATA_DIR (or data.dir) "
                            "to a folder with gsm8k/ and math/") from None
        hub_split = (split_map or {}).get(split, split)
        rows: list[dict] = []
        try:
            for cfg in configs or (config,):
                rows.extend(datasets.load_dataset(name, cfg, split=hub_split))
        except Exception as exc:  # offline, unknown name, no cache: one actionable line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load {name} split {hub_split!r} from the Hugging Face hub "
                            f"({first}); set GRPO_DATA_DIR or data.dir to a local copy") from None
        return rows
    return load


def _files_or_hub(name: str, stems: dict[str, str],
                  hub: Callable[[str], list[dict]]) -> Callable[[Optional[Path], str], Records]:
    """A built-in dataset's records: `<data_dir>/<stem>.jsonl|.json|.parquet`, or the hub when
    there is no data dir."""
    def records(data_dir: Optional[Path], split: str) -> Records:
        if data_dir is None:
            return ((f"hub:{name}/{split}[{i}]", r) for i, r in enumerate(hub(split)))
        return read_records(local_file(Path(data_dir), stems[split], f"{name} {split}"))
    return records


def _built_in(name: str, stems: dict[str, str], hub: Callable[[str], list[dict]],
              row: Callable[[dict, str, int, str], dict], fields: tuple[str, ...],
              checker: str) -> Source:
    return Source(tuple(stems), _files_or_hub(name, stems, hub), row, fields, checker)


def _arithmetic_row(raw: dict, split: str, index: int, where: str) -> dict:
    """The generator writes SCHEMA's fields already (level = the kind's difficulty)."""
    return dict(raw, source="arithmetic", split=split)


def _generated(data_dir: Optional[Path], split: str) -> Records:
    """Rows made in code: no file, no hub; the data dir plays no part."""
    return ((f"arithmetic {split}[{i}]", r) for i, r in enumerate(arithmetic.generate(split)))


SOURCES: dict[str, Source] = {
    "gsm8k": _built_in("gsm8k", {"train": "gsm8k/train", "test": "gsm8k/test"},
                       _hub("openai/gsm8k", "main"), _gsm8k_row, ("question", "answer"),
                       "numeric"),
    "math": _built_in("math", {"train": "math/train", "test": "math/test"},
                      _hub("EleutherAI/hendrycks_math", configs=_MATH_SUBJECTS),
                      _math_row("math"), ("problem", "solution"), "math_verify"),
    "math500": _built_in("math500", {"test": "math/math500"}, _hub("HuggingFaceH4/MATH-500"),
                         _math_row("math500"), ("problem", "solution"), "math_verify"),
    "arithmetic": Source(tuple(arithmetic.SIZES), _generated, _arithmetic_row,
                         ("question", "answer"), "numeric"),
}


# ----------------------------------------------------------------------- built-in files
def local_file(data_dir: Path, stem: str, label: str) -> Path:
    """The first existing `<data_dir>/<stem>.jsonl|.json|.parquet`, else UserError."""
    base = Path(data_dir) / stem
    for ext in EXTENSIONS:
        if base.with_suffix(ext).is_file():
            return base.with_suffix(ext)
    raise UserError(f"{label}: no file {base}.jsonl (or .json, .parquet) in data dir {data_dir}")


def _source(name: str, split: str, sources: Mapping[str, Source]) -> Source:
    if name not in sources:
        raise UserError(f"unknown dataset {name!r} (known: {', '.join(sources)})")
    if split not in sources[name].splits:
        raise UserError(f"dataset {name} has no split {split!r} "
                        f"(splits: {', '.join(sources[name].splits)})")
    return sources[name]


# ------------------------------------------------------------------------ normalise
def normalise(records: Records, name: str, split: str,
              sources: Mapping[str, Source] = SOURCES) -> tuple[pd.DataFrame, dict]:
    """Raw records -> (frame in SCHEMA, metrics). Rows with an empty answer are dropped."""
    source = _source(name, split, sources)
    rows, dropped = [], []
    for index, (where, raw) in enumerate(records):
        row = {**source.normalise(raw, split, index, where), "checker": source.checker}
        (rows if row["answer"] else dropped).append(row)
    if not rows:
        raise UserError(f"{name} {split}: no row has a final answer")
    frame = pd.DataFrame(rows, columns=list(SCHEMA))
    frame["level"] = frame["level"].astype("Int64")
    metrics = {"rows": len(frame), "dropped_no_answer": len(dropped),
               "dropped_ids": [r["id"] for r in dropped][:20]}
    return frame, metrics


def load_split(data_dir: Optional[Path], name: str, split: str,
               sources: Mapping[str, Source] = SOURCES) -> tuple[pd.DataFrame, dict]:
    """One dataset split as a normalised frame, read as its source reads (built-in files: from
    data_dir if given, else from the hub)."""
    source = _source(name, split, sources)
    return normalise(source.records(data_dir, split), name, split, sources)


def processed_name(name: str, split: str) -> str:
    return f"{name}_{split}"


def question_key(text: Any) -> str:
    """Whitespace-collapsed, lower-cased question: how two questions are judged the same
    (MATH has a train and a test problem that differ only by a trailing newline)."""
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def prepare(data_dir: Optional[str | Path], out_dir: str | Path,
            datasets: Sequence[tuple[str, str]],
            decontaminate: Sequence[tuple[str, str]] = (),
            sources: Mapping[str, Source] = SOURCES) -> tuple[dict[str, Path], dict]:
    """Normalise each (name, split) of `sources` (the built-in ones, plus a user's own) and
    write `<out_dir>/<name>_<split>.parquet`.
    `decontaminate` lists training splits from which rows whose question appears in any other
    prepared split are dropped (their ids go to the metrics).
    Returns ({"gsm8k_train": path, ...}, {"gsm8k_train": {"rows": ..., ...}, ...})."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"data dir not found: {data_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames, metrics = {}, {}
    for name, split in dict.fromkeys(datasets):  # de-duplicated, order kept
        key = processed_name(name, split)
        frames[key], metrics[key] = load_split(data_dir, name, split, sources)
    clean = {processed_name(n, s) for n, s in decontaminate}
    others = {question_key(q) for k, f in frames.items() if k not in clean for q in f["question"]}
    paths = {}
    for key, frame in frames.items():
        if key in clean:
            hit = frame["question"].map(question_key).isin(others)
            metrics[key].update(rows=int((~hit).sum()), dropped_overlap=int(hit.sum()),
                                dropped_overlap_ids=frame.loc[hit, "id"].tolist()[:20])
            frame = frame[~hit].reset_index(drop=True)
        paths[key] = out / f"{key}.parquet"
        frame.to_parquet(paths[key], index=False)
    return paths, metrics


def require_processed(path: str | Path) -> Path:
    """The path of a processed file that exists, else the one-line error saying what to run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"processed dataset not found: {path} (run `grpo prepare`)")
    return path


def load_processed(path: str | Path) -> pd.DataFrame:
    """A processed parquet file, checked to have every SCHEMA column."""
    path = require_processed(path)
    frame = _parquet_frame(path)
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)} (expected {', '.join(SCHEMA)})")
    return frame


def _parquet_frame(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None


class MixturePart(NamedTuple):
    """One entry of the training mixture: a processed dataset, how many rows (None = all that
    pass the difficulty limits), and the limits (None = no limit)."""

    key: str
    rows: Optional[int] = None
    max_steps: Optional[int] = None  # GSM8K: reference-solution lines before '####'
    max_level: Optional[int] = None  # MATH level 1-5; rows without a level are dropped


def solution_steps(solutions: pd.Series) -> pd.Series:
    """(N,) GSM8K solutions -> (N,) int: the non-empty lines before the final '####' line, one
    per reasoning step in GSM8K's layout (train: 2 to 9 steps)."""
    body = solutions.str.rsplit("####", n=1).str[0]
    return body.str.split("\n").map(lambda lines: sum(1 for line in lines if line.strip()))


def within_difficulty(frame: pd.DataFrame, part: MixturePart) -> pd.DataFrame:
    """The rows of `frame` within `part`'s limits. Why limit at all: a small policy that rarely
    solves a hard problem gives GRPO groups whose rewards are all 0, which carry no signal."""
    keep = pd.Series(True, index=frame.index)
    if part.max_steps is not None:
        keep &= solution_steps(frame["solution"]) <= part.max_steps
    if part.max_level is not None:
        keep &= frame["level"].notna() & (frame["level"] <= part.max_level)
    return frame[keep]


def describe_limits(part: MixturePart) -> str:
    """' within max_steps 2' (or '' without limits), for messages."""
    said = [f"{name} {value}" for name, value in (("max_steps", part.max_steps),
                                                  ("max_level", part.max_level)) if value]
    return f" within {', '.join(said)}" if said else ""


def training_mixture(frames: dict[str, pd.DataFrame], parts: Sequence[MixturePart],
                     seed: int) -> pd.DataFrame:
    """Concatenate each part's `rows` rows (None = all) of its frame within its difficulty
    limits, each drawn without replacement with `seed`, then shuffle the whole mixture with
    `seed`."""
    chunks = []
    for i, part in enumerate(parts):
        if part.key not in frames:
            raise UserError(f"training mixture: dataset {part.key} was not prepared "
                            f"(prepared: {', '.join(frames) or 'none'})")
        frame = within_difficulty(frames[part.key], part)
        if len(frame) == 0 or (part.rows is not None and part.rows > len(frame)):
            raise UserError(f"training mixture: {part.key} has {len(frame)} rows"
                            f"{describe_limits(part)}, {part.rows or 'at least 1'} requested")
        chunks.append(frame.sample(n=part.rows, random_state=seed + i)
                      if part.rows is not None else frame)
    mixture = pd.concat(chunks, ignore_index=True)
    return mixture.sample(frac=1.0, random_state=seed).reset_index(drop=True)

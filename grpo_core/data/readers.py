"""Reading raw records from a .jsonl, .json or .parquet file, each with its location
(`file:line`, or `file:row N` for parquet) so that a bad record gets a one-line error naming
it. The built-in datasets' files and a user's own (data.custom) are read the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from grpo_core.errors import UserError

EXTENSIONS = (".jsonl", ".json", ".parquet")


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (location, raw record) from a .jsonl, .json or .parquet file. Location is
    `file:line` for JSONL and JSON, `file:row N` for parquet. Bad files raise UserError."""
    path = Path(path)
    reader = _READERS.get(path.suffix)
    if reader is None:
        raise UserError(f"{path}: unsupported file type (use {', '.join(EXTENSIONS)})")
    n = 0
    for where, raw in reader(path):
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        n += 1
        yield where, raw
    if n == 0:
        raise UserError(f"{path}: the file has no records")


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); "
                        "save the file as UTF-8") from None


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for i, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{i}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: not valid JSON: {exc.msg} (column {exc.colno})") from None


def _json(path: Path) -> Iterator[tuple[str, Any]]:
    """A JSON array of objects, decoded element by element so each one keeps its line."""
    text = _text(path)
    decoder = json.JSONDecoder()

    def line_at(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if pos >= len(text) or text[pos] != "[":
        raise UserError(f"{path}:{line_at(pos)}: expected a JSON array of objects")
    pos = skip(pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        yield f"{path}:{line_at(pos)}", item
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            raise UserError(f"{path}:{line_at(pos)}: not valid JSON: expected ',' or ']'")


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    for i, raw in enumerate(frame.to_dict(orient="records")):
        yield f"{path}:row {i + 1}", {k: (None if _isna(v) else v) for k, v in raw.items()}


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


_READERS = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}

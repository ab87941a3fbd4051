"""One line for a pydantic validation error of the config: where (file:line or the `--set`
item), which key, what is wrong and what is allowed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from grpo_core.config.base import KeyedError
from grpo_core.config.schema import Config


def explain(err: dict, lines: dict[str, str], set_by: dict[str, str], where: str) -> str:
    """One line for the first validation error: location, key, problem, what is allowed."""
    ctx = err.get("ctx") or {}
    kind, got = err["type"], err.get("input")
    below = ctx.get("error").loc if isinstance(ctx.get("error"), KeyedError) else ()
    loc = [str(p) for p in (*err["loc"], *below)]
    key = ".".join(loc)
    if kind == "literal_error" and loc[-1] == "[key]":  # a mapping key outside its choices
        loc = loc[:-2]
        msg = f"{'.'.join(loc)} keys must be one of {ctx.get('expected')}, got {got!r}"
    elif kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        msg = f"unknown key '{key}' (allowed here: {allowed})"
    elif kind == "literal_error":
        msg = f"{key} must be one of {ctx.get('expected')}, got {got!r}"
    elif kind in _BOUND_WORDS:
        msg = f"{key} must be {_BOUND_WORDS[kind]} {ctx.get(_BOUND_CTX[kind])}, got {got!r}"
    elif kind in ("too_short", "string_too_short") and not got:
        msg = f"{key} must not be empty"
    elif kind in ("too_short", "missing"):
        msg = f"{key} is required" if kind == "missing" else f"{key} has too few values"
    elif kind in ("model_type", "dict_type"):
        msg = f"{key} must be a mapping of keys, got {got!r}"
    elif kind == "value_error":
        msg = f"{key + ': ' if key else ''}{ctx.get('error', err['msg'])}"
    else:  # wrong type: pydantic's wording names the expected type
        expected = err["msg"].removeprefix("Input should be ")
        msg = f"{key} must be {expected}, got {got!r}"
    return f"{_location(loc, lines, set_by, where)}: {msg}"


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                "less_than_equal": "<="}
_BOUND_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
              "less_than_equal": "le"}


def _location(loc: list[str], lines: dict[str, str], set_by: dict[str, str], where: str) -> str:
    key = ".".join(loc)
    hits = [override for override in set_by  # an override of this key, a parent or a child
            if key == override or key.startswith(override + ".") or override.startswith(key + ".")]
    if hits:  # the most specific one: `--set data.custom.x.checker=...` after `data.custom.x=...`
        return set_by[max(hits, key=len)]
    for n in range(len(loc), 0, -1):  # else the deepest key with a known line
        hit = lines.get(".".join(loc[:n]))
        if hit:
            return hit
    return where


def _allowed_keys(loc: list[str]) -> list[str]:
    model: Any = Config
    keyed = False  # the part after a mapping of sections (data.custom) is a user's key
    for part in loc:
        if part.isdigit() or keyed:  # an index into a list of sections, or a mapping's key
            keyed = False
            continue
        field = _field_by_name(model, part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
        keyed = getattr(field.annotation, "__origin__", None) is dict
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _field_by_name(model, name):
    for field_name, field in model.model_fields.items():
        if name in (field_name, field.alias):
            return field
    return None


def _model_of(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # tuple[DatasetSpec, ...], Optional[...]
        found = _model_of(arg)
        if found is not None:
            return found
    return None

"""Reading params.yaml and `--set` overrides into the validated `Config`.

YAML is read with YAML 1.2 scalars, every mapping key's line is remembered, and the first
validation error becomes one line naming the file and line (or the `--set` item), the key and
what is allowed (`grpo_core.config.explain`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from grpo_core.config.explain import explain
from grpo_core.config.schema import DEFAULT_PARAMS, Config
from grpo_core.errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `1e-6` is a float (YAML 1.1 reads it as a string) and only
    true/false are booleans (YAML 1.1 turns yes/no/on/off into booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read params.yaml (None or a missing default file: built-in defaults), apply
    `key.path=value` overrides, validate. Raises UserError with one line on any mistake."""
    raw, lines, where = _read_yaml(path)
    set_by: dict[str, str] = {}
    for item in overrides:
        set_by[apply_override(raw, item)] = f"--set {item}"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(explain(exc.errors()[0], lines, set_by, where)) from None


def _read_yaml(path):
    """-> (mapping, {dotted key: location}, file label)."""
    if path is None or (str(path) == DEFAULT_PARAMS and not Path(path).exists()):
        return {}, {}, "defaults"
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=_Loader)
        raw = _yaml(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{p}{at}: not valid YAML: {problem}") from None
    if raw is None:
        raise UserError(f"{p}: the file is empty (give at least one section, or delete it to "
                        f"run on the built-in defaults)")
    _refuse_duplicate_keys(node, p)
    if not isinstance(raw, dict):
        raise UserError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw, {k: f"{p}:{line}" for k, line in _key_lines(node)}, str(p)


def _refuse_duplicate_keys(node, path: Path, prefix: str = "") -> None:
    """YAML keeps the last of two equal keys without a word: a second copy of a section would
    silently replace the first. One line naming both lines instead."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{path}:{line}: duplicate key {key!r} (first at line "
                                f"{seen[key]}); YAML would keep only the last")
            seen[key] = line
            _refuse_duplicate_keys(value_node, path, key + ".")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{prefix}{i}.")


def _key_lines(node, prefix=""):
    """Yield (dotted key, 1-based line) for every mapping key in a YAML node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            yield key, key_node.start_mark.line + 1
            yield from _key_lines(value_node, key + ".")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _key_lines(item, f"{prefix}{i}.")


def apply_override(raw: dict, item: str) -> str:
    """Apply one `KEY.PATH=VALUE` (the value read as YAML, as `grpo --set` reads it) to a raw
    params mapping in place, creating sections on the way -> the dotted key it set."""
    key, value = _parse_override(item)
    _set_path(raw, key, value, item)
    return key


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set algorithm.beta=0.02")
    try:
        value = _yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: the value is not a valid YAML scalar or list") from None
    return key.strip(), value


def _set_path(raw: dict, key: str, value: Any, item: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an optional section switched off (`null`)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

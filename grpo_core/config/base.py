"""The base of every config section, and the error a cross-section rule raises."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data: Any) -> Any:
        """YAML gives lists; the frozen tree holds tuples (strict mode will not convert)."""
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return data


class KeyedError(ValueError):
    """A rule broken below the model that checks it (only the whole tree knows data.custom when
    it checks evaluate.datasets): `loc` leads from that model to the key at fault, so the
    one-line error names it (grpo_core.config.explain)."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc

"""Which run a training output directory belongs to, and whether `--resume` may continue it.

`run.json` in `train.output_dir` names the MLflow run that last started there and how it ended
(RUNNING while it trains, then FINISHED, FAILED or KILLED). The resume state's `meta.json`
names the run that saved it and the resolved config it trained with. A resume continues only
the interrupted run that saved the state, and only with the same recipe, except the keys the
user names (`grpo train --resume --allow-change train.iterations`), which the flow records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from grpo_core.errors import UserError

MARKER = "run.json"
# Sections that do not change what training does: a resume may change them freely.
FREE_PREFIXES = ("evaluate.", "promote.", "gates.")
Change = tuple[str, Any, Any]  # (dotted key, saved value, value now)


def write_marker(out_dir: str | Path, run_id: str, status: str, iteration: int = 0) -> None:
    """Record (atomically) which run owns `out_dir` and how far it got."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "status": status, "iteration": iteration}))
    os.replace(tmp, out / MARKER)


def read_marker(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / MARKER
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); delete it to start a new run") from None


def check_resumable(marker: dict | None, meta: dict | None, state_dir: str | Path) -> None:
    """Raise the one-line reason a resume cannot continue, if there is one.

    marker: the output directory's run.json (None for directories older than it); meta: the
    resume state's meta.json (None when there is no state)."""
    if meta is None and marker is not None and marker["status"] != "FINISHED":
        raise UserError(
            f"nothing to resume: run {marker['run_id']} stopped before it saved a state (one "
            f"is saved every train.resume_every iterations); start again without --resume")
    if meta is None:
        raise UserError(f"nothing to resume: no saved state in {state_dir} (run without --resume)")
    if marker is None:
        return
    if marker["run_id"] != meta.get("run_id"):
        raise UserError(
            f"nothing to resume: the last run (MLflow run {marker['run_id']}) stopped before it "
            f"saved a state (every train.resume_every iterations), and the state in {state_dir} "
            f"is an older run's; start again without --resume")
    if marker["status"] == "FINISHED":
        raise UserError(
            f"nothing to resume: run {marker['run_id']} finished at iteration "
            f"{marker.get('iteration', meta['iteration'])}; to train further, start a new run "
            f"from its final model (checkpoint.source=<train.output_dir>/final)")


def recipe_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[Change]:
    """The config keys (outside FREE_PREFIXES) whose value differs from the saved recipe.
    saved / now: `Config.flat()`; a state saved without its config compares as unchanged,
    and a setting the saved recipe has no key for at all (one added since) as its default:
    the run that saved it behaved as the default does. Only whole settings (`section.field`)
    are filled in: the entries of a mapping (reward.functions.<name>) are the user's."""
    from grpo_core.config import Config

    if saved is None:
        return []
    saved = _plain(saved)
    had = {_setting(k) for k in saved}
    added = {k: v for k, v in _plain(Config().flat()).items() if _setting(k) not in had}
    saved, now = {**added, **saved}, _plain(now)
    keys = sorted(set(saved) | set(now))
    return [(k, saved.get(k), now.get(k)) for k in keys
            if not k.startswith(FREE_PREFIXES) and saved.get(k) != now.get(k)]


def _setting(key: str) -> str:
    """`reward.functions.accuracy` -> `reward.functions`: the setting a flat key is under."""
    return ".".join(key.split(".")[:2])


def allowed_changes(changes: list[Change], allowed: Iterable[str], known: Iterable[str]
                    ) -> list[Change]:
    """The changes, if each is named in `allowed`; else the one-line refusal naming the
    others. `known`: every config key (a misspelt --allow-change is an error, not a no-op)."""
    allowed, known = set(allowed), set(known)
    unknown = sorted(allowed - known)
    if unknown:
        raise UserError(f"--allow-change {unknown[0]}: not a config key (see `grpo config`)")
    refused = [c for c in changes if c[0] not in allowed]
    if refused:
        listed = ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, old, new in refused)
        raise UserError(
            f"--resume with a different recipe: {listed}; a resumed run continues the saved "
            f"one (allow a change with --allow-change KEY, or start a new run)")
    return changes


def describe(change: Change) -> str:
    key, old, new = change
    return f"{_show(old)} -> {_show(new)}"


def _plain(flat: dict[str, Any]) -> dict[str, Any]:
    """JSON's view of the values, so tuples read back from meta.json equal tuples now."""
    return json.loads(json.dumps(flat, default=str))


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value

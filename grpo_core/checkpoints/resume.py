"""Resume state of a training run: written after every completed iteration, atomically.

The state directory holds `learner.pt` (model, optimizer, scheduler, torch RNG: the
Learner's `state_dict()`), `rng.json` (Python and NumPy RNG) and `meta.json` (iteration, MLflow
run id, the config it was made with). It is written to a sibling temporary directory and
renamed into place, so a process killed at any moment leaves either the previous complete
state or the new complete state, never a mix.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_core.errors import UserError


def save_state(state_dir: str | Path, learner_state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Replace `state_dir` with this state. `meta` must hold at least `iteration`."""
    final = Path(state_dir)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(learner_state, tmp / "learner.pt")
    (tmp / "rng.json").write_text(json.dumps(_rng_state()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)  # the commit point
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_meta(state_dir: str | Path) -> dict[str, Any] | None:
    """The meta of the last complete state, or None when there is none yet.
    A crash between the two renames of `save_state` leaves only `<dir>.old`: use it."""
    for candidate in (Path(state_dir), Path(str(state_dir) + ".old")):
        meta = candidate / "meta.json"
        if meta.is_file():
            try:
                return {**json.loads(meta.read_text()), "_dir": str(candidate)}
            except ValueError as e:
                raise _damaged(meta, e) from None
    return None


def load_state(state_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (learner state, meta); restores the Python and NumPy RNG as a side effect."""
    meta = read_meta(state_dir)
    if meta is None:
        raise UserError(f"nothing to resume: no saved state in {state_dir} (run without --resume)")
    where = Path(meta.pop("_dir"))
    try:
        # weights_only: the file holds tensors and plain containers; never unpickle code
        learner = torch.load(where / "learner.pt", map_location="cpu", weights_only=True)
        rng = json.loads((where / "rng.json").read_text())
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        raise _damaged(where, e) from None
    _set_rng_state(rng)
    return learner, meta


def clean_temporaries(state_dir: str | Path) -> None:
    """Remove what a save killed before its commit point left (`<dir>.tmp`, about 12 bytes a
    parameter). `<dir>.old` stays: after a kill between the renames it is the only state."""
    shutil.rmtree(Path(str(state_dir) + ".tmp"), ignore_errors=True)


def discard_state(state_dir: str | Path) -> None:
    """Remove a previous run's state (a new run replaces it)."""
    for suffix in ("", ".old", ".tmp"):
        shutil.rmtree(Path(str(state_dir) + suffix), ignore_errors=True)


def _damaged(path: Path, error: Exception) -> UserError:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UserError(f"the resume state {path} is damaged ({first}); delete "
                     f"{path if path.is_dir() else path.parent} and start again without --resume")


def _rng_state() -> dict[str, Any]:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(words), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())

"""One training run per output folder at a time.

Two `grpo train` in one project would write the same rollouts, resume state, final model and
metrics, the last writer winning. A run therefore holds an exclusive `flock` on
`<train.output_dir>/.lock` while it runs; a second run stops at once with one line naming the
holder. The kernel drops the lock when its process ends, however it ends (SIGKILL included), so
a lock left by a dead run is simply taken over: there is no stale lock to clean. The training
flow itself holds it, so a scheduled run (`grpo serve`) that meets a running one stops at once
with that line instead of interleaving with it; scheduled runs of one `grpo serve` queue behind
each other (its runner runs one flow at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from grpo_core.errors import UserError


_HELD: set[Path] = set()  # the locks this process holds: taking one again is a no-op


@contextlib.contextmanager
def run_lock(out_dir: str | Path, what: str):
    """Hold the output folder's lock inside the block; `what` says who holds it (the
    command line), for the message another run gets. Re-entrant within a process: the
    `grpo` command takes it before its Prefect server starts, the training flow (however it
    was started: the command, a served deployment) takes it again."""
    path = (Path(out_dir) / ".lock").resolve()
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir} is in use by another run ({_holder(path)}); wait for it "
                            f"to end, or give this run another train.output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": what}))
        handle.flush()
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)
            handle.truncate(0)  # the lock itself goes with the descriptor


def _holder(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return f"pid {who['pid']}, since {who['since']}: {who['command']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"

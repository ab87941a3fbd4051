"""What a person watches while a run goes: the wall-clock budget, the progress bar and the
headline numbers printed at the end."""

from __future__ import annotations

import contextlib
import time

from grpo_core.parallel import distributed


class Budget:
    """A wall-clock budget in minutes (None: unlimited), counted from this process's start
    of training (a resumed run gets a fresh budget)."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@contextlib.contextmanager
def progress(start_iteration: int, total: int):
    """A tqdm bar over iterations with the ETA and the latest reward (rank 0 only)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start_iteration - 1, desc="GRPO", unit="it",
               dynamic_ncols=True, disable=not distributed.is_main())

    class Bar:
        @staticmethod
        def update(metrics: dict[str, float]) -> None:
            bar.set_postfix(reward=f"{metrics.get('reward/total/mean', 0.0):.3f}",
                            len=f"{metrics.get('completion/length_mean', 0.0):.0f}")
            bar.update(1)

    try:
        yield Bar()
    finally:
        bar.close()


def headline(results: dict) -> dict:
    """The numbers a person looks at first."""
    return {k: round(v, 4) for k, v in results.items() if k.endswith("accuracy") or "_at_" in k}

"""Ctrl-C and SIGTERM for a `grpo` run: each becomes an exception in the main thread, and it
also stays pending, so that it still ends the run when the exception lands inside Prefect's
own machinery and goes no further (a task's state change, an API call on its event-loop
thread): the next task boundary (`flows.run.values.call`) raises it again. Light: the CLI
imports it before anything heavy."""

from __future__ import annotations

import signal
import sys
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stopping) ends a run as Ctrl-C does: the
    MLflow run is marked KILLED and the state stays resumable, instead of the process
    vanishing with its run still RUNNING."""


_PENDING: list[type[KeyboardInterrupt]] = []  # the stops signalled, oldest first


def install() -> None:
    """Ctrl-C and SIGTERM raise (and stay pending) in this process from now on."""
    signal.signal(signal.SIGINT, _stop_with(KeyboardInterrupt))
    signal.signal(signal.SIGTERM, _stop_with(Terminated))
    sys.unraisablehook = _quiet_about_stops(sys.unraisablehook)


def _stop_with(kind: type[KeyboardInterrupt]):
    def handler(signum: int, frame: Any) -> None:
        _PENDING.append(kind)
        raise kind()
    return handler


def _quiet_about_stops(default_hook):
    """A stop that lands in a weakref callback or `__del__` cannot propagate; Python would
    print it as an "Exception ignored" traceback. It is still pending, so the run ends all
    the same: say nothing about it here."""
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _PENDING:
            return
        default_hook(unraisable)
    return hook


def pending() -> bool:
    """Whether Ctrl-C or SIGTERM has asked this process to stop."""
    return bool(_PENDING)


def raise_pending() -> None:
    """Raise the stop a signal asked for, if one did (again, if it was swallowed)."""
    if _PENDING:
        raise _PENDING[-1]()


def is_termination(exc: BaseException | None) -> bool:
    """Our SIGTERM, or Prefect's (inside a flow run Prefect turns SIGTERM into its own
    TerminationSignal); prefect is looked up, not imported, to keep `grpo --help` fast."""
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    return isinstance(exc, Terminated) or (
        prefect_exceptions is not None
        and isinstance(exc, prefect_exceptions.TerminationSignal))

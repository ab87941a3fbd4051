"""Ctrl-C and SIGTERM stay pending once signalled, so a stop that a library swallowed still
ends the run at the next task boundary (real signals to this process)."""

from __future__ import annotations

import os
import signal

import pytest

from flows import signals


@pytest.fixture
def installed():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    signals._PENDING.clear()
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("sig,kind", [(signal.SIGINT, KeyboardInterrupt),
                                      (signal.SIGTERM, signals.Terminated)])
def test_a_swallowed_stop_is_raised_again_at_the_next_boundary(installed, sig, kind):
    signals.raise_pending()  # nothing signalled: nothing raised
    try:
        os.kill(os.getpid(), sig)  # the handler runs before this returns (main thread)
        pytest.fail("the signal raised nothing")
    except KeyboardInterrupt as exc:  # swallowed here, as Prefect's machinery may do
        assert type(exc) is kind
    with pytest.raises(kind) as again:
        signals.raise_pending()
    assert type(again.value) is kind
    assert signals.is_termination(again.value) == (kind is signals.Terminated)

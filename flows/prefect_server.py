"""The temporary Prefect server of a `grpo` command, tied to the command's lifetime.

Without `PREFECT_API_URL`, Prefect starts a temporary server itself, as a plain child process.
That child shares the terminal's process group, so Ctrl-C kills it first and the run then
spends minutes retrying event delivery to a dead server; and a `grpo` killed with SIGKILL
leaves it running (PPID 1, one more per killed run). The server started here instead runs in
its own session, so a Ctrl-C reaches only `grpo`, which ends its run with the server still up
and stops it after; and the kernel kills it when `grpo` dies, however it dies
(PR_SET_PDEATHSIG, Linux). With `PREFECT_API_URL` set, the user's server is used as is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from grpo_core.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@contextlib.contextmanager
def temporary_server():
    """Inside the block, Prefect talks to a server that lives exactly as long as this process
    needs it (none is started when PREFECT_API_URL is set)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield
        return
    port = _free_port()
    proc = _start(port)
    try:
        api = f"http://127.0.0.1:{port}/api"
        _wait_until_healthy(proc, api)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            try:
                yield
            finally:
                _deliver_pending()
    finally:
        _stop(proc)


def _start(port: int) -> subprocess.Popen:
    import prefect

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    command = [sys.executable, "-m", "uvicorn", "--app-dir",
               str(Path(prefect.__file__).parent.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
               str(port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (a no-op off Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _wait_until_healthy(proc: subprocess.Popen, api: str) -> None:
    import httpx

    limit = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the temporary Prefect server exited at start-up (status "
                            f"{proc.returncode}); set PREFECT_API_URL to use a running server")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise UserError(f"the temporary Prefect server did not start within {limit:g} s "
                    f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _deliver_pending(timeout_s: float = 10.0) -> None:
    """Send the events and logs Prefect still holds while the server is up (after it stops
    they would be retried until exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout_s)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

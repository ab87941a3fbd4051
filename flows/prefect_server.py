"""The temporary Prefect server of a `grpo` command, tied to the command's lifetime.

Without `PREFECT_API_URL`, Prefect starts a temporary server itself, as a plain child process.
That child shares the terminal's process group, so Ctrl-C kills it first and the run then
spends minutes retrying event delivery to a dead server; and a `grpo` killed with SIGKILL
leaves it running (PPID 1, one more per killed run). The server started here instead runs in
its own session, so a Ctrl-C reaches only `grpo`, which ends its run with the server still up
and stops it after; and the kernel kills it when `grpo` dies, however it dies
(PR_SET_PDEATHSIG, Linux). A server that dies mid-run is restarted on its port and database
(a run that finished its training but lost its server used to spend minutes on refused
connections and exit 1 without its results). With `PREFECT_API_URL` set, the user's server
is used as is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from grpo_core.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


RESTARTS = 3  # a server that keeps dying is not worth more


@contextlib.contextmanager
def temporary_server():
    """Inside the block, Prefect talks to a server that lives exactly as long as this process
    needs it (none is started when PREFECT_API_URL is set). If it dies mid-run, it is
    restarted on the same port and database, within the Prefect client's own retries of a
    refused connection (about a minute), so the run goes on and ends with its results."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield
        return
    server = _Watched(_free_port())
    try:
        server.wait_until_healthy()
        with temporary_settings(updates={PREFECT_API_URL: server.api}):
            server.watch()
            try:
                yield
            finally:
                deliver_pending()
    finally:
        server.stop()


class _Watched:
    """The uvicorn process on one port, restarted by a watcher thread when it exits early.
    (The kernel's parent-death signal is tied to the thread that started the process: a
    restarted server dies with the watcher, which lives until `stop`.)"""

    def __init__(self, port: int):
        self.port, self.api = port, f"http://127.0.0.1:{port}/api"
        self.proc, self.restarts = _start(port), 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_until_healthy(self) -> None:
        _wait_until_healthy(self.proc, self.api, self._stopping)

    def watch(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="prefect-server-watch",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc.poll() is not None and self.restarts < RESTARTS:
                self._restart()
        _stop(self.proc)  # from this thread: a restarted server is this thread's child

    def _restart(self) -> None:
        self.restarts += 1
        print(f"warning: the temporary Prefect server stopped (status {self.proc.returncode}); "
              f"restarting it on 127.0.0.1:{self.port} (restart {self.restarts} of "
              f"{RESTARTS})", file=sys.stderr)
        self.proc = _start(self.port)
        with contextlib.suppress(UserError):  # a failed restart leaves the next poll to retry
            self.wait_until_healthy()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        _stop(self.proc)


def _start(port: int) -> subprocess.Popen:
    import prefect

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1", "PREFECT_MEMO_STORE_PATH": str(_memo_store())}
    command = [sys.executable, "-m", "uvicorn", "--app-dir",
               str(Path(prefect.__file__).parent.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
               str(port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _memo_store() -> Path:
    """Where the server remembers that its block types are registered (registering them
    again costs seconds of every start). Prefect's default is ~/.prefect/memo_store.toml
    even when PREFECT_HOME points elsewhere (the Makefile's project-local .prefect), and it
    warns on every start when ~/.prefect is absent; the store belongs beside the database."""
    from prefect.settings import PREFECT_HOME, PREFECT_MEMO_STORE_PATH

    if os.environ.get("PREFECT_MEMO_STORE_PATH"):
        return Path(PREFECT_MEMO_STORE_PATH.value())
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    return home / "memo_store.toml"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (a no-op off Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _wait_until_healthy(proc: subprocess.Popen, api: str, cancel: threading.Event) -> None:
    import httpx

    limit = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not cancel.is_set():
        if proc.poll() is not None:
            raise UserError(f"the temporary Prefect server exited at start-up (status "
                            f"{proc.returncode}); set PREFECT_API_URL to use a running server")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    if cancel.is_set():
        return
    raise UserError(f"the temporary Prefect server did not start within {limit:g} s "
                    f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def deliver_pending(timeout_s: float = 10.0) -> None:
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

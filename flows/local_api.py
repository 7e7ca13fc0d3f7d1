"""A temporary local Prefect API for one CLI command, that dies with the command.

With no ``PREFECT_API_URL`` set, Prefect would start its own temporary server (uvicorn in a child process) and
stop it at exit; a ``kill -9`` of the command skips that and leaves the server (~200 MB) running forever. So the
CLI starts the same server itself, through this module as the child's entry point: the child asks the kernel
for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, Linux) and also polls its parent id once a second
(other systems, and the moment between fork and prctl). It binds to 127.0.0.1 only and uses the caller's
``PREFECT_HOME`` (SQLite), exactly like Prefect's ephemeral mode.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def local_api(timeout_s: float = 120.0, while_starting: Callable[[], object] | None = None) -> Iterator[str]:
    """Start the child server, wait until it answers and point Prefect at it for the block's duration.
    ``while_starting`` runs while the child boots (the caller's own imports: seconds the server takes anyway).

    The server is stopped at interpreter exit, after Prefect's log and event workers have sent their last
    batches (they drain in ``threading``'s exit hooks, which run before ``atexit``'s)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    port = free_port()
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    # the server's own output (its errors, and the tracebacks of a shutdown that cancels a database call under
    # load) goes to a log in the Prefect home, not onto the command's console, which ends with one line
    log = server_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "macd_ml.flows.local_api", str(os.getpid()), str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    atexit.register(_stop, proc)
    if while_starting is not None:
        while_starting()
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None:
            raise RuntimeError(
                f"the local Prefect server exited with code {proc.returncode} before answering (its log: {log})"
            )
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"the local Prefect server did not answer within {timeout_s:.0f} s (its log: {log})")
        time.sleep(0.1)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def server_log() -> Path:
    """Where the temporary server writes: ``PREFECT_HOME/macd-ml-local-server.log``."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "macd-ml-local-server.log"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def api_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def main(argv: list[str]) -> None:
    parent, port = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    import prefect
    import uvicorn

    sys.path.insert(0, str(prefect.__module_path__.parent))
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

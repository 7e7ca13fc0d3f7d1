"""Ending a command on SIGTERM (``timeout``, systemd's stop, a Kubernetes eviction): at once, in one line, exit 143.

Prefect's flow engine installs its own SIGTERM handler while a flow runs; it waits for the running tasks (minutes
of training), then prints their tracebacks. A command run as a process (not a deployment run, where the worker's
cancellation needs Prefect's handler) therefore puts this handler back at the start of the flow. Nothing is lost
by ending at once: every finished stage is in the cache, every artifact is written atomically (a killed writer
leaves a temp file the next run removes), and the temporary Prefect server follows its parent
(flows/local_api.py). The same command then finishes the run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "MACD_ML_EXIT_ON_SIGTERM"


def _stop(signum: int, frame) -> None:
    print(
        "macd-ml: stopped (SIGTERM); finished stages are cached: run the same command again to finish the run",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)


def install() -> None:
    """For the command's own process (flows/cli): end on SIGTERM, here and inside the flows it runs."""
    if threading.current_thread() is threading.main_thread():
        os.environ[ENV] = "1"
        signal.signal(signal.SIGTERM, _stop)


def inside_flow() -> None:
    """Called first in a flow: put the handler back over Prefect's when the command asked for it."""
    if os.environ.get(ENV) == "1" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)

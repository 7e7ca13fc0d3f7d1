"""Failure logs a person can read: one traceback per failure in the run's log, none on the console.

Prefect logs a failed task's traceback, then the flow's traceback for the same exception again. The flow-run
record is kept (its message names the exception) but loses the repeated traceback when a task already logged
one for an exception of the same type and message. The console handler shows every log line without
tracebacks: the CLI ends a failed run with one line saying what failed and what to do; the full traceback
stays in the run's log (Prefect UI / API).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from macd_ml.tasks.results import route_stage_logs

_seen: deque[tuple[str, str]] = deque(maxlen=256)
_lock = threading.Lock()
_installed = False


def _signature(exc_info) -> tuple[str, str] | None:
    if not exc_info or exc_info is True or exc_info[1] is None:
        return None
    exc = exc_info[1]
    return type(exc).__qualname__, str(exc)


class _RememberTaskTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        sig = _signature(record.exc_info)
        if sig is not None:
            with _lock:
                _seen.append(sig)
        return True


class _DropRepeatedTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        sig = _signature(record.exc_info)
        if sig is not None:
            with _lock:
                repeated = sig in _seen
            if repeated:
                record.exc_info = None
                record.exc_text = None
        return True


class NoTracebackFormatter(logging.Formatter):
    """Formats with an inner formatter, leaving out exception tracebacks and stack info."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def install() -> None:
    """Idempotent; call after Prefect configured its logging (importing prefect does)."""
    global _installed
    if _installed:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    route_stage_logs()

    logging.getLogger("prefect.task_runs").addFilter(_RememberTaskTracebacks())
    logging.getLogger("prefect.flow_runs").addFilter(_DropRepeatedTraceback())
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, NoTracebackFormatter):
                handler.setFormatter(NoTracebackFormatter(handler.formatter))
    _installed = True

"""Cache keys and retry policy shared by every task (docs/operations.md, "Caching, failures and re-running
what failed").

:class:`ContentKey` is Prefect's extension point (``CachePolicy.compute_key``) and the one place a cache key is
made: stage name + the code version of the task's module and every project module it imports
(:func:`macd_ml.artifacts.codehash.code_version`, derived from the source, never hand-bumped) + the task's
parameters reduced to content (an ``ArtifactRef`` counts by its sha256, an object with ``cache_token()`` by that
token, a pydantic config slice by its JSON). ``TASK_SOURCE`` alone is not used (it can collide, Prefect issue
#23062). A task body that names a cache folder uses the same key, :func:`current_key`.

Retries: only ``OSError`` (permission, transient I/O, disk full) is retried, with exponential backoff and
jitter; bad input (:class:`DataError`, :class:`ConfigError`) and integrity failures never are.
"""

from __future__ import annotations

import contextvars
import inspect
import os
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.tasks import exponential_backoff

from macd_ml.artifacts.codehash import code_version
from macd_ml.errors import ConfigError, DataError
from macd_ml.tasks.keys import make_key  # (re-exported: the one way a key is made)

WRITE_RETRIES = 3
# seconds before Prefect's first task retry (then doubling); MACD_ML_RETRY_BACKOFF_S shortens it in tests
RETRY_DELAYS = exponential_backoff(backoff_factor=float(os.environ.get("MACD_ML_RETRY_BACKOFF_S", "1")))
RETRY_JITTER = 0.5


def task_code_version(fn: Any) -> str:
    """Code version of the module that defines a task's body (wrappers unwrapped)."""
    return code_version(inspect.unwrap(fn).__module__)


@dataclass
class ContentKey(CachePolicy):
    """Key = stage + derived code version + inputs by content; ``exclude`` names inputs that are not content
    (a run id, wall-clock timings)."""

    exclude: tuple[str, ...] = ()

    def inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k not in self.exclude}

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        task = task_ctx.task
        return make_key(task.name, task_code_version(task.fn), self.inputs(inputs))


# the key of a stage run directly (tasks/stages.py: ``Stages.direct``), made the way Prefect makes it
_direct_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("macd_ml_stage_key", default=None)


def direct_key(task: Any, args: tuple, kwargs: dict) -> str:
    """The cache key Prefect's policy gives ``task`` for these arguments, computed without Prefect's engine."""
    bound = inspect.signature(inspect.unwrap(task.fn)).bind(*args, **kwargs)
    bound.apply_defaults()
    key = task.cache_policy.compute_key(_TaskContext(task), dict(bound.arguments), {})
    return key or f"{task.name}-uncached"


@dataclass
class _TaskContext:
    task: Any


def run_direct(task: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a stage's function outside Prefect, with the cache key (so the folders) Prefect would give it."""
    token = _direct_key.set(direct_key(task, args, kwargs))
    try:
        return inspect.unwrap(task.fn)(*args, **kwargs)
    finally:
        _direct_key.reset(token)


def current_key() -> str:
    """Inside a stage: the cache key of this run of it (names its cache folder): Prefect's, or the direct one."""
    from prefect.transactions import get_transaction

    if (key := _direct_key.get()) is not None:
        return key
    txn = get_transaction()
    if txn is None or not txn.key:
        raise RuntimeError(
            "this task run has no cache key: computing it failed (the run's log has the reason), "
            "or current_key() was called outside a cached task"
        )
    return txn.key


def retry_on_oserror(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry OS-level failures, never bad input or a failed check."""
    try:
        state.result(raise_on_failure=True)
    except (DataError, ConfigError):
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False

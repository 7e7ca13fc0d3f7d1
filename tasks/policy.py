"""Cache keys and retry policy shared by every task (DESIGN.md §5).

Cache key = stage name + code version + the task's parameters reduced to content: an ``ArtifactRef`` counts by
its sha256, a :class:`MarketRef` by its fingerprint, a pydantic config slice by its JSON. ``TASK_SOURCE`` alone
is not used (it can collide, Prefect issue #23062).

Retries: only ``OSError`` (permission, transient I/O, disk full) is retried, with exponential backoff and
jitter; bad input (:class:`DataError`, :class:`ConfigError`) and integrity failures never are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from features import CODE_VERSION
from features.errors import ConfigError, DataError
from tasks.store import ArtifactRef

WRITE_RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=1)
RETRY_JITTER = 0.5


def _canonical(value: Any) -> Any:
    if isinstance(value, ArtifactRef):
        return {"sha256": value.sha256}
    token = getattr(value, "cache_token", None)
    if callable(token):
        return token()
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def content_key(stage: str, code_version: str = CODE_VERSION):
    """A Prefect ``cache_key_fn`` keyed on the content of the task's inputs."""

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        blob = json.dumps({"stage": stage, "code": code_version, "params": _canonical(parameters)}, sort_keys=True)
        return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"

    key_fn.__name__ = f"content_key_{stage}"
    return key_fn


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

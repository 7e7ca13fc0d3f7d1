"""How a cache key is made from content, with no Prefect: the stages' keys (tasks/policy.py) and the stored
inputs' keys (tasks/candles.py, tasks/table.py) alike. A value counts by its content: an ``ArtifactRef`` by its
sha256, an object with ``cache_token()`` by that token, a pydantic model field by field."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel

from macd_ml.artifacts.store import ArtifactRef


def canonical(value: Any) -> Any:
    """A value reduced to what its content is: JSON-able and independent of paths, times and object identity."""
    if isinstance(value, ArtifactRef):
        return {"sha256": value.sha256}
    token = getattr(value, "cache_token", None)
    if callable(token):
        return canonical(token())
    if isinstance(value, BaseModel):  # field by field, so nested references count by their content too
        return {name: canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy scalars (np.int64 is no int, np.bool_ no bool)
    if callable(item) and getattr(value, "shape", None) == ():
        return canonical(item())
    raise TypeError(f"{type(value).__name__} has no content form for a cache key (give it cache_token())")


def make_key(stage: str, code: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "code": code, "params": canonical(params)}, sort_keys=True)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"

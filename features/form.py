"""How an optional config field appears in the Prefect UI's run form.

Prefect renders a ``X | None`` field as a type toggle (X or null) that a user must flip before typing a value.
:func:`optional` keeps the Python type ``X | None`` but gives the form the plain schema of ``X`` with no
default: the field is an ordinary input, and leaving it empty (omitted, ``null`` or ``""``) means None.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(inner: Any, schema: dict[str, Any]) -> Any:
    """``Annotated[inner | None, ...]`` shown in the form as ``schema`` (e.g. ``{"type": "integer"}``).
    ``inner`` carries the constraints pydantic enforces (e.g. ``Annotated[int, Field(ge=1)]``)."""
    return Annotated[inner | None, WithJsonSchema(schema), BeforeValidator(_blank_is_none)]


def optional_field(description: str) -> Any:
    """The ``Field`` for an :func:`optional` field: default None, described, no ``default: null`` in the form."""
    return Field(default=None, description=description, json_schema_extra=_drop_default)


OptionalPositiveInt = optional(Annotated[int, Field(ge=1)], {"type": "integer", "minimum": 1})
OptionalRows = optional(Annotated[int, Field(ge=100)], {"type": "integer", "minimum": 100})
OptionalTime = optional(datetime, {"type": "string", "format": "date-time"})

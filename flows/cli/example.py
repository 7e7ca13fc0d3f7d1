"""``config.example.toml`` rendered from the config model: every key at its default, with its description
(``macd-ml config example``; flows/cli/reference.py writes it into the repository)."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Literal, get_args, get_origin

WIDTH = 100
REGENERATE = "python -m macd_ml.flows.cli.reference"


# --------------------------------------------------------------------------------------------- config.example.toml


def example_toml() -> str:
    """config.example.toml: every section and key of the pipeline config at its default, with its description."""
    from macd_ml.flows.config import RetrainConfig

    lines = [
        "# The macd-ml pipeline config: every key at its default, with what it means (flows/config.py).",
        "#",
        "#   macd-ml retrain --config config.example.toml            # flags override the file, --set KEY=VALUE both",
        "#   macd-ml config show --config config.example.toml        # the config a retrain would run, as JSON",
        "#",
        "# Keep only the keys you change. A key shown commented out is unset by default (TOML has no null).",
        f"# Generated: `macd-ml config example` (or `{REGENERATE}`); do not edit by hand.",
    ]
    _table(lines, RetrainConfig(), [])
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return ["# " + ln for ln in textwrap.wrap(" ".join(text.split()), WIDTH - 2)]


def _choices(annotation: Any) -> tuple | None:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        found = _choices(arg)
        if found:
            return found
    return None


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r} in the example config")


def _table(lines: list[str], model: Any, path: list[str], comments: bool = True) -> None:
    """The keys of ``model`` (a pydantic model instance) first, then its arrays of tables, then its tables: a TOML
    key after a table header would belong to that table. ``comments``: each key's description above it."""
    from pydantic import BaseModel

    fields = type(model).model_fields
    keys, arrays, tables = [], [], []
    for name in fields:
        v = getattr(model, name)
        if isinstance(v, BaseModel):
            tables.append(name)
        elif isinstance(v, list) and v and all(isinstance(x, BaseModel) for x in v):
            arrays.append(name)
        else:
            keys.append(name)
    for name in keys:
        field, v = fields[name], getattr(model, name)
        text = field.description or ""
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        items = extra.get("items")
        listed = items.get("enum") if isinstance(items, dict) else None
        choices = _choices(field.annotation) or (tuple(listed) if isinstance(listed, list) else None)
        if choices:
            text += f" [{' | '.join(map(str, choices))}]"
        lines += ["", *_comment(text)] if comments else []
        lines.append(f"# {name} = (unset)" if v is None else f"{name} = {_value(v)}")
    for name in arrays:
        dotted = ".".join([*path, name])
        lines += ["", *_comment(fields[name].description or "")]
        for i, item in enumerate(getattr(model, name)):
            lines += ["", f"[[{dotted}]]"]
            _table(lines, item, [*path, name], comments=i == 0)  # the keys are the same in every entry
    for name in tables:
        dotted = ".".join([*path, name])
        lines += ["", "", *_comment(fields[name].description or ""), f"[{dotted}]"]
        _table(lines, getattr(model, name), [*path, name])

"""Reference files rendered from the code, so that they cannot drift from it (tests/test_cli.py compares them):

- ``docs/cli.md``: every command's ``--help``, under the groups of ``macd-ml --help`` (``cli_markdown``);
- ``config.example.toml``: every config key at its default, each with its description (``example_toml``; also
  ``macd-ml config example``).

Regenerate both from the repository root::

    python -m macd_ml.flows.cli.reference
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

# Help is rendered at a fixed width here, whatever the terminal, so that the committed file is reproducible.
WIDTH = 100
REGENERATE = "python -m macd_ml.flows.cli.reference"


# --------------------------------------------------------------------------------------------- docs/cli.md


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    from macd_ml.flows.cli.common import Formatter

    parser.formatter_class = functools.partial(Formatter, width=WIDTH)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fixed_width(sub)


def _help_block(parser: argparse.ArgumentParser) -> list[str]:
    return ["```text", parser.format_help().rstrip(), "```", ""]


def cli_markdown() -> str:
    """docs/cli.md: ``macd-ml --help``, then each command's help under its group."""
    from macd_ml.flows.cli import build_parser, subcommands
    from macd_ml.flows.cli.common import GROUPS

    parser = build_parser()
    _fixed_width(parser)
    sub = subcommands(parser)
    lines = [
        "# Command reference",
        "",
        f"<!-- Generated from the parser (flows/cli/) by `{REGENERATE}`; do not edit by hand: "
        "tests/test_cli.py fails when this file and the parser differ. -->",
        "",
        "Every command is `macd-ml NAME` (the groups below are how `macd-ml --help` lists them, not part of the "
        "command). One meaning per flag: `--out DIR` is always the pipeline's output folder OUT; `--to` names "
        "what a command writes (a file, a candle folder, a publishing destination); `--into DIR` the folder a "
        "stage re-run writes into; `--from` where a command reads. Exit codes: 0 done, 1 failed, 2 bad input or "
        "config (one line), 3 refused.",
        "",
        "Renamed flags keep their old spelling as a hidden alias that prints one warning line: `--out` of "
        "`features`, `synth`, `bundle`, `fetch` is now `--to`; `--out` of `stack`, `report`, `export-onnx` is now "
        "`--into`; `backtest --from/--to/--json FILE` are now `--since/--until/--result FILE`.",
        "",
        "## `macd-ml --help`",
        "",
        *_help_block(parser),
    ]
    for group, blurb in GROUPS:
        lines += [f"## {group}", "", blurb[0].upper() + blurb[1:] + ".", ""]
        for name, cmd in sub.choices.items():
            if getattr(cmd, "group", None) != group:
                continue
            lines += [f"### `macd-ml {name}`", "", *_help_block(cmd)]
            for action in cmd._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for what, nested in action.choices.items():
                        lines += [f"#### `macd-ml {name} {what}`", "", *_help_block(nested)]
    return "\n".join(lines).rstrip() + "\n"


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
        choices = _choices(field.annotation)
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


# --------------------------------------------------------------------------------------------- writing them


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".")
    for rel, text in (("docs/cli.md", cli_markdown()), ("config.example.toml", example_toml())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

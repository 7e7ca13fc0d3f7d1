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
import sys
from pathlib import Path

# (help is rendered at a fixed width, WIDTH, whatever the terminal, so that the committed file is reproducible)
from macd_ml.flows.cli.example import REGENERATE, WIDTH, example_toml

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

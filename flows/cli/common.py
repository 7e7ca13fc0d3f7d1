"""What every subcommand shares: exit codes, the parser (one-line usage errors, renamed flags, help groups), the
config options, one-line messages.

One meaning per flag, in every command: ``--out DIR`` is the pipeline's output folder (OUT); ``--to FILE|DIR`` is
what a command writes (a table, a bundle, a candle folder, a publishing destination); ``--into DIR`` is where a
stage re-run writes; ``--from`` is where a command reads; ``--since``/``--until`` bound a span of bars;
``--json`` prints JSON instead of a table. A flag renamed for this keeps its old spelling as a hidden alias that
warns (``renamed``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATE = 0, 1, 2, 3

# How ``macd-ml --help`` lists the commands (presentation only: every command stays ``macd-ml NAME``).
GROUPS = (
    ("train", "build run folders, finish failed runs, re-run a stage of a run"),
    ("ship", "pack a run into a signed bundle and publish it to the bots"),
    ("bot", "what a bot runs with a bundle, and how the gate did"),
    ("ops", "the pipeline as a service, and its config"),
    ("data", "candles and features, without Prefect"),
)
GROUP_NAMES = tuple(g for g, _ in GROUPS)


class Formatter(argparse.HelpFormatter):
    """Help text wrapped between words only: never inside ``--force-promote``, ``export-onnx`` or a long path."""

    def _wrap(self, text: str, width: int, indent: str = "") -> list[str]:
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(
            text,
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return self._wrap(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(self._wrap(text, width, indent))


class Parser(argparse.ArgumentParser):
    """argparse for every macd-ml command: help wrapped between words (``Formatter``), a usage error in one line
    (exit 2) like every other bad input, and a renamed flag's old spelling (``renamed``) satisfying a required
    flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        finally:  # an old spelling waives its new flag's requirement for one parse only
            for action in self._actions:
                if isinstance(action, _OldSpelling):
                    action.new.required = action.new_required


class _OldSpelling(argparse.Action):
    """The old spelling of a renamed flag: stores into the new flag's dest, says so in one line on stderr."""

    def __init__(self, option_strings, dest, new: argparse.Action, why: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.new_required, self.why = new, new.required, why

    def __call__(self, parser, namespace, values, option_string=None):
        preferred = self.new.option_strings[0]
        print(
            f"{parser.prog}: warning: {option_string} is deprecated here, use {preferred} {self.new.metavar} "
            f"({self.why})",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)
        self.new.required = False


OUT_MEANS_OUT = "--out now means only the pipeline's output folder OUT"
SPAN_IS_SINCE_UNTIL = "--from/--to name where a command reads and writes; a span of bars is --since/--until"


def renamed(p: argparse.ArgumentParser, new: str, old: str, why: str = OUT_MEANS_OUT, **kwargs) -> argparse.Action:
    """Add flag ``new``; its former spelling ``old`` keeps working, hidden from help, with a one-line warning on
    stderr saying ``why`` it was renamed."""
    action = p.add_argument(new, **kwargs)
    same: dict[str, Any] = {"type": kwargs["type"]} if "type" in kwargs else {}
    p.add_argument(
        old,
        **same,
        dest=action.dest,
        metavar=action.metavar,
        default=argparse.SUPPRESS,
        action=_OldSpelling,
        new=action,
        why=why,
        help=argparse.SUPPRESS,
    )
    return action


def add_out_arg(p: argparse.ArgumentParser, help: str = "the pipeline's output folder OUT (default: out)") -> None:
    """``--out DIR``: the only meaning of ``--out`` in every command."""
    p.add_argument("--out", metavar="DIR", help=help)


def symbols(text: str) -> list[str]:
    """``--cross A,B`` and ``--symbols A,B,C``: comma list, upper-cased."""
    return [t.strip().upper() for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (``--last -1`` is refused with exit 2, naming the value)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def iso_time(text: str) -> str:
    """argparse type: an ISO time (``2024-06-01``, ``2024-06-01T12:00Z``); the text itself is passed on."""
    from datetime import datetime

    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time (e.g. 2024-06-01 or 2024-06-01T12:00Z)"
        ) from None
    return text


def command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, func, group: str
) -> argparse.ArgumentParser:
    """A subcommand: its one-line summary (in ``macd-ml --help``, under its ``group`` of ``GROUPS``), its
    description (in its own ``--help``) and the function that runs it."""
    if group not in GROUP_NAMES:
        raise ValueError(f"{name}: group {group!r} is not one of {GROUP_NAMES}")
    p = sub.add_parser(name, help=summary, description=description)
    p.group = group
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="pipeline config, JSON or TOML (keys as in flows/config.py)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config key, dotted (e.g. folds.n_folds=3, horizons=[5,12]); repeatable",
    )


def add_market_args(p: argparse.ArgumentParser, data_help: str, target_default: str | None = None) -> None:
    p.add_argument("--data", metavar="DIR", help=data_help, required=target_default is not None)
    p.add_argument(
        "--target",
        metavar="SYMBOL",
        default=target_default,
        help=f"symbol to predict (default {target_default or 'ETHUSDT'})",
    )
    p.add_argument(
        "--cross", metavar="A,B", type=symbols, help="reference symbols (default BTCUSDT when present; 'none' for none)"
    )


def config_from(args: argparse.Namespace, **fields: Any):
    """The one pipeline config: --config FILE < CLI flags < --set overrides, validated once."""
    from macd_ml.flows.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [], **fields)

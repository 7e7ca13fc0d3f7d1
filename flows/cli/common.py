"""What every subcommand shares: exit codes, the config options, one-line messages."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATE = 0, 1, 2, 3


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


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an error: the CLI promises one line per failure."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, func
) -> argparse.ArgumentParser:
    """A subcommand: its one-line summary (in ``macd-ml --help``), its description (in its own ``--help``) and
    the function that runs it."""
    p = sub.add_parser(name, help=summary, description=description)
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

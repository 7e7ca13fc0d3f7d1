"""``macd-ml``: the command line (docs/data.md, "Running on your own candles" and the sections after it), one
module per group of subcommands.

Exit codes: 0 success; 2 bad input or config (one line naming the file, row or key); 3 refused (nothing may
ship, or the health gate refused promotion); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

from macd_ml.artifacts.store import IntegrityError
from macd_ml.errors import BundleError, ConfigError, DataError, Refused
from macd_ml.flows.cli import backtest, data, run, serve, serving, stages
from macd_ml.flows.cli.common import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_GATE, one_line

COMMANDS = (run, stages, serving, backtest, serve, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="macd-ml", description="Nightly retraining pipeline for the MACD bot's ML gate."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command as its own process: SIGTERM ends it at once (flows/stop.py)
        from macd_ml.flows import stop

        stop.install()
    # The local Prefect server must not try to phone home from a machine without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except (DataError, ConfigError) as exc:
        print(f"macd-ml: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BundleError as exc:  # a tampered, incomplete or unsafe bundle is refused
        print(f"macd-ml: refused: {one_line(exc)}", file=sys.stderr)
        return EXIT_GATE
    except Refused as exc:
        print(f"macd-ml: refused: {one_line(exc)}", file=sys.stderr)
        return EXIT_GATE
    except IntegrityError as exc:  # a run folder changed after it was written, or signed with another key
        print(
            f"macd-ml: refused: {one_line(exc)}; do not use this run: the same `macd-ml retrain` rebuilds it "
            "(finished stages come from the cache; the damaged folder is quarantined), or restore it from a copy",
            file=sys.stderr,
        )
        return EXIT_GATE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything else: one line plus where to look
        print(f"macd-ml: failed: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        if os.environ.get("MACD_ML_DEBUG"):
            raise
        return EXIT_ERROR

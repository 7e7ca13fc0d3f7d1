"""``macd-ml``: the command line (docs/cli.md, docs/data.md), one module
per family of subcommands; docs/cli.md is every command's help, grouped (``python -m macd_ml.flows.cli.reference``
writes it).

Commands (``macd-ml --help`` lists them under these groups; each is still ``macd-ml NAME``):

- train: ``retrain [--data DIR] [--out DIR]``, ``resume RUN_ID [--out DIR]``, ``walkforward --every 30d --since T``,
  ``fleet --targets A,B,C`` (flows/cli/many.py), and stage re-runs on a published run
  folder, written elsewhere: ``stack|report|export-onnx RUN_DIR --into DIR``, ``health RUN_DIR [--json]``;
- ship: ``bundle RUN_DIR --to FILE``, ``keys``, ``publish BUNDLE --to DEST`` (``--refresh``), ``rollback --to DEST``;
- bot: ``fetch --from DEST --to FILE``, ``predict|shadow --bundle FILE --data DIR``, ``shadow-report --logs ...``,
  ``backtest RUN_DIR|BUNDLE --data DIR [--since T] [--until T] [--result FILE]``;
- ops: ``serve``, ``config show|schema|example``;
- data: ``synth --to DIR``, ``features --data DIR --to FILE``.

One meaning per flag (flows/cli/common.py): ``--out DIR`` is always the pipeline's output folder OUT; ``--to`` what
a command writes; ``--into DIR`` a stage re-run's folder. Flags renamed for that keep their old spelling as a
hidden alias that prints one warning line: ``--out`` of features, synth, bundle, fetch (now ``--to``) and of
stack, report, export-onnx (now ``--into``); backtest's ``--from``/``--to``/``--json FILE`` (now ``--since``/
``--until``/``--result``).

Exit codes: 0 success; 2 bad input or config (one line naming the file, row or key; a usage error is one line
too); 3 refused (nothing may ship, or the health gate refused promotion); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

import macd_ml
from macd_ml.artifacts.store import IntegrityError
from macd_ml.errors import BundleError, ConfigError, DataError, Refused, one_line
from macd_ml.flows.cli import backtest, config, data, many, run, serve, serving, stages
from macd_ml.flows.cli.common import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_GATE, GROUPS, Parser

COMMANDS = (run, many, stages, serving, backtest, serve, config, data)

EPILOG = (
    "`macd-ml COMMAND --help` shows a command's options (docs/cli.md has them all). --out DIR always names the "
    "pipeline's output folder OUT; --to is what a command writes, --into DIR where a stage re-run writes. Exit "
    "codes: 0 done, 1 failed, 2 bad input or config, 3 refused."
)


class TopParser(Parser):
    """``macd-ml --help``: the commands under their groups (common.GROUPS) instead of one flat list."""

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        sub = subcommands(self)
        for group, blurb in GROUPS:
            formatter.start_section(f"{group} ({blurb})")
            formatter.add_arguments([c for c in sub._choices_actions if sub.choices[c.dest].group == group])
            formatter.end_section()
        for action_group in self._action_groups:
            actions = [a for a in action_group._group_actions if a is not sub]
            if actions:
                formatter.start_section(action_group.title)
                formatter.add_arguments(actions)
                formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown argument is reported by the command it was given to (its usage hint)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser: argparse.ArgumentParser = self
            while (action := _subparsers(parser)) is not None and getattr(parsed, action.dest, None):
                parser = action.choices[getattr(parsed, action.dest)]
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's subcommands action (name -> parser in ``.choices``)."""
    action = _subparsers(parser)
    assert action is not None, parser.prog
    return action


def version() -> str:
    """The installed distribution's version (``macd_ml.__version__``, from importlib.metadata)."""
    # a copy of the package without its __init__.py (a namespace package: some tests run one) has none
    return getattr(macd_ml, "__version__", "0+unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = TopParser(
        prog="macd-ml", description="Nightly retraining pipeline for the MACD bot's ML gate.", epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"macd-ml {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
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

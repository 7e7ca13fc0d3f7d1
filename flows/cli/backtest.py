"""``backtest``: the bot's MACD strategy, always and gated by a run's probabilities, on a span it never trained on;
``--chain OUT`` stitches every promoted run (serving/backtest.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from macd_ml.flows.cli.common import EXIT_OK, SPAN_IS_SINCE_UNTIL, command, iso_time, renamed


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "backtest",
        "MACD strategy with and without the ML gate on bars a run never trained on",
        "Score the span with the run's ensemble.onnx from raw candles, then trade MACD(12,26,9) crossovers "
        "always and only when the calibrated probability clears the run's threshold (chosen on its OOF rows): "
        "trades, hit rate, returns, Sharpe with bootstrap intervals, drawdown, exposure, turnover. A span that "
        "starts before the run's holdout is refused (exit 3). --chain OUT replays every promoted run in order.",
        backtest,
        group="bot",
    )
    p.add_argument("run", metavar="RUN_DIR|BUNDLE", nargs="?", help="a run folder or a bundle .tar.gz")
    p.add_argument("--chain", metavar="OUT", help="every promoted run in OUT/runs, each until the next one's data")
    p.add_argument("--data", metavar="DIR", required=True, help="candle folder (the run's target and cross)")
    renamed(
        p,
        "--since",
        "--from",
        why=SPAN_IS_SINCE_UNTIL,
        dest="first",
        metavar="T",
        type=iso_time,
        help="first bar (ISO time, UTC); default the holdout start",
    )
    renamed(
        p,
        "--until",
        "--to",
        why=SPAN_IS_SINCE_UNTIL,
        dest="last",
        metavar="T",
        type=iso_time,
        help="last bar (ISO time, UTC); default the newest bar",
    )
    renamed(
        p,
        "--result",
        "--json",
        why="--json means print JSON instead of a table",
        metavar="FILE",
        help="also write the full result as JSON (equity curves included) to this file",
    )
    p.add_argument("--plot", metavar="PNG", help="write the equity curves to this PNG")
    from macd_ml.flows.cli.serving import add_trust_args

    add_trust_args(p)


def backtest(args: argparse.Namespace) -> int:
    from macd_ml.errors import ConfigError
    from macd_ml.serving.backtest import Source, backtest_span
    from macd_ml.serving.track_record import backtest_chain

    if bool(args.run) == bool(args.chain):
        raise ConfigError("give either RUN_DIR|BUNDLE or --chain OUT")
    if args.chain:
        if args.first:
            raise ConfigError("--since does not apply to --chain (each run starts after its own data)")
        result = backtest_chain(args.chain, args.data, args.last)
    else:
        from macd_ml.flows.cli.serving import trust_from

        result = backtest_span(Source.load(args.run, trust_from(args)), args.data, args.first, args.last)
    if args.plot:
        from macd_ml.models.evaluation.plots import plot_equity

        plot_equity(Path(args.plot), result["timestamps"], result["equity"], result)
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    print(table(result))
    return EXIT_OK


def table(result: dict) -> str:
    from macd_ml.models.evaluation.report import _backtest_section

    head = [f"backtest {result['first'][:16]} .. {result['last'][:16]} UTC, {result['bars']} bars"]
    for seg in result.get("segments", []):
        head.append(
            f"  run {seg['run_id']}: {seg['first'][:16]} .. {seg['last'][:16]} ({seg['bars']} bars), "
            f"threshold {seg['threshold']:.2f}"
        )
    return "\n".join(head + _backtest_section(result)[2:])

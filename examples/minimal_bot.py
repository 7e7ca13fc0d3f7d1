"""A bot you can copy: each hour, score the candle that just closed and decide its MACD trade with the bundle's
trade gate (docs/examples.md).

    python examples/minimal_bot.py --bundle bundle.tar.gz --data candles/ --log shadow.jsonl [--now T] [--once]

Every hour, a few seconds after the candle closes:

1. ``fetch_candles``: the newest candles of the bundle's target and cross symbols (here from a candle folder,
   docs/data.md; replace it with your exchange's call);
2. ``Scorer.score(..., now=now)``: the bundle scores the newest closed candle; the candle still forming is
   dropped (``scorer.last_dropped``);
3. ``decide``: the MACD crossover at that close (``bar.gate["signal"]``) and the trade gate's answer (take,
   size); without an ML answer the policy ``NO_ML_ANSWER`` decides;
4. the shadow line (the same JSON as ``macd-ml shadow``) goes to ``--log``, the decision to stdout: place your
   order there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from macd_ml.errors import BundleError, ConfigError, DataError
from macd_ml.features.ingest import find_symbol_file, read_candles
from macd_ml.serving import Scorer
from macd_ml.serving.shadow import error_line, shadow_line

# A bar without an ML answer (the model is past its age, the bar is unlike the training data with fallback on,
# no features after a gap): "skip" does not trade it, "macd" trades the plain MACD rule at full size.
NO_ML_ANSWER = "skip"
CLOSE_DELAY = timedelta(seconds=5)  # after the hourly close, time for the exchange to publish the candle
BAR = timedelta(hours=1)
HISTORY = 1200  # candles fetched per symbol: 800 + the models' lookback at least (docs/bot-contract.md)


def fetch_candles(data_dir: Path, symbols: list[str]) -> dict[str, pl.DataFrame]:
    """The newest candles per symbol (open time, open, high, low, close, volume), the one still forming
    included if the source has it. Replace with your exchange's candles, e.g. Binance's
    GET /api/v3/klines?symbol=ETHUSDT&interval=1h&limit=1000."""
    return {s: read_candles(find_symbol_file(data_dir, s), s).frame.tail(HISTORY) for s in symbols}


def decide(bar) -> dict:
    """The trade at this bar's close: side +1 buy, -1 sell (exit a long, or go short), 0 none; size a fraction
    of your unit position."""
    gate = bar.gate
    if gate["signal"] == 0:
        return {"side": 0, "size": 0.0, "why": "no MACD crossover at this close"}
    if bar.probabilities is None:
        take = NO_ML_ANSWER == "macd"
        why = f"no ML answer ({bar.reason}); NO_ML_ANSWER={NO_ML_ANSWER!r}"
        return {"side": gate["signal"] if take else 0, "size": 1.0 if take else 0.0, "why": why}
    side = gate["signal"] if gate["take"] else 0
    return {"side": side, "size": gate["size"], "why": f"trade gate ({gate['path']}): {gate['reason']}"}


def tick(scorer: Scorer, data_dir: Path, log: Path, now: datetime) -> dict | None:
    """Score the candle that closed last before ``now``, append its shadow line, return the decision (None when
    it could not be scored: the shadow line says why)."""
    now = now.astimezone(timezone.utc)
    due = now.replace(minute=0, second=0, microsecond=0) - BAR  # the open time of the candle that closed last
    t0 = time.perf_counter()
    try:
        candles = fetch_candles(data_dir, [scorer.target, *scorer.cross])
        (bar,) = scorer.score(candles, last=1, now=now)
        for t in scorer.last_dropped:
            print(f"the candle of {t.isoformat()} is still forming: not scored", file=sys.stderr)
        if bar.timestamp != due:
            raise DataError(data_dir, f"the newest closed {scorer.target} candle opened {bar.timestamp}, not {due}")
        line = shadow_line(scorer, bar)
    except Exception as exc:  # noqa: BLE001 - a bot logs the failure and waits for the next candle
        bar, line = None, error_line(scorer, due, exc)
    line["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
    with open(log, "a") as fh:
        fh.write(json.dumps(line) + "\n")
    if bar is None:
        print(f"{due.isoformat()}: not scored: {line['error']['kind']}: {line['error']['message']}", file=sys.stderr)
        return None
    decision = {"time": bar.timestamp.isoformat(), **decide(bar)}
    print(json.dumps(decision), flush=True)  # place your order here
    return decision


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path, help="the bundle (macd-ml fetch gets it)")
    ap.add_argument("--data", required=True, type=Path, help="the candle folder fetch_candles reads")
    ap.add_argument("--log", required=True, type=Path, help="the shadow log this bot appends to")
    ap.add_argument("--now", type=datetime.fromisoformat, help="the time now, ISO 8601 with offset (with --once)")
    ap.add_argument("--once", action="store_true", help="score once and exit")
    args = ap.parse_args(argv)
    if args.now is not None and (not args.once or args.now.tzinfo is None):
        ap.error("--now needs --once and a time zone, e.g. 2024-01-01T05:00:30+00:00")
    try:
        scorer = Scorer.load(args.bundle)
    except (ConfigError, BundleError) as exc:  # no such file (exit 2); refused: unsigned, tampered (exit 3)
        print(exc, file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 3
    if scorer.trade_gate is None:
        print(
            f"{args.bundle}: ships no trade gate (its run had gate.enabled=false); this bot needs one", file=sys.stderr
        )
        return 3
    while True:
        now = (args.now or datetime.now(timezone.utc)).astimezone(timezone.utc)  # the hour boundaries are UTC's
        tick(scorer, args.data, args.log, now)
        if args.once:
            return 0
        next_close = now.replace(minute=0, second=0, microsecond=0) + BAR + CLOSE_DELAY
        time.sleep(max(0.0, (next_close - datetime.now(timezone.utc)).total_seconds()))


if __name__ == "__main__":
    sys.exit(main())

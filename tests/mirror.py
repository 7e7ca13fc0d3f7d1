"""Mirrored futures: the same market up to a bar, and from that bar on every candle reflected in log price about
the last close before it. Each later return changes sign, so every label whose window starts at or after the bar
flips (up <-> down) while the candles stay valid (high >= open, close >= low > 0): a second run on the mirrored
market shows whatever depends on those bars' prices or labels.

Used by the holdout-blindness tests (tests/test_blindness.py): anything fitted, chosen or decided without looking
at the mirrored span must come out byte-identical."""

from __future__ import annotations

from datetime import datetime

import polars as pl


def mirror_from(candles: pl.DataFrame, first: datetime) -> pl.DataFrame:
    """``candles`` (timestamp, open, high, low, close, volume) with every bar at or after ``first`` mirrored:
    ``x -> c**2 / x`` for the prices, where ``c`` is the last close before ``first``; high and low swap roles."""
    before = candles.filter(pl.col("timestamp") < first)
    if before.height == 0:
        raise ValueError(f"no bar before {first}: nothing to mirror about")
    c2 = float(before["close"][-1]) ** 2
    after = pl.col("timestamp") >= first
    return candles.with_columns(
        pl.when(after).then(c2 / pl.col("open")).otherwise(pl.col("open")).alias("open"),
        pl.when(after).then(c2 / pl.col("low")).otherwise(pl.col("high")).alias("high"),
        pl.when(after).then(c2 / pl.col("high")).otherwise(pl.col("low")).alias("low"),
        pl.when(after).then(c2 / pl.col("close")).otherwise(pl.col("close")).alias("close"),
    )


def mirror_market(market: dict[str, pl.DataFrame], first: datetime) -> dict[str, pl.DataFrame]:
    """Every symbol of ``market`` mirrored from ``first`` on (the target and its cross symbols alike)."""
    return {symbol: mirror_from(frame, first) for symbol, frame in market.items()}

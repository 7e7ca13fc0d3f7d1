"""Technical indicators as polars expressions (pure, causal: a value at bar t reads bars <= t only).

Conventions match the common references, so they can be cross-checked against the `ta` package:
- EMA: recursive, seeded with the first value (pandas ``ewm(span=n, adjust=False)``).
- Wilder smoothing (RSI, ATR): recursive with alpha = 1/n.
- True range of the first bar is high - low (no previous close).

Callers apply them per contiguous segment (``.over("segment")``) so no window spans a long gap.
"""

from __future__ import annotations

import polars as pl


def ema(x: pl.Expr, span: int) -> pl.Expr:
    return x.ewm_mean(span=span, adjust=False)


def wilder(x: pl.Expr, n: int) -> pl.Expr:
    return x.ewm_mean(alpha=1.0 / n, adjust=False)


def log_return(close: pl.Expr, window: int) -> pl.Expr:
    return (close / close.shift(window)).log()


def macd_line(close: pl.Expr, fast: int, slow: int) -> pl.Expr:
    return ema(close, fast) - ema(close, slow)


def rsi(close: pl.Expr, n: int) -> pl.Expr:
    """Wilder RSI in [0, 100]; 100 where there were no down moves."""
    diff = close.diff().fill_null(0.0)
    up = wilder(diff.clip(lower_bound=0.0), n)
    down = wilder((-diff).clip(lower_bound=0.0), n)
    return pl.when(down == 0).then(100.0).otherwise(100.0 - 100.0 / (1.0 + up / down))


def true_range(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    prev = close.shift(1)
    return pl.max_horizontal(high - low, (high - prev).abs(), (low - prev).abs())


def atr(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int) -> pl.Expr:
    return wilder(true_range(high, low, close), n)


def zscore(x: pl.Expr, window: int) -> pl.Expr:
    """Rolling z-score; 0 where the window has no spread (avoids inf on flat volume)."""
    mean = x.rolling_mean(window)
    std = x.rolling_std(window)
    return pl.when(std > 0).then((x - mean) / std).otherwise(0.0)

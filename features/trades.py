"""Trade-outcome labels of the bot's MACD trades: "would *this* trade have made money?" (docs/trade-gate.md).

For every MACD signal bar t (side +1 buy, -1 sell, from ``models/evaluation/backtest.py:macd_signals``) the trade
the bot would make on it alone:

- **entry** at the open of bar t + 1 (the decision is made at t's close);
- **exit**, label kind ``exit`` (the bot's own rules, as ``backtest.simulate`` trades them): at the open after
  the first later bar whose signal is the opposite one, or after ``horizon`` bars held, whichever comes first;
- **exit**, label kind ``barrier`` (triple barrier): at the open after the first held bar whose close is
  ``profit_take`` x w above the entry (for the trade's side) or ``stop_loss`` x w below it, where
  ``w = sigma_t * sqrt(horizon)`` is the move a random walk with the volatility of the bars up to t makes over the
  horizon; the horizon itself is the vertical barrier;
- **net return**: ``prod(1 + side * r_k) * (1 - cost)^2 - 1`` over the bars held, ``r_k = open_{k+1} / open_k - 1``
  (hourly open-to-open, exactly the backtest's accounting), ``cost`` per side;
- **label** = net return > 0; null where the exit lies beyond the data.

The label's information ends at the exit bar's open: its span is ``[t, exit time]``, which is what purging and the
embargo measure against (not a fixed h). Pure numpy on arrays; no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.indicators import ema, macd_line

LabelKind = Literal["exit", "barrier"]
VOL_BARS = 72  # bars of hourly log returns behind sigma_t (three days: a regime, not a single spike)


def macd_histogram(close: pl.Series, fast: int, slow: int, signal: int) -> np.ndarray:
    """The MACD line minus its signal line, causal (the indicator code of the features)."""
    f = pl.DataFrame({"close": close.cast(pl.Float64)}).select(macd_line(pl.col("close"), fast, slow).alias("m"))
    return f.select(pl.col("m") - ema(pl.col("m"), signal)).to_series().to_numpy()


def crossings(hist: np.ndarray, warmup: int) -> np.ndarray:
    """+1 where ``hist`` crosses above 0 at bar t, -1 where it crosses below, 0 elsewhere and in the warm-up."""
    prev = np.concatenate([[np.nan], hist[:-1]])
    sig = np.zeros(len(hist), dtype=np.int8)
    sig[(hist > 0) & (prev <= 0)] = 1
    sig[(hist < 0) & (prev >= 0)] = -1
    sig[:warmup] = 0
    return sig


def volatility(close: np.ndarray, bars: int = VOL_BARS) -> np.ndarray:
    """sigma_t: the std of the hourly log returns of the ``bars`` bars up to and including t (NaN before that)."""
    r = np.concatenate([[np.nan], np.diff(np.log(close))])
    s = pl.Series(r).rolling_std(window_size=bars, min_samples=bars).to_numpy()
    return np.asarray(s, dtype=np.float64)


def strength(hist: np.ndarray, close: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """How hard the signal crossed: |histogram| in units of the bar's price volatility (scale-free)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(hist) / (close * sigma)


@dataclass(frozen=True)
class Barrier:
    profit_take: float = 1.0
    stop_loss: float = 1.0


def trade_outcomes(
    timestamps: pl.Series,
    open_: np.ndarray,
    close: np.ndarray,
    signals: np.ndarray,
    horizon: int,
    cost: float,
    kind: LabelKind = "exit",
    barrier: Barrier | None = None,
    sigma: np.ndarray | None = None,
) -> pl.DataFrame:
    """One row per signal bar: ``timestamp`` (the signal bar t), ``side``, ``entry`` and ``exit`` (bar open
    times), ``barrier`` (+1 profit-take, -1 stop-loss, 0 time or opposite signal), ``net_return`` and ``label``
    (Int8, null where the trade would still be open at the end of the data)."""
    n = len(open_)
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    r = np.zeros(n)
    r[:-1] = open_[1:] / open_[:-1] - 1
    barrier = barrier or Barrier()
    if kind == "barrier" and sigma is None:
        sigma = volatility(close)
    rows: dict[str, list] = {k: [] for k in ("t", "side", "entry", "exit", "barrier", "net_return")}
    for t in np.flatnonzero(signals != 0):
        side = int(signals[t])
        e = int(t) + 1
        exit_, hit = None, 0
        width = float(sigma[t]) * np.sqrt(horizon) if kind == "barrier" and sigma is not None else np.nan
        for k in range(int(e), min(int(e) + horizon, n)):  # bar k held; a decision at its close moves at open k + 1
            if kind == "exit" and signals[k] == -side:
                exit_ = k + 1
                break
            if kind == "barrier" and np.isfinite(width):
                move = side * (close[k] / open_[e] - 1)
                if move >= barrier.profit_take * width or move <= -barrier.stop_loss * width:
                    exit_, hit = k + 1, 1 if move > 0 else -1
                    break
        if exit_ is None:
            exit_ = e + horizon
        rows["t"].append(int(t))
        rows["side"].append(side)
        rows["entry"].append(e)
        rows["exit"].append(exit_)
        rows["barrier"].append(hit)
        if exit_ <= n - 1:
            gross = float(np.prod(1 + side * r[e:exit_]))
            rows["net_return"].append(gross * (1 - cost) ** 2 - 1)
        else:
            rows["net_return"].append(None)
    ts = timestamps.to_list()
    last = n - 1
    frame = pl.DataFrame(
        {
            catalog.TIMESTAMP: pl.Series([ts[t] for t in rows["t"]], dtype=timestamps.dtype),
            "side": pl.Series(rows["side"], dtype=pl.Int8),
            "entry": pl.Series([ts[min(e, last)] for e in rows["entry"]], dtype=timestamps.dtype),
            "exit": pl.Series([ts[min(x, last)] if x <= last else None for x in rows["exit"]], dtype=timestamps.dtype),
            "barrier": pl.Series(rows["barrier"], dtype=pl.Int8),
            "net_return": pl.Series(rows["net_return"], dtype=pl.Float64),
        }
    )
    return frame.with_columns(
        pl.when(pl.col("net_return").is_not_null())
        .then((pl.col("net_return") > 0).cast(pl.Int8))
        .otherwise(None)
        .alias("label")
    )

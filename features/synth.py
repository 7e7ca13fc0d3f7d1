"""Deterministic synthetic hourly markets with a weak, learnable planted signal.

Each symbol's 1-bar log return is

    r_i(t) = sigma_i(t) * [ beta_i * f(t) + sqrt(1 - beta_i^2) * e_i(t) ] + mu_i(t)

- volatility clustering: log sigma follows an AR(1) (stochastic volatility), shared in part across symbols;
- fat tails: f and e are Student-t (4 degrees of freedom) scaled to unit variance;
- a common factor f across symbols (crypto's "BTC beta");
- the planted signal (every symbol except the reference): ``mu_i(t) = signal * k * sigma_i(t) *
  (z_ref(t-1) + z_i(t-1))`` where z is a MACD(12, 26, 48) histogram (the MACD line minus its 48-bar EMA) over
  volatility, about unit std: z_ref the reference's (a cross-asset lead only the cross features see fully), z_i the
  symbol's own, taken on its driftless path (a momentum signal its own MACD and return features see). Both are
  persistent over about half a day but their weights on past returns sum to zero, so the drift averages out within
  a few days: no trending regimes, and fold-to-fold swings of the label base rate are those of a random walk, so
  what is learnable is learnable within every fold, at 3,000 h as at 30,000 h. ``signal=0`` gives a driftless
  random walk: the null market.
- optionally (``trade_signal`` > 0) a planted *trade* signal with no direction in it: after each MACD(12, 26, 9)
  crossover of the close, the next ``TRADE_BARS`` bars drift with the signal when it crossed hard (|histogram| over
  price and volatility above ``STRENGTH_SPLIT``, about the median) and against it when it crossed softly. Whether
  a MACD trade pays is then learnable from the signal's strength; the sign of the move is not, on average over bars
  or over signals (the two kinds of crossing are about equally common), and only at crossing bars does anything
  drift. The trade gate's test market (docs/trade-gate.md).

Everything comes from one ``numpy.random.Generator(PCG64(seed))``; the same arguments give the same bytes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog

DEFAULT_SYMBOLS = ("ETHUSDT", "BTCUSDT", "SOLUSDT")
DEFAULT_START = datetime(2022, 1, 1, tzinfo=timezone.utc)
# Drift scale per unit of `signal`, chosen so the planted signal is learnable at every size the tests and
# `make run` use (3,000-12,000 h: tests/test_learnable_sizes.py) while a plain LightGBM's holdout AUC stays in a
# realistic 0.55-0.68 on the 5-24 h horizons at signal=1 (tests/test_synth.py).
SIGNAL_SCALE = 0.12
LEAD_WEIGHT = 1.0
# The planted oscillator: the MACD(12, 26) line minus its own OSC_SPAN-bar EMA, over volatility. OSC_NORM is that
# quantity's std for a unit-volatility random walk, so the oscillator has about unit std.
OSC_SPAN = 48
OSC_NORM = 0.80
TRADE_BARS = 12  # bars after a MACD crossover that the planted trade signal drifts
TRADE_SCALE = 0.12  # that drift per bar, in units of the bar's volatility, per unit of trade_signal
STRENGTH_SPLIT = 0.04  # |MACD histogram| / (close * sigma) at a crossing: about its median on a random walk


class SynthSpec(BaseModel):
    """The generated market used when no data folder is given (``make run``)."""

    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(
        default=list(DEFAULT_SYMBOLS), min_length=1, title="Symbols generated", description="symbols to generate"
    )
    hours: int = Field(default=12_000, ge=2_000, title="Bars per symbol", description="bars per symbol")
    seed: int = Field(default=7, title="Market seed", description="random seed of the generated market")
    signal: float = Field(
        default=1.0,
        ge=0.0,
        title="Planted signal strength",
        description="planted-signal strength; 0 = driftless random walk",
    )
    gaps: int = Field(
        default=2, ge=0, title="Outage gaps per symbol", description="exchange-outage gaps punched into every symbol"
    )
    trade_signal: float = Field(
        default=0.0,
        ge=0.0,
        title="Planted trade signal",
        description="planted trade-outcome signal (no direction in it); 0 = none",
    )


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) via a linear filter (vectorised)."""
    from scipy.signal import lfilter  # imported here: scipy costs ~1 s, and the CLI imports this module

    eps = rng.standard_normal(n) * np.sqrt(1.0 - phi * phi)
    x = lfilter([1.0], [1.0, -phi], eps)
    x[: min(n, 1)] = eps[: min(n, 1)] / np.sqrt(1.0 - phi * phi)
    return x


def _student_t(rng: np.random.Generator, n: int, df: float = 4.0) -> np.ndarray:
    return rng.standard_t(df, n) / np.sqrt(df / (df - 2.0))


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    from scipy.signal import lfilter

    a = 2.0 / (span + 1.0)
    y, _ = lfilter([a], [1.0, -(1.0 - a)], x[1:], zi=[(1.0 - a) * x[0]])
    return np.concatenate([[x[0]], y])


def _oscillator(logp: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """MACD(12, 26, OSC_SPAN) histogram over volatility (about unit std, clipped at ±3), lagged one bar so bar t's
    drift reads bars <= t-1 only. Persistent over about half a day (autocorrelation ~0.75 at 6 h, ~0.4 at 12 h), and
    its weights on past returns sum to zero: a drift proportional to it averages out within a few days."""
    line = _ema(logp, 12) - _ema(logp, 26)
    z = np.clip((line - _ema(line, OSC_SPAN)) / (sigma * OSC_NORM), -3.0, 3.0)
    return np.concatenate([[0.0], z[:-1]])


def _with_trade_signal(r: np.ndarray, sigma: np.ndarray, logp0: float, strength: float) -> np.ndarray:
    """The returns ``r`` with the planted trade signal added (see the module docstring). Sequential: a drift
    moves the price, and so where the next crossover falls."""
    out = r.copy()
    a12, a26, a9 = 2 / 13, 2 / 27, 2 / 10
    logp = logp0
    e12 = e26 = sig = None
    prev_hist = None
    drift_left, drift = 0, 0.0
    for t in range(len(out)):
        if drift_left:
            out[t] += drift * sigma[t]
            drift_left -= 1
        logp += out[t]
        c = float(np.exp(logp))
        e12 = c if e12 is None else e12 + a12 * (c - e12)
        e26 = c if e26 is None else e26 + a26 * (c - e26)
        line = e12 - e26
        sig = line if sig is None else sig + a9 * (line - sig)
        hist = line - sig
        if t >= 26 and prev_hist is not None and ((hist > 0 >= prev_hist) or (hist < 0 <= prev_hist)):
            side = 1.0 if hist > 0 else -1.0
            follow = 1.0 if abs(hist) / (c * sigma[t]) > STRENGTH_SPLIT else -1.0
            drift_left, drift = TRADE_BARS, strength * TRADE_SCALE * side * follow
        prev_hist = hist
    return out


def synth_market(
    symbols: list[str] | tuple[str, ...] = DEFAULT_SYMBOLS,
    hours: int = 20_000,
    seed: int = 7,
    signal: float = 1.0,
    reference: str | None = None,
    gaps: int = 0,
    start: datetime = DEFAULT_START,
    trade_signal: float = 0.0,
) -> dict[str, pl.DataFrame]:
    """Return SYMBOL -> candles (timestamp UTC, open, high, low, close, volume)."""
    symbols = [s.upper() for s in symbols]
    if not symbols or len(set(symbols)) != len(symbols):
        raise ValueError("symbols must be a non-empty list without repeats")
    if hours < 100:
        raise ValueError("hours must be >= 100")
    if signal < 0:
        raise ValueError("signal must be >= 0")
    reference = (reference or ("BTCUSDT" if "BTCUSDT" in symbols else symbols[0])).upper()
    if reference not in symbols:
        raise ValueError(f"reference {reference} is not among the symbols")
    rng = np.random.Generator(np.random.PCG64(seed))
    n = hours
    common_vol = _ar1(rng, n, 0.995)
    factor = _student_t(rng, n)
    order = [reference] + [s for s in symbols if s != reference]
    out: dict[str, pl.DataFrame] = {}
    lead = np.zeros(n)  # the reference's oscillator, lagged (set when the reference is generated, first)
    ts = pl.datetime_range(start, start + timedelta(hours=n - 1), "1h", eager=True, time_unit="us", time_zone="UTC")
    for i, sym in enumerate(order):
        base_vol = 0.006 * (1.0 + 0.25 * i)
        log_sigma = 0.35 * (0.7 * common_vol + 0.3 * _ar1(rng, n, 0.99))
        sigma = base_vol * np.exp(log_sigma - 0.5 * 0.35**2)
        beta = 0.7
        idio = _student_t(rng, n)
        r = sigma * (beta * factor + np.sqrt(max(0.0, 1.0 - beta * beta)) * idio)
        if sym != reference:
            own = _oscillator(np.cumsum(r), sigma)  # on the driftless path: the drift never feeds back on itself
            r = r + signal * SIGNAL_SCALE * sigma * (LEAD_WEIGHT * lead + own)
        if trade_signal > 0:
            r = _with_trade_signal(r, sigma, np.log(100.0 * (1 + i)), trade_signal)
        logp = np.log(100.0 * (1 + i)) + np.cumsum(r)
        if sym == reference:
            lead = _oscillator(logp, sigma)
        close = np.exp(logp)
        open_ = np.exp(np.concatenate([[logp[0] - r[0]], logp[:-1]]) + 0.05 * sigma * rng.standard_normal(n))
        wick_hi = np.abs(rng.standard_normal(n)) * 0.5 * sigma
        wick_lo = np.abs(rng.standard_normal(n)) * 0.5 * sigma
        high = np.maximum(open_, close) * np.exp(wick_hi)
        low = np.minimum(open_, close) * np.exp(-wick_lo)
        volume = 1000.0 * (1 + i) * np.exp(0.4 * rng.standard_normal(n) + 0.3 * np.abs(r) / sigma)
        out[sym] = pl.DataFrame(
            {catalog.TIMESTAMP: ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
        )
    if gaps:
        keep = np.ones(n, dtype=bool)
        for _ in range(gaps):
            length = int(rng.integers(1, 6))
            at = int(rng.integers(n // 10, n - n // 10))
            keep[at : at + length] = False
        mask = pl.Series(keep)
        out = {s: df.filter(mask) for s, df in out.items()}
    return {s: out[s] for s in symbols}


def write_market(market: dict[str, pl.DataFrame], out_dir: Path | str, fmt: str = "csv") -> list[Path]:
    """Write one ``SYMBOL_1h.csv`` (or .parquet) per symbol, each atomically (temp file + fsync + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for sym, df in market.items():
        dest = out_dir / f"{sym}_1h.{fmt}"
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        if fmt == "csv":
            df.with_columns(pl.col(catalog.TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")).write_csv(tmp)
        elif fmt == "parquet":
            df.write_parquet(tmp)
        else:
            raise ValueError("fmt must be csv or parquet")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        paths.append(dest)
    return paths


def shift_volatility(frame: pl.DataFrame, start: datetime, factor: float) -> pl.DataFrame:
    """The same candles with every log return from the bar opening at ``start`` on multiplied by ``factor`` (each
    bar's open, high and low keep their log distance to its close, scaled alike): a market whose volatility regime
    shifts at ``start``, for testing what notices bars unlike the training data."""
    if factor <= 0:
        raise ValueError("factor must be > 0")
    ts = frame[catalog.TIMESTAMP]
    k = np.where((ts >= start).to_numpy(), factor, 1.0)
    close = frame["close"].cast(pl.Float64).to_numpy()
    log_close = np.log(close)
    steps = np.diff(log_close, prepend=log_close[0]) * k
    new_log = log_close[0] + np.cumsum(steps)

    def moved(col: str) -> pl.Series:
        return pl.Series(col, np.exp(new_log + k * (np.log(frame[col].cast(pl.Float64).to_numpy()) - log_close)))

    return frame.with_columns(moved("open"), moved("high"), moved("low"), pl.Series("close", np.exp(new_log)))

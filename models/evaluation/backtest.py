"""Does the ML gate make the MACD bot better? A gated-strategy backtest. Pure numpy; no Prefect.

The bot's strategy: MACD(12, 26, 9) crossovers of the target's close. A crossover decided at the close of bar t
trades at the open of bar t+1 (never at a price the decision could not see). Two ways to take them:

- ``ungated``: every crossover;
- ``gated``: only when the calibrated probability for the signal's direction (``p`` for a buy, ``1 - p`` for a
  sell, at the primary horizon, scored at bar t) is at least a threshold. The threshold is chosen on the OOF rows
  (:func:`choose_threshold`), never on the span it is then evaluated on.

and two position styles: ``long_flat`` (buy signals open a long; a sell signal or ``horizon`` bars close it) and
``long_short`` (sell signals open a short too; an opposite signal closes a position, and opens the opposite one if
that signal is taken). An opposite crossover always closes a position, gated or not: the gate only decides
entries. Costs: ``fee_bps + slippage_bps`` per unit of position traded, at each change of position.

Returns are hourly, open to open: the position held over bar k earns ``pos_k * (open_{k+1} / open_k - 1)``, less
the cost of the change into it. Per variant: trades, hit rate, mean net return per trade, cumulative return,
annualised Sharpe (hourly returns, sqrt(24 * 365)), maximum drawdown, exposure, turnover, and a moving-block
bootstrap interval (blocks of at least the horizon) of the Sharpe and of the gated - ungated difference.

Why hand-written and not vectorbt: vectorbt brings numba, llvmlite, pandas and plotly into the training image for
~100 lines of rules that need a custom exit (after ``horizon`` bars or on the opposite signal, whichever first)
anyway; the rules here are tested against hand-computed cases (tests/test_backtest.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog
from macd_ml.features.trades import crossings, macd_histogram

Mode = Literal["long_flat", "long_short"]
MODES: tuple[Mode, ...] = ("long_flat", "long_short")
HOURS_PER_YEAR = 24 * 365
# A gated MACD strategy on hourly candles with an annualised Sharpe above 5 after costs, or a hit rate of 80 % over
# 20 trades or more, is a leak (prices or labels the decision could not have seen), not an edge: flagged as such.
SUSPECT_SHARPE = 5.0
SUSPECT_HIT_RATE = 0.8


class BacktestSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fee_bps: float = Field(
        default=10.0,
        ge=0,
        title="Fee per side (bps)",
        description="fee per side in basis points (Binance spot taker: 10)",
    )
    slippage_bps: float = Field(
        default=2.0, ge=0, title="Slippage per side (bps)", description="slippage per side in basis points"
    )
    fast: int = Field(default=12, ge=1, title="Strategy MACD fast EMA", description="MACD fast EMA span")
    slow: int = Field(default=26, ge=2, title="Strategy MACD slow EMA", description="MACD slow EMA span")
    signal: int = Field(default=9, ge=1, title="Strategy MACD signal EMA", description="MACD signal EMA span")
    thresholds: list[float] = Field(
        default=[0.5, 0.52, 0.54, 0.56, 0.58, 0.6],
        title="Gate thresholds tried",
        description="gate thresholds tried on the OOF rows (the probability of the signal's direction)",
    )
    min_trade_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        title="Least share of trades kept",
        description="a threshold must keep at least this share of the ungated OOF trades",
    )
    bootstrap: int = Field(
        default=1000, ge=100, title="Bootstrap resamples", description="moving-block bootstrap resamples"
    )
    block_hours: int = Field(
        default=0, ge=0, title="Bootstrap block (hours)", description="bootstrap block length in hours; 0 = max(h, 24)"
    )
    seed: int = Field(default=0, title="Bootstrap seed", description="bootstrap seed")

    @property
    def cost(self) -> float:
        return (self.fee_bps + self.slippage_bps) / 1e4


# --------------------------------------------------------------------------------------------- signals


def macd_signals(close: pl.Series, spec: BacktestSpec) -> np.ndarray:
    """+1 where the MACD line crosses above its signal line at bar t, -1 where it crosses below, else 0. Causal
    (the indicator code of the features: ``features/indicators.py``; the trade labels read the same signals)."""
    return macd_signals_and_histogram(close, spec)[0]


def macd_signals_and_histogram(close: pl.Series, spec: BacktestSpec) -> tuple[np.ndarray, np.ndarray]:
    """The signals of :func:`macd_signals` and the MACD histogram they cross on (the trade gate reads its size)."""
    hist = macd_histogram(close, spec.fast, spec.slow, spec.signal)
    return crossings(hist, spec.slow), hist  # slow: the EMAs' warm-up


def gate(signals: np.ndarray, p: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Whether each signal is taken: its direction's probability clears ``threshold``; no probability, no trade."""
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(p)
    up = np.where(ok, p, 0.0) >= threshold
    down = np.where(ok, 1.0 - p, 0.0) >= threshold
    return ok & (((signals > 0) & up) | ((signals < 0) & down))


# --------------------------------------------------------------------------------------------- simulation


@dataclass
class Run:
    positions: np.ndarray  # held over bar k (from open k to open k+1)
    returns: np.ndarray  # net hourly return of bar k
    trades: list[dict] = field(default_factory=list)  # entry/exit bar index, side, net return


def simulate(
    open_: np.ndarray,
    signals: np.ndarray,
    take: np.ndarray,
    horizon: int,
    mode: Mode,
    cost: float,
    size: np.ndarray | None = None,
) -> Run:
    """The position path and net hourly returns (see the module docstring); flat at the last bar's open.
    ``size`` (optional, per bar in [0, 1]): the fraction of a unit position a trade taken at that bar's signal
    opens (sizing; costs scale with it). Without it every position is one unit."""
    n = len(open_)
    pos = np.zeros(n)
    cur, held, entry = 0.0, 0, -1
    spans: list[tuple[int, int, float]] = []
    for t in range(n - 1):
        if cur != 0:
            held += 1  # bar t was held
        new = cur
        s = int(signals[t])
        if cur != 0 and (s * cur < 0 or held >= horizon):  # opposite signal or time: close
            new = 0.0
        if new == 0 and s != 0 and take[t] and (mode == "long_short" or s > 0) and not (cur * s > 0):
            new = float(s) * (1.0 if size is None else float(size[t]))
        if new != cur:
            if cur != 0:
                spans.append((entry, t + 1, cur))
            if new != 0:
                entry, held = t + 1, 0
        pos[t + 1] = new
        cur = new
    pos[n - 1] = 0.0  # flat at the last open
    if cur != 0:
        spans.append((entry, n - 1, cur))
    r = np.zeros(n)
    r[:-1] = open_[1:] / open_[:-1] - 1
    turnover = np.abs(np.diff(np.concatenate([[0.0], pos])))
    net = pos * r - cost * turnover
    trades = []
    for e, x, held_pos in spans:
        gross = float(np.prod(1 + held_pos * r[e:x]))
        cost_in = cost * abs(held_pos)
        trades.append(
            {
                "entry": e,
                "exit": x,
                "side": int(np.sign(held_pos)),
                "size": abs(held_pos),
                "return": gross * (1 - cost_in) ** 2 - 1,
            }
        )
    return Run(pos, net, trades)


def buy_and_hold(open_: np.ndarray, cost: float) -> Run:
    n = len(open_)
    pos = np.ones(n)
    pos[-1] = 0.0
    r = np.zeros(n)
    r[:-1] = open_[1:] / open_[:-1] - 1
    net = pos * r - cost * np.abs(np.diff(np.concatenate([[0.0], pos])))
    gross = float(np.prod(1 + r[:-1]))
    return Run(pos, net, [{"entry": 0, "exit": n - 1, "side": 1, "return": gross * (1 - cost) ** 2 - 1}])


# --------------------------------------------------------------------------------------------- figures


def sharpe(returns: np.ndarray) -> float:
    sd = float(np.std(returns))
    return 0.0 if sd < 1e-15 else float(np.mean(returns) / sd * math.sqrt(HOURS_PER_YEAR))


def max_drawdown(returns: np.ndarray) -> float:
    equity = np.cumprod(1 + returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return float(-(equity / peak - 1).min()) if len(equity) else 0.0


def summary(run: Run) -> dict:
    rets = np.array([t["return"] for t in run.trades])
    days = max(len(run.returns) / 24, 1e-9)
    return {
        "trades": len(run.trades),
        "hit_rate": float((rets > 0).mean()) if len(rets) else None,
        "mean_trade_return": float(rets.mean()) if len(rets) else None,
        "cumulative_return": float(np.prod(1 + run.returns) - 1),
        "sharpe": sharpe(run.returns),
        "max_drawdown": max_drawdown(run.returns),
        "exposure": float(np.mean(run.positions != 0)),
        "turnover_per_day": float(np.abs(np.diff(np.concatenate([[0.0], run.positions]))).sum() / days),
    }


def block_indices(n: int, block: int, draws: int, seed: int) -> np.ndarray:
    """(draws, n) row indices of a moving-block bootstrap: blocks of ``block`` consecutive hours."""
    rng = np.random.default_rng(seed)
    block = max(1, min(block, n))
    k = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(draws, k))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(draws, -1)
    return idx[:, :n]


def _sharpes(returns: np.ndarray, idx: np.ndarray) -> np.ndarray:
    x = returns[idx]
    sd = x.std(axis=1)
    return np.where(sd > 1e-15, x.mean(axis=1) / np.where(sd > 1e-15, sd, 1) * math.sqrt(HOURS_PER_YEAR), 0.0)


def interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def difference(g: np.ndarray, u: np.ndarray, idx: np.ndarray) -> tuple[dict, np.ndarray]:
    """Hourly returns ``g`` minus ``u`` on the same bars: Sharpe and annual return with moving-block intervals
    (blocks ``idx``, the same for both), and the bootstrap draws of the Sharpe difference."""
    draws = _sharpes(g, idx) - _sharpes(u, idx)
    return {
        "sharpe": sharpe(g) - sharpe(u),
        "sharpe_interval": interval(draws),
        "annual_return": float((g.mean() - u.mean()) * HOURS_PER_YEAR),
        "annual_return_interval": interval((g[idx].mean(axis=1) - u[idx].mean(axis=1)) * HOURS_PER_YEAR),
    }, draws


def too_good(v: dict) -> bool:
    """A variant's figures (``summary``) that no MACD gate earns on hourly crypto: a leak, not an edge."""
    return v["sharpe"] > SUSPECT_SHARPE or (v["trades"] >= 20 and (v["hit_rate"] or 0) >= SUSPECT_HIT_RATE)


# --------------------------------------------------------------------------------------------- evaluation


def bars_with_probability(candles: pl.DataFrame, probs: pl.DataFrame) -> pl.DataFrame:
    """The target's candles (timestamp, open, close) with ``probs`` (timestamp, ``p``, any other per-bar column)
    joined by time; ``p`` is null on bars nothing scored (a gate never takes them)."""
    return candles.select(catalog.TIMESTAMP, "open", "close").join(probs, on=catalog.TIMESTAMP, how="left")


def _span(frame: pl.DataFrame, first, last) -> tuple[int, int]:
    ts = frame[catalog.TIMESTAMP]
    a = int(ts.search_sorted(first, side="left"))
    b = int(ts.search_sorted(last, side="right"))
    return a, b


def choose_threshold(bars: pl.DataFrame, signals: np.ndarray, horizon: int, spec: BacktestSpec, span) -> dict:
    """The gate threshold with the best mean OOF Sharpe of the two gated variants, among thresholds that keep at
    least ``min_trade_share`` of the ungated trades (0.5 if none does). ``bars``/``signals`` cover the OOF span
    ``span = (first, last)`` only: this function is never given the evaluation span."""
    a, b = _span(bars, *span)
    open_, p, sig = bars["open"].to_numpy()[a:b], bars["p"].to_numpy()[a:b], signals[a:b]
    base = {m: len(simulate(open_, sig, np.ones(len(sig), bool), horizon, m, spec.cost).trades) for m in MODES}
    scores: dict[str, float | None] = {}
    for thr in spec.thresholds:
        take = gate(sig, p, thr)
        runs = {m: simulate(open_, sig, take, horizon, m, spec.cost) for m in MODES}
        enough = all(len(runs[m].trades) >= max(5, spec.min_trade_share * base[m]) for m in MODES)
        scores[str(thr)] = float(np.mean([sharpe(runs[m].returns) for m in MODES])) if enough else None
    valid = {t: s for t, s in scores.items() if s is not None}
    best = float(max(valid, key=lambda t: (valid[t], -float(t)))) if valid else 0.5
    return {"threshold": best, "oof_sharpe": scores, "oof_first": str(span[0]), "oof_last": str(span[1])}


def evaluate(
    bars: pl.DataFrame, signals: np.ndarray, horizon: int, threshold: float | np.ndarray, spec: BacktestSpec, span
) -> dict:
    """Every variant on ``span = (first, last)`` of ``bars``, with intervals; the equity curves for the plot.
    ``threshold``: one number, or one per bar of ``bars`` (a chain of runs, each with its own)."""
    a, b = _span(bars, *span)
    open_, p, sig = bars["open"].to_numpy()[a:b], bars["p"].to_numpy()[a:b], signals[a:b]
    if b - a < 2:
        raise ValueError(f"the span {span[0]} .. {span[1]} holds {b - a} bars; a backtest needs at least 2")
    take = gate(sig, p, threshold[a:b] if isinstance(threshold, np.ndarray) else threshold)
    runs = {"buy_and_hold": buy_and_hold(open_, spec.cost)}
    for m in MODES:
        runs[f"ungated_{m}"] = simulate(open_, sig, np.ones(len(sig), bool), horizon, m, spec.cost)
        runs[f"gated_{m}"] = simulate(open_, sig, take, horizon, m, spec.cost)
    idx = block_indices(b - a, spec.block_hours or max(horizon, 24), spec.bootstrap, spec.seed)
    variants = {}
    for name, run in runs.items():
        s = summary(run)
        s["sharpe_interval"] = interval(_sharpes(run.returns, idx))
        variants[name] = s
    differences = {}
    for m in MODES:
        differences[m] = difference(runs[f"gated_{m}"].returns, runs[f"ungated_{m}"].returns, idx)[0]
    suspect = [n for n, v in variants.items() if n.startswith("gated") and too_good(v)]
    ts = bars[catalog.TIMESTAMP][a:b]
    return {
        "first": ts[0].isoformat(),
        "last": ts[-1].isoformat(),
        "bars": b - a,
        "signals": int((sig != 0).sum()),
        "horizon": horizon,
        "threshold": None if isinstance(threshold, np.ndarray) else threshold,
        "cost_bps": spec.fee_bps + spec.slippage_bps,
        "variants": variants,
        "gated_minus_ungated": differences,
        # a gate this good on hourly crypto is a leak, not an edge: say so where a user reads the figures
        "lookahead_suspect": suspect,
        "equity": {n: np.cumprod(1 + r.returns).tolist() for n, r in runs.items()},
        "timestamps": [t.isoformat() for t in ts],
    }


def compare_gates(
    open_: np.ndarray,
    signals: np.ndarray,
    horizon: int,
    spec: BacktestSpec,
    gates: dict[str, tuple[np.ndarray, np.ndarray | None]],
    idx: np.ndarray,
    random_draws: int = 0,
    seed: int = 0,
) -> dict:
    """Each gate (name -> which signals it takes, and their sizes or None) against taking every signal, on the
    same bars, in both position styles: the variant's figures with a Sharpe interval, and the gate minus no gate
    (Sharpe and annual return, with moving-block intervals drawn with ``idx``) per style and averaged over the two
    styles (``mean``: what the trade gate's choice reads). Also the hourly returns of every run (``returns``).

    With ``random_draws``, each unsized gate is also set against skipping signals at random at its own rate
    (``random_skips``): the mean Sharpe of those draws and the share of them the gate beats. A gate that only
    trades less beats about half of them; one that picks the better trades beats most."""
    everything = np.ones(len(signals), bool)
    base = {m: simulate(open_, signals, everything, horizon, m, spec.cost) for m in MODES}
    out: dict = {"kinds": {}, "returns": {f"none_{m}": base[m].returns for m in MODES}}
    for name, (take, size) in gates.items():
        runs = (
            base if name == "none" else {m: simulate(open_, signals, take, horizon, m, spec.cost, size) for m in MODES}
        )
        kind: dict = {}
        diffs = []
        for m in MODES:
            s = summary(runs[m])
            s["sharpe_interval"] = interval(_sharpes(runs[m].returns, idx))
            s["minus_none"], d = difference(runs[m].returns, base[m].returns, idx)
            diffs.append(d)
            kind[m] = s
            out["returns"][f"{name}_{m}"] = runs[m].returns
        mean_diff = np.mean(diffs, axis=0)
        out.setdefault("draws", {})[name] = mean_diff  # the bootstrap draws of the mean difference (the choice)
        kind["mean"] = {
            "sharpe": float(np.mean([kind[m]["sharpe"] for m in MODES])),
            "minus_none": float(np.mean([kind[m]["minus_none"]["sharpe"] for m in MODES])),
            "minus_none_interval": interval(mean_diff),
        }
        if random_draws and name != "none" and size is None:
            kind["mean"]["random_skips"] = random_skips(
                open_, signals, take, horizon, spec, random_draws, seed, kind["mean"]["sharpe"]
            )
        out["kinds"][name] = kind
    return out


def random_skips(
    open_: np.ndarray,
    signals: np.ndarray,
    take: np.ndarray,
    horizon: int,
    spec: BacktestSpec,
    draws: int,
    seed: int,
    gate_sharpe: float,
) -> dict:
    """Skip signals at random at the gate's own rate, ``draws`` times: the mean Sharpe (over both position styles)
    of those draws, and the share of them the gate's ``gate_sharpe`` beats."""
    at = np.flatnonzero(signals != 0)
    rate = float(take[at].mean()) if len(at) else 0.0
    rng = np.random.default_rng(seed)
    scores = np.empty(draws)
    for k in range(draws):
        pick = np.zeros(len(signals), bool)
        pick[at] = rng.random(len(at)) < rate
        scores[k] = np.mean([sharpe(simulate(open_, signals, pick, horizon, m, spec.cost).returns) for m in MODES])
    return {
        "rate": rate,
        "draws": draws,
        "mean_sharpe": float(scores.mean()),
        "gate_beats_share": float((gate_sharpe > scores).mean()),
    }

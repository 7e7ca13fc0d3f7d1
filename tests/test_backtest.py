"""The gated-strategy backtest: hand-computed cases, no look-ahead, costs, an oracle recognised, OOF-only threshold."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from macd_ml.features.synth import synth_market
from macd_ml.models.evaluation.backtest import (
    MODES,
    BacktestSpec,
    choose_threshold,
    evaluate,
    gate,
    macd_signals,
    sharpe,
    simulate,
    summary,
)

COST = 0.001


def test_hand_computed_long_flat_trade():
    """Buy signal at bar 1 -> long from open 2; sell signal at bar 3 -> flat at open 4."""
    open_ = np.array([100.0, 100.0, 100.0, 110.0, 121.0, 121.0])
    sig = np.array([0, 1, 0, -1, 0, 0])
    run = simulate(open_, sig, np.ones(6, bool), horizon=24, mode="long_flat", cost=COST)
    assert run.positions.tolist() == [0, 0, 1, 1, 0, 0]
    assert len(run.trades) == 1
    t = run.trades[0]
    assert (t["entry"], t["exit"], t["side"]) == (2, 4, 1)
    assert t["return"] == pytest.approx(1.21 * (1 - COST) ** 2 - 1)
    # hourly: bar 2 earns +10 % less the entry cost, bar 3 +10 %, bar 4 pays the exit cost
    np.testing.assert_allclose(run.returns, [0, 0, 0.1 - COST, 0.1, -COST, 0])


def test_hand_computed_short_and_time_exit():
    open_ = np.array([100.0, 100.0, 100.0, 90.0, 81.0, 81.0, 81.0])
    sig = np.array([0, -1, 0, 0, 0, 0, 0])
    flat = simulate(open_, sig, np.ones(7, bool), horizon=2, mode="long_flat", cost=0.0)
    assert not flat.trades  # a sell signal opens nothing long/flat
    short = simulate(open_, sig, np.ones(7, bool), horizon=2, mode="long_short", cost=0.0)
    assert short.positions.tolist() == [0, 0, -1, -1, 0, 0, 0]  # closed after 2 bars held
    assert short.trades[0]["return"] == pytest.approx((1 + 0.1) * (1 + 0.1) - 1)


def test_decisions_trade_at_the_next_open_so_shifting_prices_changes_results():
    """A jump at the open right after the signal bar is earned only because the trade happens at that open;
    moving the jump one bar earlier (onto the signal bar's own open) leaves it out."""
    sig = np.array([0, 1, 0, 0, -1, 0])
    late = np.array([100.0, 100.0, 100.0, 150.0, 150.0, 150.0])
    early = np.array([100.0, 150.0, 150.0, 150.0, 150.0, 150.0])
    take = np.ones(6, bool)
    assert simulate(late, sig, take, 24, "long_flat", 0.0).trades[0]["return"] == pytest.approx(0.5)
    assert simulate(early, sig, take, 24, "long_flat", 0.0).trades[0]["return"] == pytest.approx(0.0)


def test_zero_signal_loses_exactly_the_costs():
    n = 500
    open_ = np.full(n, 100.0)
    sig = np.zeros(n, dtype=int)
    sig[10::40] = 1
    sig[30::40] = -1
    run = simulate(open_, sig, np.ones(n, bool), 24, "long_short", COST)
    s = summary(run)
    turnover = np.abs(np.diff(np.concatenate([[0.0], run.positions]))).sum()
    assert s["cumulative_return"] == pytest.approx(
        np.prod(1 - COST * np.abs(np.diff(np.concatenate([[0.0], run.positions])))) - 1
    )
    assert turnover > 0 and s["cumulative_return"] < 0
    assert all(t["return"] == pytest.approx((1 - COST) ** 2 - 1) for t in run.trades)


def test_gate_uses_the_probability_of_the_signal_direction():
    sig = np.array([1, 1, -1, -1, 1])
    p = np.array([0.6, 0.5, 0.3, 0.46, np.nan])
    assert gate(sig, p, 0.55).tolist() == [True, False, True, False, False]


def _bars(hours: int, seed: int, signal: float):
    m = synth_market(hours=hours, seed=seed, signal=signal)["ETHUSDT"]
    return m.select("timestamp", "open", "close")


def _oracle(bars: pl.DataFrame, h: int) -> np.ndarray:
    """Perfect foresight: 1 when the close h bars ahead is higher (what no honest model can know)."""
    c = bars["close"].to_numpy()
    p = np.full(len(c), np.nan)
    p[:-h] = (c[h:] > c[:-h]).astype(float)
    return p


def test_a_perfect_foresight_oracle_is_flagged():
    spec = BacktestSpec(bootstrap=200)
    bars = _bars(4000, 1, 0.0)
    frame = bars.with_columns(pl.Series("p", _oracle(bars, 12)))
    sig = macd_signals(frame["close"], spec)
    span = (frame["timestamp"][100], frame["timestamp"][-1])
    out = evaluate(frame, sig, 12, 0.55, spec, span)
    assert out["lookahead_suspect"]
    honest = frame.with_columns(pl.Series("p", np.full(frame.height, 0.6)))
    assert not evaluate(honest, sig, 12, 0.55, spec, span)["lookahead_suspect"]


def test_threshold_never_reads_the_evaluation_span():
    """The threshold comes from the OOF span alone: any change to the bars after it changes nothing."""
    spec = BacktestSpec(bootstrap=200)
    bars = _bars(5000, 2, 1.0)
    rng = np.random.default_rng(0)
    frame = bars.with_columns(pl.Series("p", rng.random(bars.height)))
    sig = macd_signals(frame["close"], spec)
    oof = (frame["timestamp"][50], frame["timestamp"][3000])
    a = choose_threshold(frame, sig, 12, spec, oof)
    changed = frame.with_columns(
        pl.when(pl.int_range(pl.len()) > 3001).then(1 - pl.col("p")).otherwise(pl.col("p")).alias("p"),
        pl.when(pl.int_range(pl.len()) > 3001).then(pl.col("open") * 3).otherwise(pl.col("open")).alias("open"),
    )
    assert choose_threshold(changed, sig, 12, spec, oof) == a


def test_on_a_driftless_market_the_gated_sharpe_is_within_its_interval_of_zero():
    """No signal in prices and a gate of noise: after costs, the gated strategy has no edge its interval excludes."""
    spec = BacktestSpec(bootstrap=500)
    bars = _bars(8000, 3, 0.0)
    rng = np.random.default_rng(1)
    frame = bars.with_columns(pl.Series("p", rng.random(bars.height)))
    sig = macd_signals(frame["close"], spec)
    oof = (frame["timestamp"][50], frame["timestamp"][4000])
    thr = choose_threshold(frame, sig, 12, spec, oof)["threshold"]
    out = evaluate(frame, sig, 12, thr, spec, (frame["timestamp"][4001], frame["timestamp"][-1]))
    for m in ("long_flat", "long_short"):
        lo, hi = out["variants"][f"gated_{m}"]["sharpe_interval"]
        assert lo <= 0, (m, lo, hi)  # zero inside the interval, or a loss (the costs): never a significant gain


def test_macd_crossings_alternate_and_are_causal():
    spec = BacktestSpec()
    bars = _bars(3000, 4, 1.0)
    sig = macd_signals(bars["close"], spec)
    nz = sig[sig != 0]
    assert len(nz) > 20 and np.all(nz[1:] != nz[:-1])  # up, down, up, ...
    cut = macd_signals(bars["close"][:2000], spec)
    np.testing.assert_array_equal(cut, sig[:2000])  # later bars never change an earlier signal


def test_timestamps_are_the_bars():
    spec = BacktestSpec(bootstrap=100)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    frame = pl.DataFrame(
        {
            "timestamp": [t0 + timedelta(hours=i) for i in range(300)],
            "open": np.linspace(100, 130, 300),
            "close": np.linspace(100, 130, 300),
            "p": np.full(300, 0.7),
        }
    )
    sig = macd_signals(frame["close"], spec)
    out = evaluate(frame, sig, 12, 0.55, spec, (t0 + timedelta(hours=50), t0 + timedelta(hours=299)))
    assert out["bars"] == 250 and out["first"] == (t0 + timedelta(hours=50)).isoformat()
    assert out["variants"]["buy_and_hold"]["cumulative_return"] > 0


def test_bootstrap_interval_is_as_wide_as_an_autocorrelated_series_really_varies():
    """Hourly returns that are a 12-hour moving sum of shocks (as overlapping trades and slow moves make them):
    the Sharpe ratio of one path varies across paths about sqrt(12) times more than iid returns would suggest.
    The moving-block bootstrap (blocks of at least a day) must see that spread; one of single hours would not
    (its interval comes out about 3.5 times too narrow)."""
    n, q, paths = 4_000, 12, 400
    spec = BacktestSpec(bootstrap=1_000)
    rng = np.random.default_rng(7)

    def returns() -> np.ndarray:
        e = rng.standard_normal(n + q - 1)
        return 0.002 * np.convolve(e, np.ones(q) / np.sqrt(q), mode="valid")

    true = [float(np.mean(r) / np.std(r) * np.sqrt(24 * 365)) for r in (returns() for _ in range(paths))]
    lo, hi = np.percentile(true, [2.5, 97.5])
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    open_ = 100 * np.exp(np.concatenate([[0.0], np.cumsum(returns())]))[: n + 1]
    frame = pl.DataFrame(
        {
            "timestamp": [t0 + timedelta(hours=i) for i in range(n + 1)],
            "open": open_,
            "close": open_,
            "p": np.full(n + 1, 0.5),
        }
    )
    out = evaluate(frame, np.zeros(n + 1, np.int8), 5, 0.55, spec, (frame["timestamp"][0], frame["timestamp"][-1]))
    blo, bhi = out["variants"]["buy_and_hold"]["sharpe_interval"]
    ratio = (bhi - blo) / (hi - lo)
    assert 0.7 < ratio < 1.4, (ratio, (blo, bhi), (lo, hi))


def test_the_runs_backtest_chooses_its_threshold_on_the_oof_rows_alone():
    """The backtest stage (tasks/backtest.py) as the flow calls it: OOF and holdout tables of the shipped
    probability. Mirroring the holdout's candles and inverting its probabilities moves the holdout figures and
    leaves the threshold and its OOF table as they were."""
    from macd_ml.tasks.backtest import run_backtest
    from tests.mirror import mirror_from

    h, spec = 12, BacktestSpec(bootstrap=200)
    candles = synth_market(hours=5_000, seed=3, signal=1.0)["ETHUSDT"]
    rng = np.random.default_rng(0)
    probs = candles.select("timestamp", pl.Series(f"shipped_h{h}", rng.random(candles.height)))
    oof, holdout = probs.slice(300, 3_500), probs.slice(3_850)
    a = run_backtest(candles, oof, holdout, h, spec)
    first = holdout["timestamp"][0]
    flipped = holdout.with_columns(1 - pl.col(f"shipped_h{h}"))
    b = run_backtest(mirror_from(candles, first), oof, flipped, h, spec)
    assert a["threshold_choice"] == b["threshold_choice"] and a["threshold"] == b["threshold"]
    assert a["variants"] != b["variants"]


def test_a_gate_is_set_against_random_skips_at_its_own_rate():
    """A gate that skips at random beats about half of the random draws at its rate; one that knows which trades
    pay (here: an oracle) beats nearly all: trading less is not an edge."""
    from macd_ml.models.evaluation.backtest import random_skips

    rng = np.random.default_rng(4)
    n = 4_000
    open_ = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    sig = np.zeros(n, np.int8)
    at = np.sort(rng.choice(np.arange(30, n - 30), 300, replace=False))
    sig[at] = rng.choice([-1, 1], 300)
    spec = BacktestSpec()

    def mean_sharpe(take):
        return float(np.mean([sharpe(simulate(open_, sig, take, 5, m, spec.cost).returns) for m in MODES]))

    lucky = np.zeros(n, bool)
    lucky[rng.choice(at, 120, replace=False)] = True
    coin = random_skips(open_, sig, lucky, 5, spec, 200, 1, mean_sharpe(lucky))
    assert coin["rate"] == pytest.approx(0.4) and 0.1 < coin["gate_beats_share"] < 0.9
    pays = np.array([sig[t] * (open_[min(t + 6, n - 1)] / open_[t + 1] - 1) > 0 for t in at])
    oracle = np.zeros(n, bool)
    oracle[at[pays]] = True
    assert random_skips(open_, sig, oracle, 5, spec, 200, 1, mean_sharpe(oracle))["gate_beats_share"] > 0.95

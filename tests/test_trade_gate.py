"""The trade gate (docs/trade-gate.md): trade-outcome labels by hand, purging by the label's span, the secondary
model's inputs out of sample, sizing, the ONNX graph against the native model, the bot's answer per bar, and two
markets: one where the trade outcome is learnable and the direction is not, and the null market."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.artifacts import catalog
from macd_ml.features.trades import Barrier, trade_outcomes
from macd_ml.models.evaluation.backtest import MODES, simulate
from macd_ml.models.gate.choice import decide
from macd_ml.models.gate.secondary import (
    EXIT,
    LABEL,
    SIDE,
    STRENGTH,
    SYMBOL,
    GateSpec,
    fit_gate,
    inner_walk_forward,
    purged_before,
)
from macd_ml.models.gate.sizing import bet_size

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
COST = 0.001


def _ts(n: int) -> pl.Series:
    return pl.Series([T0 + timedelta(hours=i) for i in range(n)])


# --------------------------------------------------------------------------------------------- labels by hand


def test_trade_labels_by_hand():
    open_ = np.array([100, 100, 102, 104, 103, 101, 99, 100, 100, 100, 100, 100], dtype=float)
    close = open_.copy()
    sig = np.zeros(12, np.int8)
    sig[0] = 1  # buy at bar 0: entry at open[1] = 100; sell signal at bar 3 -> exit at open[4] = 103
    sig[3] = -1  # short at bar 3: entry at open[4] = 103; horizon 3 bars held -> exit at open[7] = 100
    sig[9] = 1  # buy at bar 9: entry at open[10]; the horizon would end at bar 13: past the data, no label
    t = trade_outcomes(_ts(12), open_, close, sig, horizon=3, cost=COST)
    assert t["side"].to_list() == [1, -1, 1]
    assert t["exit"][0] == T0 + timedelta(hours=4) and t["exit"][1] == T0 + timedelta(hours=7)
    long_net = 103 / 100 * (1 - COST) ** 2 - 1  # a long's open-to-open returns multiply to the price ratio
    r = open_[1:] / open_[:-1] - 1
    short_net = float(np.prod(1 - r[4:7])) * (1 - COST) ** 2 - 1  # the backtest's hourly short accounting
    assert t["net_return"][0] == pytest.approx(long_net) and t["label"][0] == 1
    assert t["net_return"][1] == pytest.approx(short_net) and t["label"][1] == 1  # 103 -> 100: the short pays
    assert t["net_return"][2] is None and t["label"][2] is None  # still open at the end: no label

    # costs decide a flat trade: 100 -> 100.1 gross +0.1 %, less 2 x 0.1 % is a loss
    flat = np.array([100, 100, 100.1, 100.1, 100.1], dtype=float)
    s = np.array([1, 0, 0, 0, 0], np.int8)
    t = trade_outcomes(_ts(5), flat, flat, s, horizon=1, cost=COST)
    assert t["net_return"][0] == pytest.approx(100.1 / 100 * (1 - COST) ** 2 - 1) and t["label"][0] == 0


def test_barrier_labels_by_hand():
    n = 10
    sigma = np.full(n, 0.01)  # w = 0.01 * sqrt(4) = 2 %
    open_ = np.full(n, 100.0)
    close = np.full(n, 100.0)
    close[2] = 102.5  # the long's profit-take (+2 %) at bar 2's close: exit at open[3]
    open_[3:] = 102.4
    sig = np.zeros(n, np.int8)
    sig[0] = 1
    t = trade_outcomes(_ts(n), open_, close, sig, 4, COST, kind="barrier", barrier=Barrier(1.0, 1.0), sigma=sigma)
    assert t["barrier"][0] == 1 and t["exit"][0] == T0 + timedelta(hours=3)
    assert t["net_return"][0] == pytest.approx(1.024 * (1 - COST) ** 2 - 1) and t["label"][0] == 1

    close = np.full(n, 100.0)
    close[1] = 97.0  # the stop (-2 %) at bar 1's close: exit at open[2]
    open_ = np.full(n, 100.0)
    open_[2:] = 97.2
    t = trade_outcomes(_ts(n), open_, close, sig, 4, COST, kind="barrier", sigma=sigma)
    assert t["barrier"][0] == -1 and t["exit"][0] == T0 + timedelta(hours=2) and t["label"][0] == 0

    # neither barrier: the horizon (4 bars held) is the vertical one; a short's barriers are mirrored
    close = np.full(n, 100.0)
    close[1] = 101.0  # +1 %: inside the barriers
    sig = np.zeros(n, np.int8)
    sig[0] = -1
    t = trade_outcomes(_ts(n), np.full(n, 100.0), close, sig, 4, COST, kind="barrier", sigma=sigma)
    assert t["barrier"][0] == 0 and t["exit"][0] == T0 + timedelta(hours=5)


def test_labels_match_the_backtest_trades():
    """An ungated long/short backtest's trades are the labels' trades wherever they do not overlap."""
    rng = np.random.default_rng(3)
    n = 600
    open_ = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    sig = np.zeros(n, np.int8)
    sig[rng.choice(np.arange(30, n - 30), 40, replace=False)] = rng.choice([-1, 1], 40)
    run = simulate(open_, sig, np.ones(n, bool), 6, "long_short", COST)
    labels = trade_outcomes(_ts(n), open_, open_, sig, 6, COST)
    by_entry = {int(i) + 1: r for i, r in zip(np.flatnonzero(sig), labels.iter_rows(named=True))}
    matched = 0
    for trade in run.trades:
        row = by_entry.get(trade["entry"])
        if row is None or row["net_return"] is None:
            continue
        exit_index = int((row[EXIT] - T0) / timedelta(hours=1))
        if exit_index == trade["exit"]:
            assert trade["return"] == pytest.approx(row["net_return"])
            matched += 1
    assert matched >= 10


# --------------------------------------------------------------------------------------------- purging


def _rows(n: int, span_hours: list[int], seed: int = 0, symbol: str = "T") -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ts = [T0 + timedelta(hours=10 * i) for i in range(n)]
    return pl.DataFrame(
        {
            catalog.TIMESTAMP: ts,
            EXIT: [t + timedelta(hours=span_hours[i % len(span_hours)]) for i, t in enumerate(ts)],
            LABEL: pl.Series(rng.integers(0, 2, n), dtype=pl.Int8),
            SIDE: rng.choice([-1.0, 1.0], n),
            STRENGTH: rng.random(n),
            "f": rng.normal(size=n),
            "p_h5": rng.random(n),
            SYMBOL: [symbol] * n,
        }
    )


def test_purging_uses_the_trade_s_span_not_a_fixed_horizon():
    start = T0 + timedelta(hours=100)
    rows = pl.DataFrame(
        {
            catalog.TIMESTAMP: [T0, T0 + timedelta(hours=60), T0 + timedelta(hours=70)],
            EXIT: [T0 + timedelta(hours=5), T0 + timedelta(hours=80), T0 + timedelta(hours=71)],
            LABEL: pl.Series([1, 0, 1], dtype=pl.Int8),
        }
    )
    # a 24 h embargo: the trade opened at 60 h ran to 80 h (+24 = 104 >= 100): out, though 60 + 24 < 100
    kept = rows.filter(purged_before(rows, start, 24))
    assert kept[catalog.TIMESTAMP].to_list() == [T0, T0 + timedelta(hours=70)]


def test_inner_blocks_train_only_on_trades_that_ended_before_them(monkeypatch):
    import macd_ml.models.gate.secondary as sec

    target = _rows(200, [5, 50, 200])
    panel = _rows(120, [30], seed=1, symbol="P")
    seen = []
    real = sec.fit_gate

    def spy(train, *a, **k):
        seen.append(train)
        return real(train, *a, **k)

    monkeypatch.setattr(sec, "fit_gate", spy)
    spec = GateSpec(c_grid=[0.1], inner_folds=3, min_train_fraction=0.4)
    res = inner_walk_forward(target, panel, ["f", SIDE, STRENGTH, "p_h5"], 1, "T", spec, 24)
    ts = target[catalog.TIMESTAMP]
    starts = [ts[80], ts[120], ts[160]]  # 200 rows: 40 % before the first block, then blocks of 40
    assert len(seen) == 3 and res.test_timestamps[0] == starts[0] and len(res.q) == 120
    for train, start in zip(seen, starts):
        assert (train[EXIT] + timedelta(hours=24) < start).all()
        # and nothing that ended in time was left out
        everything = pl.concat([target, panel])
        assert train.height == everything.filter(everything[EXIT] + timedelta(hours=24) < start).height
    assert (seen[-1][SYMBOL] == "P").any(), "the panel's rows join the training"


# --------------------------------------------------------------------------------------------- model, sizing, graph


def test_sizing_rises_with_the_probability_and_stays_in_bounds():
    q = np.linspace(0.01, 0.99, 99)
    s = bet_size(q, 0.25, 1.0)
    assert np.all(np.diff(s) >= -1e-12) and s.min() == pytest.approx(0.25) and s.max() <= 1.0
    assert s[q <= 0.5].max() == pytest.approx(0.25) and s[-1] > 0.9
    # a sized position earns and pays in proportion
    rng = np.random.default_rng(0)
    open_ = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    sig = np.zeros(300, np.int8)
    sig[[20, 80, 150]] = [1, -1, 1]
    take = sig != 0
    for m in MODES:
        full = simulate(open_, sig, take, 10, m, COST)
        half = simulate(open_, sig, take, 10, m, COST, np.full(300, 0.5))
        assert np.allclose(half.returns, 0.5 * full.returns)


def test_decide_kinds():
    sig = np.array([1, -1, 1, 0, -1])
    p = np.array([0.6, 0.6, 0.4, 0.9, np.nan])
    q = np.array([0.7, 0.3, np.nan, 0.9, 0.8])
    spec = GateSpec()
    assert decide("none", sig, p, q, 0.55, 0.5, spec)[0].tolist() == [True, True, True, False, True]
    assert decide("direction", sig, p, q, 0.55, 0.5, spec)[0].tolist() == [True, False, False, False, False]
    take, size = decide("meta_sized", sig, p, q, 0.55, 0.5, spec)
    assert take.tolist() == [True, False, False, False, True] and size is not None and 0.25 < size[0] < 1


def test_gate_graph_matches_the_native_model_with_missing_inputs():
    from macd_ml.models.gate.graph import gate_onnx
    from macd_ml.models.release.scoring import session

    rows = _rows(300, [5])
    rows = rows.with_columns(pl.when(pl.col("f") > 1.5).then(None).otherwise(pl.col("f")).alias("f"))
    inputs = ["f", SIDE, STRENGTH, "p_h5"]
    model = fit_gate(rows, inputs, 1, "T", 1.0, GateSpec())
    X = rows.select(inputs).cast(pl.Float64).to_numpy()
    assert np.isnan(X).any()
    sess, _ = session(gate_onnx(model).SerializeToString())
    q = sess.run(None, {"x": X.astype(np.float32)})[0][:, 0]
    assert np.max(np.abs(q - model.predict(X.astype(np.float32).astype(np.float64)))) < 1e-5
    assert q.std() > 0


def test_the_gate_learns_from_out_of_sample_primary_probabilities_only():
    """The stacker's out-of-sample column is what the gate reads: where the in-sample probability differs (a
    meta-learner's fitted rows), the gate's input is the out-of-sample one or missing."""
    from macd_ml.models.gate.train import out_of_sample_probs

    oof = pl.DataFrame(
        {
            catalog.TIMESTAMP: [T0, T0 + timedelta(hours=1)],
            catalog.shipped_column(5): [0.9, 0.8],  # in sample
            catalog.out_of_sample_column(5): [None, 0.55],
        }
    )
    got = out_of_sample_probs(oof, [5])
    assert got[catalog.shipped_column(5)].to_list() == [None, 0.55]


# --------------------------------------------------------------------------------------------- whole runs


def _run(tmp_path: Path, name: str, trade_signal: float, signal: float = 0.0, hours: int = 10_000):
    from macd_ml.artifacts import store
    from macd_ml.errors import PromotionRefused
    from macd_ml.features.synth import synth_market, write_market
    from macd_ml.flows.config import RetrainConfig
    from macd_ml.flows.pipeline import run_pipeline
    from macd_ml.flows.stages_runner import direct_stages
    from tests.flowutil import lenient

    data = tmp_path / name
    write_market(synth_market(hours=hours, seed=3, signal=signal, trade_signal=trade_signal, gaps=0), data)
    out = tmp_path / f"out-{name}"
    config = lenient(
        RetrainConfig.model_validate(
            {"data_dir": str(data), "out_dir": str(out), "folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}}
        )
    )
    try:
        run = Path(run_pipeline(config, out, store.new_run_id(), direct_stages(workers=2)).path)
    except PromotionRefused as exc:
        run = Path(exc.run)
    return run, json.loads((run / catalog.TRADE_GATE).read_text())


@pytest.mark.slow
def test_a_learnable_trade_outcome_is_found_by_the_meta_gate_and_not_by_the_direction_gate(tmp_path):
    run, gate = _run(tmp_path, "trades", trade_signal=2.0)
    assert gate["kind"] in ("meta", "meta_sized"), gate["reason"]
    assert gate["inner"]["auc"] > 0.58
    # by the rule that ships a gate (beyond noise, corrected for the candidates tried), direction does not
    assert gate["lower_bounds"]["direction"] <= 0, "the direction gate found an effect that has no direction in it"
    assert gate["holdout"]["auc"] > 0.5

    # the bot's answer per bar equals the run's own: candles -> bundle -> Scorer -> gate.onnx
    from macd_ml.features.ingest import load_market
    from macd_ml.serving.backtest import Source
    from macd_ml.serving.scorer import Scorer

    scorer = Scorer(Source.load(run).bundle)
    market = load_market(tmp_path / "trades", scorer.target, scorer.cross)
    bars = scorer.score(market, last=400)
    trades = pl.read_parquet(run / catalog.GATE_TRADES).filter(pl.col("q_holdout").is_not_null())
    q_run = dict(zip(trades[catalog.TIMESTAMP].to_list(), trades["q_holdout"].to_list()))
    checked = 0
    for bar in bars:
        g = bar.gate
        assert g is not None and g["kind"] == gate["kind"]
        if g["signal"] == 0:
            assert not g["take"] and g["path"] == "no-signal"
            continue
        assert g["path"] in ("meta", "meta_sized") and g["q"] is not None
        assert g["take"] == (g["q"] >= gate["thresholds"]["meta"])
        if bar.timestamp in q_run:
            assert abs(g["q"] - q_run[bar.timestamp]) < 1e-5
            checked += 1
    assert checked >= 10
    health = json.loads((run / catalog.HEALTH).read_text())
    assert next(c for c in health["checks"] if c["name"] == "trade-gate")["passed"]

    # the health gate re-scores gate.onnx: a graph that no longer matches the native probabilities is refused
    from macd_ml.artifacts.store import write_bytes, write_json, write_parquet
    from macd_ml.models.release.health import check_trade_gate
    from macd_ml.models.release.scoring import session

    class Run:  # the part of RunUnderCheck the check reads
        def __init__(self, files):
            self.files, self.sessions = files, {catalog.GATE_ONNX: session(files[catalog.GATE_ONNX].path)[0]}

        def file(self, rel):
            return self.files[rel]

    def files(folder: Path, trades: pl.DataFrame) -> dict:
        return {
            catalog.TRADE_GATE: write_json(folder / catalog.TRADE_GATE, gate),
            catalog.GATE_ONNX: write_bytes(folder / "gate.onnx", (run / catalog.GATE_ONNX).read_bytes()),
            catalog.GATE_TRADES: write_parquet(folder / catalog.GATE_TRADES, trades),
        }

    ok, detail = check_trade_gate(Run(files(tmp_path / "same", trades)))
    assert ok, detail
    moved = trades.with_columns(pl.col("q_holdout") + 0.01)  # what the graph would have to reproduce
    ok, detail = check_trade_gate(Run(files(tmp_path / "moved", moved)))
    assert not ok and "max |onnx - native|" in detail


@pytest.mark.slow
def test_the_null_market_ships_no_gate(tmp_path):
    """One run on a driftless market: nothing beats taking every trade beyond noise on its out-of-fold trades.
    (Its one holdout has no power to say more; the walk-forward test below pools many.)"""
    _, gate = _run(tmp_path, "null", trade_signal=0.0)
    assert gate["kind"] == "none", gate["reason"]
    assert gate["model"] is not None, "the secondary model was fitted and still did not ship"


@pytest.mark.heavy  # a walk-forward of two targets x five cutoffs on a driftless market (light profile)
@pytest.mark.usefixtures("prefect_server")
def test_on_the_null_market_no_gate_kind_beats_no_gate_over_a_walk_forward(tmp_path):
    """Pooled over two targets and every cutoff's bars after its data, no gate kind beats taking every trade (a gate
    that does on a driftless market is a leak), and what the runs shipped sits inside its interval around zero."""
    from datetime import UTC

    from macd_ml.features.synth import synth_market, write_market
    from macd_ml.flows.config import RetrainConfig
    from macd_ml.flows.walkforward import WalkForwardSpec, walkforward
    from tests.flowutil import lenient

    data = tmp_path / "null"
    write_market(synth_market(symbols=("ETHUSDT", "BTCUSDT", "SOLUSDT"), hours=9_000, seed=8, signal=0.0), data)
    config = lenient(
        RetrainConfig.model_validate(
            {"data_dir": str(data), "out_dir": str(tmp_path / "out"), "folds": {"n_folds": 3}, "target": "ETHUSDT"}
        )
    )
    walk = WalkForwardSpec(every="40d", start=datetime(2022, 7, 1, tzinfo=UTC), targets=["ETHUSDT", "SOLUSDT"])
    report = Path(walkforward(config, walk, return_state=True).result())
    doc = json.loads((report / "track_record.json").read_text())
    pooled = doc["pooled"]["gate_kinds"]
    assert {"direction", "meta", "meta_sized", "shipped"} <= set(pooled)
    for kind in ("direction", "meta", "meta_sized", "shipped"):
        for mode in MODES:
            lo, hi = pooled[kind][mode]["minus_none"]["sharpe_interval"]
            assert lo <= 0, f"{kind} {mode} beats no gate on a null market: {lo:+.2f} .. {hi:+.2f}"
            if kind == "shipped":
                assert hi >= 0, f"what shipped is a brake on a null market: {lo:+.2f} .. {hi:+.2f}"
    # consecutive cutoffs share most of their out-of-fold span (expanding folds), so one lucky stretch can ship a
    # gate at two cutoffs in a row; without the correction for the candidates tried, half the runs shipped one
    shipped = [s["gate"] for rec in doc["targets"].values() for s in rec["segments"]]
    assert shipped.count("none") >= 0.7 * len(shipped), f"gates shipped on a driftless market: {shipped}"
    for rec in doc["targets"].values():
        assert rec["gate_kinds"] and all(s["gate"] for s in rec["segments"])
    assert "Trade gate kinds minus no gate" in (report / "track_record.md").read_text()


def test_the_bot_s_answer_on_each_path():
    """serving/trade_gate.py without a run: no signal, no gate shipped, the meta gate that cannot score (no graph)
    falling back to the direction gate, and no probability at all."""
    from types import SimpleNamespace

    from macd_ml.models.evaluation.backtest import BacktestSpec
    from macd_ml.serving.trade_gate import TradeGate

    doc = {"kind": "meta", "horizon": 5, "thresholds": {"direction": 0.55, "meta": 0.4}, "reason": "r", "model": None}
    gate = TradeGate(doc, None, BacktestSpec(), GateSpec())
    bar = SimpleNamespace(timestamp=T0, probabilities={"5": 0.6, "12": 0.5})
    assert gate._one(bar, 0, 0.1, {}, None)["path"] == "no-signal"
    up = gate._one(bar, 1, 0.1, {}, None)
    assert up["path"] == "direction-fallback" and up["take"] and up["size"] == 1.0 and up["q"] is None
    assert "cannot score" in up["reason"] and "0.600 >= 0.55" in up["reason"]
    down = gate._one(bar, -1, 0.1, {}, None)
    assert down["path"] == "direction-fallback" and not down["take"] and down["size"] == 0.0
    nothing = gate._one(SimpleNamespace(timestamp=T0, probabilities=None), 1, 0.1, {}, None)
    assert nothing["path"] == "no-probability" and not nothing["take"]
    free = TradeGate({**doc, "kind": "none"}, None, BacktestSpec(), GateSpec())._one(bar, -1, 0.1, {}, None)
    assert free["path"] == "none" and free["take"] and free["size"] == 1.0


def test_the_export_parity_of_the_gate_graph():
    from macd_ml.models.gate.graph import gate_onnx
    from macd_ml.tasks.gate import gate_parity

    rows = _rows(200, [5])
    inputs = ["f", SIDE, STRENGTH, "p_h5"]
    model = fit_gate(rows, inputs, 1, "T", 1.0, GateSpec())
    X = rows.select(inputs).cast(pl.Float64).to_numpy()
    good = gate_parity(gate_onnx(model).SerializeToString(), model, X)
    assert good["passed"] and good["rows"] == 200
    other = fit_gate(rows, inputs, 1, "T", 0.001, GateSpec())  # another model's graph
    assert not gate_parity(gate_onnx(other).SerializeToString(), model, X)["passed"]


def test_bad_gate_settings_are_refused_naming_the_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gate.min_size"):
        GateSpec(min_size=0.9, max_size=0.5)
    with pytest.raises(ValidationError, match="gate.skip_shares"):
        GateSpec(skip_shares=[0.2, 1.0])


def test_pooled_rows_are_standardised_per_symbol():
    """A panel symbol whose inputs are the target's on another scale (here x 100 + 50) adds exactly what a copy of
    the target's rows would: each symbol is standardised by its own rows. The "is the target" input is folded into
    the bias of the model the bot runs."""
    target = _rows(300, [5])
    scaled = target.with_columns((pl.col("f") * 100 + 50).alias("f"), pl.col(STRENGTH) * 100, pl.lit("P").alias(SYMBOL))
    copy = target.with_columns(pl.lit("P").alias(SYMBOL))
    inputs = ["f", SIDE, STRENGTH, "p_h5"]
    X = target.select(inputs).cast(pl.Float64).to_numpy()
    a = fit_gate(pl.concat([target, scaled]), inputs, 1, "T", 1.0, GateSpec(pooled=True)).predict(X)
    b = fit_gate(pl.concat([target, copy]), inputs, 1, "T", 1.0, GateSpec(pooled=True)).predict(X)
    assert np.allclose(a, b, atol=1e-8)
    with_symbol = fit_gate(pl.concat([target, scaled]), inputs, 1, "T", 1.0, GateSpec(pooled=True, symbol_feature=True))
    assert len(with_symbol.weights) == len(inputs)  # the bot's graph reads the same inputs

"""examples/ (docs/examples.md): the minimal bot loop and the freqtrade strategy, run on real bundles and candles.

- ``examples/minimal_bot.py`` end to end on a candle folder as an exchange has it at a given time (the candle still
  forming included): it scores the newest closed candle only, its shadow line validates against the newest
  shadow-log schema, and its decision is the trade gate's, or the ``NO_ML_ANSWER`` policy's where the bundle gives
  no answer (an expired model); a failure is logged as the shadow's error line; the loop sleeps to the next close.
- The Scorer asked for a whole history at once (what freqtrade's backtester does) has no look-ahead: changing every
  candle after a time changes no answer before it, and each answer equals the one for the candle scored alone
  with only the candles up to it (real candles, ../shared/data).
- ``examples/freqtrade/MacdGatedStrategy.py`` (when freqtrade is installed: ``make freqtrade``) loaded by
  freqtrade's own resolver, its informative pair read by freqtrade's DataProvider from freqtrade's data files of
  the real candles: the same answers, entries, exits and stakes as the rules say, and no look-ahead.

freqtrade's backtester itself cannot run here: it loads the exchange's markets over the network before anything
else (docs/examples.md, "What freqtrade's backtester needs").

The bundle comes from a real (small) retrain, 3 folds, LightGBM and the reference, its data cut 150 h before the
market's newest candle: its newest ~80 candles are scored by a model past its 72 h age (flag ``expired``, no
probability), the ones before by a model in date; its trade gate refuses some crossovers and sizes the others
(``gate.beyond_noise=false``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from jsonschema import Draft202012Validator

from macd_ml.artifacts import store
from macd_ml.features.ingest import load_market
from macd_ml.features.synth import write_market
from macd_ml.serving import Scorer, read_bundle
from tests.cliutil import cli
from tests.conftest import real_data_or_skip

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BAR = timedelta(hours=1)
STALE_HOURS = 150  # the bundle's data ends this long before the market's newest candle


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shadow_schema() -> Draft202012Validator:
    """The newest shadow-log schema (docs/schemas/shadow-log.vN.schema.json)."""
    files = (ROOT / "docs" / "schemas").glob("shadow-log.v*.schema.json")
    newest = max(files, key=lambda p: int(re.search(r"\.v(\d+)\.", p.name).group(1)))  # type: ignore[union-attr]
    schema = json.loads(newest.read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _valid(line: dict) -> list[str]:
    return [e.message for e in _shadow_schema().iter_errors(line)]


@pytest.fixture(scope="module")
def bot():
    return _module(EXAMPLES / "minimal_bot.py", "minimal_bot")


@pytest.fixture(scope="module")
def bundle_file(market, tmp_path_factory, prefect_server) -> Path:
    """A real promoted run's bundle (3 folds, LightGBM and the reference) whose data ends STALE_HOURS before the
    market's newest candle. ``gate.beyond_noise=false`` ships the trade gate that scored best out of fold even where
    it is not beyond noise: a gate that refuses some trades and sizes others (``meta_sized`` on this market), where
    the default ships ``none`` (take every crossover) on a market this small."""
    newest = load_market(market, "ETHUSDT").target.frame["timestamp"][-1]
    out = tmp_path_factory.mktemp("examples-out")
    until = (newest - timedelta(hours=STALE_HOURS)).isoformat()
    code, _, err = cli(
        *["retrain", "--data", str(market), "--out", str(out), "--set", "folds.n_folds=3"]
        + ["--set", 'models.enabled=["lgb"]', "--set", f"until={until}", "--set", "gate.beyond_noise=false"]
    )
    assert code == 0, err
    bundle = out / "bundles" / f"{store.current_run(out)}.tar.gz"
    assert bundle.is_file()
    kind = Scorer(read_bundle(bundle.read_bytes())).trade_gate.kind
    assert kind != "none", "the gate takes every crossover: the tests could not tell its answer from no gate"
    return bundle


@pytest.fixture(scope="module")
def scored(bundle_file, market):
    """The market's newest 400 candles scored by the bundle (each with only the candles up to it), by time."""
    scorer = Scorer(read_bundle(bundle_file.read_bytes()))
    return {b.timestamp: b for b in scorer.score(load_market(market, scorer.target, scorer.cross), last=400)}


def _pick(scored: dict, signal: bool, answered: bool, taken: bool | None = None) -> datetime:
    """The newest scored candle with (or without) a MACD crossover, with (or without) an ML answer, and (when
    ``taken`` is given) the gate taking it or not."""
    hits = [
        t
        for t, b in scored.items()
        if (b.gate["signal"] != 0) == signal
        and (b.probabilities is not None) == answered
        and (taken is None or b.gate["take"] == taken)
    ]
    assert hits, f"no candle with signal={signal}, answered={answered}, taken={taken} among the newest {len(scored)}"
    return hits[-1]


def _exchange_at(market: Path, forming: datetime, where: Path) -> Path:
    """The candle folder as an exchange has it while the candle opened at ``forming`` is still forming: every
    candle up to it, the forming one with a price it never closed at (had the bot read it, its answer would move)."""
    m = load_market(market, "ETHUSDT", ["BTCUSDT"])
    frames = {}
    for c in (m.target, *m.cross):
        f = c.frame.filter(pl.col("timestamp") <= forming)
        last = f.tail(1).with_columns(pl.col("close") * 1.3, pl.col("high") * 1.3)
        frames[c.symbol] = pl.concat([f.head(f.height - 1), last])
    write_market(frames, where)
    return where


def _alone(scorer: Scorer, market: Path, t: datetime):
    """The candle at ``t`` scored with only the candles up to it."""
    m = load_market(market, scorer.target, scorer.cross)
    frames = {c.symbol: c.frame.filter(pl.col("timestamp") <= t) for c in (m.target, *m.cross)}
    (bar,) = scorer.score(frames, last=1, now=t + BAR)
    return bar


def _expected(line: dict, policy: str) -> tuple[int, float]:
    """The decision the rules give for a shadow line: the gate's where the bundle answered, the policy's where not."""
    gate = line["gate"]
    if gate["signal"] == 0:
        return 0, 0.0
    if line["probabilities"] is None:
        return (gate["signal"], 1.0) if policy == "macd" else (0, 0.0)
    return (gate["signal"], gate["size"]) if gate["take"] else (0, gate["size"])


# --------------------------------------------------------------------------------------------- the minimal bot


@pytest.mark.slow
def test_the_bot_scores_the_newest_closed_candle_and_logs_a_contract_line(bundle_file, market, scored, tmp_path):
    """The real script in its own process, once: the candle still forming is not scored (the one before is, with
    exactly the answer it has without the forming one), the shadow line validates, the decision is the gate's."""
    due = _pick(scored, signal=True, answered=True)
    folder = _exchange_at(market, due + BAR, tmp_path / "candles")
    now = due + BAR + timedelta(minutes=30)
    log = tmp_path / "shadow.jsonl"
    args = ["--bundle", bundle_file, "--data", folder, "--log", log, "--now", now.isoformat(), "--once"]
    proc = subprocess.run(
        [sys.executable, EXAMPLES / "minimal_bot.py", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"the candle of {(due + BAR).isoformat()} is still forming: not scored" in proc.stderr
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert _valid(line) == [], line
    assert line["time"] == due.isoformat() and line["error"] is None and line["probabilities"] is not None
    alone = _alone(Scorer(read_bundle(bundle_file.read_bytes())), market, due)
    assert line["probabilities"] == alone.probabilities and line["gate"] == alone.gate
    (decision,) = [json.loads(x) for x in proc.stdout.splitlines()]
    assert decision["time"] == due.isoformat()
    assert (decision["side"], decision["size"]) == _expected(line, "skip")
    assert decision["why"].startswith(f"trade gate ({line['gate']['path']})")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "macd"])
def test_the_decision_is_the_gates_or_the_no_answer_policys(
    bot, bundle_file, market, scored, tmp_path, monkeypatch, policy
):
    """One tick each on a crossover the gate takes, one it refuses, a candle without a crossover, and a crossover
    scored by the expired model (no probability): the gate decides the first three, NO_ML_ANSWER the last."""
    monkeypatch.setattr(bot, "NO_ML_ANSWER", policy)
    scorer = Scorer(read_bundle(bundle_file.read_bytes()))
    log = tmp_path / "shadow.jsonl"
    cases = {
        "taken": _pick(scored, signal=True, answered=True, taken=True),
        "refused": _pick(scored, signal=True, answered=True, taken=False),
        "quiet": _pick(scored, signal=False, answered=True),
        "expired": _pick(scored, signal=True, answered=False),
    }
    assert "expired" in scored[cases["expired"]].flags
    decisions = {}
    for name, due in cases.items():
        folder = _exchange_at(market, due + BAR, tmp_path / name)
        decisions[name] = bot.tick(scorer, folder, log, due + BAR + timedelta(seconds=5))
        assert scorer.last_dropped == [due + BAR], "the forming candle is dropped, not scored"
    lines = dict(zip(cases, (json.loads(x) for x in log.read_text().splitlines())))
    assert [x["time"] for x in lines.values()] == [t.isoformat() for t in cases.values()]
    for name, line in lines.items():
        d = decisions[name]
        assert _valid(line) == [], line
        assert d["time"] == line["time"] and (d["side"], d["size"]) == _expected(line, policy), (name, d, line["gate"])
    taken, refused = decisions["taken"], decisions["refused"]
    assert taken["side"] == lines["taken"]["gate"]["signal"] and 0 < taken["size"] <= 1
    assert refused["side"] == 0 and decisions["quiet"]["side"] == 0
    assert lines["expired"]["probabilities"] is None and "model expired" in lines["expired"]["reason"]
    signal = lines["expired"]["gate"]["signal"]
    assert decisions["expired"]["side"] == (signal if policy == "macd" else 0)
    assert policy in decisions["expired"]["why"]


@pytest.mark.slow
def test_late_candles_are_an_error_line_and_no_trade(bot, bundle_file, market, scored, tmp_path, capsys):
    """The exchange has not published the candle that closed: the bot trades nothing on the older one, and logs
    the shadow's error line for the candle it expected."""
    scorer = Scorer(read_bundle(bundle_file.read_bytes()))
    due = _pick(scored, signal=False, answered=True)
    folder = _exchange_at(market, due - BAR, tmp_path / "late")  # the newest candle it has opened an hour early
    log = tmp_path / "shadow.jsonl"
    assert bot.tick(scorer, folder, log, due + BAR + timedelta(seconds=5)) is None
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert _valid(line) == [], line
    assert line["time"] == due.isoformat() and line["error"]["kind"] == "DataError" and line["path"] == "none"
    assert f"not {due}" in line["error"]["message"] and "not scored: DataError" in capsys.readouterr().err


@pytest.mark.slow
def test_the_loop_sleeps_until_a_few_seconds_after_the_next_close(bot, bundle_file, market, tmp_path, monkeypatch):
    slept = []

    class Stop(Exception):
        pass

    def sleep(seconds):
        slept.append(seconds)
        raise Stop

    monkeypatch.setattr(bot.time, "sleep", sleep)
    with pytest.raises(Stop):
        bot.main(["--bundle", str(bundle_file), "--data", str(market), "--log", str(tmp_path / "s.jsonl")])
    (seconds,) = slept
    assert 0 < seconds <= 3600 + bot.CLOSE_DELAY.total_seconds()
    wake = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    assert (wake.minute, wake.second) in {(0, s) for s in range(3, 8)}, wake


def test_the_bot_refuses_a_missing_bundle_naming_it(bot, tmp_path, capsys):
    missing = tmp_path / "nope.tar.gz"
    assert bot.main(["--bundle", str(missing), "--data", str(tmp_path), "--log", str(tmp_path / "s"), "--once"]) == 2
    assert str(missing) in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- no look-ahead


def _perturbed_after(frames: dict[str, pl.DataFrame], t: datetime, seed: int = 0) -> dict[str, pl.DataFrame]:
    """The same candles, every one after ``t`` moved by a random factor (prices together, so still valid)."""
    rng = np.random.default_rng(seed)
    out = {}
    for sym, f in frames.items():
        later = (f["timestamp"] > t).to_numpy()
        k = pl.Series(np.where(later, rng.uniform(0.8, 1.25, f.height), 1.0))
        out[sym] = f.with_columns(*(pl.col(c) * k for c in ("open", "high", "low", "close", "volume")))
    return out


def _answer(bar) -> dict:
    return {k: v for k, v in bar.to_json().items() if k != "latency_ms"}


def _same_gate(a: dict, b: dict) -> bool:
    """Equal gate answers; q (and a size made from it) to float noise: the candle alone has 800 candles of
    history, in a batch more, and recursive indicators forget the older ones to ~1e-9 (docs/bot-contract.md)."""
    close = [k for k in ("q", "size") if a[k] is not None and b[k] is not None]
    return {k: v for k, v in a.items() if k not in close} == {k: v for k, v in b.items() if k not in close} and all(
        abs(a[k] - b[k]) < 1e-6 for k in close
    )


@pytest.mark.slow
def test_scoring_a_whole_history_at_once_has_no_look_ahead(bundle_file):
    """What a backtester does (freqtrade's populate_indicators sees the whole history): Scorer.score(..., last=N).
    Changing every candle after t changes no answer up to t (and does change later ones); each answer equals the
    candle's answer scored alone with only the candles up to it."""
    data = real_data_or_skip()
    scorer = Scorer(read_bundle(bundle_file.read_bytes()), serving={"max_model_age_hours": 0})  # no expiry
    m = load_market(data, scorer.target, scorer.cross)
    frames = {c.symbol: c.frame.tail(3_000) for c in (m.target, *m.cross)}
    n = 1_200
    before = scorer.score(frames, last=n)
    t = before[n // 2].timestamp
    after = scorer.score(_perturbed_after(frames, t), last=n)
    assert [b.timestamp for b in before] == [a.timestamp for a in after]
    assert sum(b.probabilities is not None and b.gate["signal"] != 0 for b in before[: n // 2]) > 10
    for b, a in zip(before, after):
        if b.timestamp <= t:
            assert _answer(b) == _answer(a), b.timestamp
    assert any(_answer(b) != _answer(a) for b, a in zip(before, after) if b.timestamp > t), "the change reached"
    for b in before[n // 2 - 40 : n // 2 + 1 : 4]:  # and each is the candle's own answer at its close
        alone = scorer.score({s: f.filter(pl.col("timestamp") <= b.timestamp) for s, f in frames.items()}, last=1)[0]
        assert alone.timestamp == b.timestamp and _same_gate(alone.gate, b.gate) and alone.path == b.path
        if b.probabilities is not None:
            assert alone.probabilities == pytest.approx(b.probabilities, abs=1e-6)


# --------------------------------------------------------------------------------------------- freqtrade


@contextmanager
def _logging_kept():
    """freqtrade's configuration loader sets up logging for the whole process: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {n: lg.disabled for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for n, disabled in loggers.items():
            logging.getLogger(n).disabled = disabled


def _freqtrade():
    return pytest.importorskip(
        "freqtrade", reason="freqtrade is not installed (make freqtrade installs it; docs/examples.md)"
    )


def _write_freqtrade_data(frames: dict[str, pl.DataFrame], datadir: Path) -> Path:
    """The candles as freqtrade's own data files (its feather data handler), pair names as freqtrade has them."""
    from freqtrade.data.history import get_datahandler

    handler = get_datahandler(datadir, "feather")
    for sym, f in frames.items():
        df = f.rename({"timestamp": "date"}).select("date", "open", "high", "low", "close", "volume").to_pandas()
        handler.ohlcv_store(f"{sym.removesuffix('USDT')}/USDT", "1h", df, candle_type="spot")
    return datadir


class Freqtrade:
    """The example strategy as freqtrade loads it for a backtest, on freqtrade's data files of some candles."""

    def __init__(self, bundle: Path, frames: dict[str, pl.DataFrame], where: Path, serving: dict | None = None):
        from freqtrade.configuration import Configuration
        from freqtrade.data.dataprovider import DataProvider
        from freqtrade.data.history import load_pair_history
        from freqtrade.enums import RunMode
        from freqtrade.resolvers import StrategyResolver

        datadir = _write_freqtrade_data(frames, where / "data")
        (where / "user_data").mkdir()  # what `freqtrade create-userdir` makes first
        args = {
            "config": [str(EXAMPLES / "freqtrade" / "config.json")],
            "strategy_path": str(EXAMPLES / "freqtrade"),
            "datadir": str(datadir),
            "user_data_dir": str(where / "user_data"),
        }
        with _logging_kept():
            config = Configuration(args, RunMode.BACKTEST).get_config()
        config["macd_ml"] = {"bundle": str(bundle), "serving": serving or {}}
        self.strategy = StrategyResolver.load_strategy(config)
        self.strategy.dp = DataProvider(config, None)
        self.strategy.ft_bot_start()
        self.ns = type(self.strategy).populate_indicators.__globals__  # the strategy file's names (freqtrade
        # loads it under its own name, outside sys.modules)
        self.pair = config["exchange"]["pair_whitelist"][0]
        self.candles = load_pair_history(self.pair, "1h", datadir, data_format="feather")  # gaps filled, as freqtrade

    def analyze(self):
        """populate_indicators, then the entry and exit columns, as freqtrade's backtester calls them."""
        df = self.strategy.advise_all_indicators({self.pair: self.candles})[self.pair]
        return self.strategy.ft_advise_signals(df, {"pair": self.pair})


@pytest.fixture(scope="module")
def real_frames() -> dict[str, pl.DataFrame]:
    m = load_market(real_data_or_skip(), "ETHUSDT", ["BTCUSDT"])
    return {c.symbol: c.frame.tail(8_000) for c in (m.target, *m.cross)}  # 2023-03-24's gap included


@pytest.fixture(scope="module")
def analyzed(bundle_file, real_frames, tmp_path_factory):
    _freqtrade()
    ft = Freqtrade(bundle_file, real_frames, tmp_path_factory.mktemp("ft"), serving={"max_model_age_hours": 0})
    return ft, ft.analyze()


@pytest.mark.slow
def test_the_strategy_answers_each_candle_as_the_scorer_does_at_its_close(analyzed, bundle_file, real_frames):
    ft, df = analyzed
    assert len(df) == len(ft.candles) and set(ft.ns["ANSWER"]) <= set(df.columns)
    made_up = ft.ns["made_up"](df).to_numpy()
    assert made_up.sum() >= 1, "freqtrade filled the real gaps with made-up candles"
    assert not df.loc[made_up, "ml_answer"].any() and (df.loc[made_up, "ml_path"] == "").all()
    scored = df["ml_path"] != ""
    assert (df.loc[scored, "ml_signal"] == df.loc[scored, "macd_cross"]).all(), "its MACD is the gate's"
    assert df["ml_answer"].sum() > 4_000 and (df["ml_signal"] != 0).sum() > 300
    scorer = Scorer(read_bundle(bundle_file.read_bytes()), serving={"max_model_age_hours": 0})
    signals = df.index[(df["ml_signal"] != 0) & df["ml_answer"]]
    for i in [*signals[-6:], *df.index[scored][-3:]]:  # each row: the candle scored alone at its close
        t = df.at[i, "date"].to_pydatetime()
        alone = scorer.score({s: f.filter(pl.col("timestamp") <= t) for s, f in real_frames.items()}, last=1)[0]
        assert alone.timestamp == t
        row = df.loc[i]
        assert (row["ml_answer"], row["ml_signal"]) == (alone.probabilities is not None, alone.gate["signal"])
        assert (row["ml_take"], row["ml_path"]) == (alone.gate["take"], alone.gate["path"])
        assert row["ml_size"] == pytest.approx(alone.gate["size"], abs=1e-6)
        assert row["ml_flags"] == ",".join(alone.flags)


@pytest.mark.slow
def test_the_strategy_enters_on_gated_crossings_and_exits_on_the_opposite_one(analyzed, monkeypatch):
    ft, df = analyzed
    up, answered, take = df["macd_cross"] == 1, df["ml_answer"].astype(bool), df["ml_take"].astype(bool)
    entries = df["enter_long"].fillna(0) == 1
    assert ft.ns["NO_ML_ANSWER"] == "skip"
    assert (entries == (up & answered & take)).all() and entries.sum() > 50
    assert ((df["exit_long"].fillna(0) == 1) == (df["macd_cross"] == -1)).all()
    assert (up & ~answered).sum() > 0, "some crossings have no ML answer (the warm-up after a gap)"
    monkeypatch.setitem(ft.ns, "NO_ML_ANSWER", "macd")
    again = ft.strategy.populate_entry_trend(df.drop(columns=["enter_long"]).copy(), {"pair": ft.pair})
    assert ((again["enter_long"].fillna(0) == 1) == (up & (take | ~answered))).all()

    # the stake: the gate's size of the signal candle, the newest candle the backtester shows the strategy when it
    # enters at the next open (its DataProvider's cache and slice, set as freqtrade's backtesting loop sets them)
    i = df.index[entries][-1]
    ft.strategy.dp._set_cached_df(ft.pair, "1h", df, ft.strategy.config["candle_type_def"])
    ft.strategy.dp._set_dataframe_max_index(ft.pair, df.index.get_loc(i) + 1)
    assert ft.strategy.dp.get_analyzed_dataframe(ft.pair, "1h")[0]["date"].iat[-1] == df.at[i, "date"]
    stake = ft.strategy.custom_stake_amount(
        pair=ft.pair, current_time=df.at[i, "date"], current_rate=1.0, proposed_stake=100.0, min_stake=1.0,
        max_stake=1_000.0, leverage=1.0, entry_tag=None, side="long",
    )  # fmt: skip
    assert stake == pytest.approx(100.0 * df.at[i, "ml_size"])

    # the exit after the gate's horizon, the trade the gate learnt from (on a real freqtrade trade)
    from freqtrade.persistence import LocalTrade

    opened = df.at[i, "date"] + BAR
    trade = LocalTrade(
        pair=ft.pair, open_rate=1.0, amount=1.0, stake_amount=100.0, open_date=opened, fee_open=0.001,
        fee_close=0.001, exchange="binance", is_open=True,
    )  # fmt: skip
    hours = int(ft.strategy.scorer.trade_gate.horizon)
    exits = [ft.strategy.custom_exit(ft.pair, trade, opened + k * BAR, 1.0, 0.0) for k in range(hours + 1)]
    assert exits == [None] * hours + ["gate_horizon"]


@pytest.mark.slow
def test_the_strategy_has_no_look_ahead(analyzed, bundle_file, real_frames, tmp_path):
    """freqtrade hands populate_indicators the whole history: with every candle after t changed (the pair's and the
    informative pair's, in freqtrade's data files), no column up to t changes."""
    ft, df = analyzed
    t = df.at[df.index[-1500], "date"].to_pydatetime()
    other = Freqtrade(bundle_file, _perturbed_after(real_frames, t), tmp_path, serving={"max_model_age_hours": 0})
    moved = other.analyze()
    cols = ["macd_cross", *ft.ns["ANSWER"], "enter_long", "exit_long"]
    upto = df["date"] <= t
    assert len(moved) == len(df) and (moved["date"] == df["date"]).all()
    assert moved.loc[upto, cols].fillna(0).equals(df.loc[upto, cols].fillna(0))
    assert not moved.loc[~upto, cols].fillna(0).equals(df.loc[~upto, cols].fillna(0)), "the change reached"

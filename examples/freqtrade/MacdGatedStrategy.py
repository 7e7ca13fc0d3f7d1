"""A freqtrade strategy: MACD(12, 26, 9) crossings, long only, the entries gated by a macd-ml bundle
(docs/examples.md, "freqtrade").

    MACD_ML_BUNDLE=bundle.tar.gz freqtrade trade --config examples/freqtrade/config.json \
        --strategy-path examples/freqtrade          # dry run; backtesting needs the exchange's API too

- **Entry**: the MACD line crosses above its signal line at a candle's close, and the bundle's trade gate takes the
  trade (``ml_take``; docs/trade-gate.md). Where the bundle gives no answer for the candle (``ml_answer`` false: a
  model past its age, a candle unlike the training data with fallback on, a candle without features), the policy
  ``NO_ML_ANSWER`` decides: ``"macd"`` trades the plain MACD rule, ``"skip"`` does not trade.
- **Size**: the gate's size (``ml_size``, a fraction of the stake; 1 unless the run shipped ``meta_sized``).
- **Exit**: the opposite crossing, or after the gate's horizon in hours, the trade the gate learnt from.

The bundle is loaded once (``bot_start``): ``$MACD_ML_BUNDLE``, else the config's ``macd_ml.bundle``; it is
verified against ``$MACD_ML_TRUSTED_KEYS`` (docs/bot-contract.md, "Trust"). ``macd_ml.serving`` (optional) overrides
the run's policy for expired models and unfamiliar candles (serving/guards.py), e.g. ``{"max_model_age_hours": 0}``
to backtest one bundle over a long history.

**No look-ahead.** In backtesting ``populate_indicators`` sees the whole history at once. Each candle's answer
uses only candles up to its own close: the Scorer's features at candle t read candles <= t (tests/test_examples.py
checks that changing every later candle changes no earlier answer), the cross symbol's candles are joined by time,
and the history is scored in chunks, each cut at its newest candle.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from freqtrade.strategy import IStrategy
from pandas import DataFrame

from macd_ml.serving import Scorer

NO_ML_ANSWER = "skip"  # "skip": no trade without an answer from the bundle; "macd": the plain MACD rule trades
CHUNK = 2000  # candles scored per Scorer call (bounds the memory of models that read windows of candles)
OHLCV = ["date", "open", "high", "low", "close", "volume"]
# the bundle's answer per candle: did it answer (probabilities), the gate's MACD signal, take, size and path, the
# candle's flags ("expired", "unfamiliar"); NOTHING where it did not score the candle
NOTHING = {"ml_answer": False, "ml_signal": 0, "ml_take": False, "ml_size": 0.0, "ml_path": "", "ml_flags": ""}
ANSWER = list(NOTHING)


def symbol(pair: str) -> str:
    """freqtrade's "ETH/USDT" (or "ETH/USDT:USDT") as the bundle names it: "ETHUSDT"."""
    return pair.split(":")[0].replace("/", "").upper()


def macd_crossings(close, fast: int = 12, slow: int = 26, signal: int = 9) -> np.ndarray:
    """+1 where the MACD line crosses above its signal line at a candle's close, -1 below, else 0; the project's
    MACD (EMAs seeded with the first close, as pandas' adjust=False), the first ``slow`` candles left out."""
    line = close.ewm(span=fast, adjust=False).mean() - close.ewm(span=slow, adjust=False).mean()
    hist = (line - line.ewm(span=signal, adjust=False).mean()).to_numpy()
    prev = np.concatenate([[np.nan], hist[:-1]])
    out = np.where((hist > 0) & (prev <= 0), 1, np.where((hist < 0) & (prev >= 0), -1, 0))
    out[:slow] = 0
    return out


def made_up(df: DataFrame):
    """The rows freqtrade makes up for missing candles (volume 0, open = high = low = close): the bundle sees a
    gap as a gap, as in training, so neither it nor the MACD reads them."""
    return (df["volume"] == 0) & (df["open"] == df["high"]) & (df["high"] == df["low"]) & (df["low"] == df["close"])


def real_candles(df: DataFrame) -> pl.DataFrame:
    """The candles as the Scorer reads them: the OHLCV columns of the rows not made up."""
    return pl.from_pandas(df.loc[~made_up(df), OHLCV])


class MacdGatedStrategy(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    can_short = False
    minimal_roi = {"0": 100.0}  # no ROI exit: the MACD rule exits
    stoploss = -0.99  # no stop-loss: the MACD rule exits
    use_exit_signal = True
    process_only_new_candles = True
    startup_candle_count = 1000  # 800 candles of history make the features equal the run's (docs/bot-contract.md)

    def bot_start(self, **kwargs) -> None:
        conf = self.config.get("macd_ml") or {}
        path = os.environ.get("MACD_ML_BUNDLE") or conf.get("bundle")
        if not path:
            raise ValueError("no bundle: set MACD_ML_BUNDLE or macd_ml.bundle in the freqtrade config")
        self.scorer = Scorer.load(path, serving=conf.get("serving"))
        if self.scorer.trade_gate is None:
            raise ValueError(f"{path}: ships no trade gate (its run had gate.enabled=false); this strategy needs one")
        self.horizon = timedelta(hours=int(self.scorer.trade_gate.horizon))  # the gate's trades end here

    def informative_pairs(self):
        quote = self.config["stake_currency"]
        pairs = []
        for sym in self.scorer.cross:
            if not sym.endswith(quote):
                raise ValueError(f"the bundle's cross symbol {sym} is not quoted in the stake currency {quote}")
            pairs.append((f"{sym.removesuffix(quote)}/{quote}", self.timeframe))
        return pairs

    # -- the bundle's answer per candle

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        real = ~made_up(dataframe)
        dataframe["macd_cross"] = 0
        dataframe.loc[real, "macd_cross"] = macd_crossings(dataframe.loc[real, "close"])
        answers = self.ml_answers(dataframe, metadata["pair"])
        for col in ANSWER:
            dataframe[col] = [a[col] for a in answers]
        return dataframe

    def ml_answers(self, dataframe: DataFrame, pair: str) -> list[dict]:
        """The bundle's answer for each row of ``dataframe`` (the ``ANSWER`` columns); a row it did not score (a
        made-up row, another pair than the bundle's target, too little history) answers nothing."""
        frames = {self.scorer.target: real_candles(dataframe)}
        times = frames[self.scorer.target]["date"]
        if symbol(pair) != self.scorer.target or len(times) < self.scorer.bars_needed:
            return [dict(NOTHING) for _ in range(len(dataframe))]
        for (cross_pair, _), sym in zip(self.informative_pairs(), self.scorer.cross):
            frames[sym] = real_candles(self.dp.get_pair_dataframe(cross_pair, self.timeframe))
        by_time: dict[datetime, dict] = {}
        for start in range(0, len(times), CHUNK):
            end = times[min(start + CHUNK, len(times)) - 1]  # each chunk sees candles up to its newest only
            cut = {s: f.filter(pl.col("date") <= end) for s, f in frames.items()}
            for bar in self.scorer.score(cut, last=min(CHUNK, len(times) - start)):
                gate = bar.gate or {}
                by_time[bar.timestamp] = {
                    "ml_answer": bar.probabilities is not None,
                    "ml_signal": int(gate.get("signal", 0)),
                    "ml_take": bool(gate.get("take", False)),
                    "ml_size": float(gate.get("size", 0.0)),
                    "ml_path": gate.get("path", ""),
                    "ml_flags": ",".join(bar.flags),
                }
        return [by_time.get(t.to_pydatetime(), dict(NOTHING)) for t in dataframe["date"]]

    # -- entries, exits, size

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        gate = dataframe["ml_take"].where(dataframe["ml_answer"], NO_ML_ANSWER == "macd")
        dataframe.loc[(dataframe["macd_cross"] == 1) & gate.astype(bool), "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["macd_cross"] == -1, "exit_long"] = 1
        return dataframe

    def custom_exit(self, pair, trade, current_time, current_rate, current_profit, **kwargs):
        if current_time - trade.open_date_utc >= self.horizon:  # docs/trade-gate.md, "Trade-outcome labels"
            return "gate_horizon"
        return None

    def custom_stake_amount(self, pair, current_time, current_rate, proposed_stake, min_stake, max_stake, **kwargs):
        df, _ = self.dp.get_analyzed_dataframe(pair, self.timeframe)
        size = float(df["ml_size"].iat[-1]) if len(df) and df["ml_answer"].iat[-1] else 1.0
        return min(max_stake, max(min_stake or 0.0, proposed_stake * size))

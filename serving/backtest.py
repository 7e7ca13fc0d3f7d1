"""``macd-ml backtest``: the holdout backtest of a run (models/evaluation/backtest.py) on any span it did not train
on, and the chain of promoted runs stitched into one equity curve.

- **One run or bundle**: the bundle's ``ensemble.onnx`` scores the span's bars from raw candles (the bot's own
  path: :class:`~macd_ml.serving.scorer.Scorer`), then the MACD strategy runs always and gated, with the run's
  own threshold (chosen on its OOF rows) and backtest settings. A span that starts before the run's holdout is
  refused: those bars trained the models (or chose the stacker), so their figures would not be honest.
- **Chain** (``--chain OUT``): every promoted run stitched into one equity curve (serving/track_record.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.errors import DataError, Refused
from macd_ml.features.ingest import Candles, Market, load_market
from macd_ml.models.evaluation.backtest import BacktestSpec, bars_with_probability, evaluate, macd_signals
from macd_ml.models.gate.secondary import GateSpec
from macd_ml.serving.bundle import Bundle, build_bundle, open_bundle, read_bundle
from macd_ml.serving.guards import ONLY_FLAG
from macd_ml.serving.scorer import Scorer


@dataclass
class Source:
    """A bundle and what the backtest reads from it."""

    bundle: Bundle
    horizon: int
    threshold: float
    spec: BacktestSpec
    holdout_first: datetime
    data_last: datetime
    gate: dict | None = None  # the run's trade gate (trade_gate.json), when it has one
    gate_spec: GateSpec = field(default_factory=GateSpec)  # its sizing settings

    @classmethod
    def load(cls, path: Path | str, trust=None) -> "Source":
        """A bundle file (verified against ``trust``), or a run folder of this machine (bundled and signed here,
        its manifest's HMAC checked)."""
        from macd_ml.serving.trust import Trust, public_key_path, publish_signer

        p = Path(path)
        if p.is_dir():
            signer = publish_signer(create=True, out_dir=p.resolve().parent.parent)
            own = Trust([signer.public_key], source=str(public_key_path()))
            bundle = read_bundle(build_bundle(p, signer), str(p), signed=True, trust=own)
        else:
            bundle = open_bundle(p, trust)
        config, metrics = bundle.json(catalog.CONFIG), bundle.json(catalog.METRICS)
        h = (config.get("health") or {}).get("primary_horizon") or metrics["horizons"][0]
        bt = metrics.get("backtest") or {}
        if "threshold" not in bt:
            raise Refused(f"{p}: run {bundle.run_id} has no backtest threshold (trained before backtests existed)")
        return cls(
            bundle=bundle,
            horizon=int(h),
            threshold=float(bt["threshold"]),
            spec=BacktestSpec.model_validate(config.get("backtest") or {}),
            holdout_first=datetime.fromisoformat(metrics["holdout"]["first"]),
            data_last=datetime.fromisoformat(metrics["input"]["span"][metrics["target"]][1]),
            gate=bundle.json(catalog.TRADE_GATE) if catalog.TRADE_GATE in bundle.members else None,
            gate_spec=GateSpec.model_validate(config.get("gate") or {}),
        )


def scores(scorer: Scorer, market: Market, first: datetime, last: datetime, h: int) -> pl.DataFrame:
    """The shipped probability at ``h`` for every target bar in [first, last] (null where nothing scored), and the
    trade gate's probability ``q`` where the bundle has a gate and the bar a MACD signal it scored."""
    frame = market.target.frame
    upto = frame.filter(pl.col(catalog.TIMESTAMP) <= last)
    n = upto.filter(pl.col(catalog.TIMESTAMP) >= first).height
    schema: dict = {catalog.TIMESTAMP: frame[catalog.TIMESTAMP].dtype, "p": pl.Float64, "q": pl.Float64}
    if n == 0:
        return pl.DataFrame(schema=schema)
    cut = Market(
        Candles(market.target.symbol, market.target.path, market.target.sha256, upto),
        tuple(
            Candles(c.symbol, c.path, c.sha256, c.frame.filter(pl.col(catalog.TIMESTAMP) <= last)) for c in market.cross
        ),
    )
    bars = scorer.score(cut, last=n)
    return pl.DataFrame(
        {
            catalog.TIMESTAMP: [b.timestamp for b in bars],
            "p": [None if b.probabilities is None else b.probabilities[str(h)] for b in bars],
            "q": [None if b.gate is None else b.gate.get("q") for b in bars],
        },
        schema=schema,
    )


def span_time(text: str | None, default: datetime, tz) -> datetime:
    if not text:
        return default
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        from macd_ml.errors import ConfigError

        raise ConfigError(f"--since/--until {text!r}: not an ISO time (e.g. 2024-06-01 or 2024-06-01T12:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=tz)


def backtest_span(source: Source, data_dir: str, first: str | None = None, last: str | None = None) -> dict:
    """The run's backtest on [first, last] (default: its holdout start to the newest bar)."""
    scorer = Scorer(source.bundle, serving=ONLY_FLAG)  # the model as it is, not the bot's fallbacks
    market = load_market(data_dir, scorer.target, scorer.cross)
    candles = market.target.frame
    tz = source.holdout_first.tzinfo
    start = span_time(first, source.holdout_first, tz)
    end = span_time(last, candles[catalog.TIMESTAMP][-1], tz)
    if start < source.holdout_first:
        raise Refused(
            f"run {source.bundle.run_id} trained on bars up to its holdout ({source.holdout_first.isoformat()}); "
            f"a backtest from {start.isoformat()} would score bars it learned from. Start at or after its holdout"
        )
    if end <= start:
        raise DataError(data_dir, f"the span {start.isoformat()} .. {end.isoformat()} is empty")
    probs = scores(scorer, market, start, end, source.horizon)
    bars = bars_with_probability(candles, probs)
    signals = macd_signals(bars["close"], source.spec)
    out = evaluate(bars, signals, source.horizon, source.threshold, source.spec, (start, end))
    out["run_id"] = source.bundle.run_id
    return out

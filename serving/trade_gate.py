"""The trade gate on the bot's side (docs/trade-gate.md, docs/bot-contract.md): for each scored bar, is there a MACD
signal, and does the shipped gate take it, at what size, by which path and why.

``BarScore.gate`` (JSON):

- ``signal``: +1 (MACD crossed up at this bar's close), -1 (down), 0 (none);
- ``kind``: the gate the run shipped (``none``, ``direction``, ``meta``, ``meta_sized``);
- ``take`` (bool), ``size`` (fraction of a unit position; 0 when not taken);
- ``q``: the secondary model's probability that the trade makes money (``onnx/gate.onnx``), when it scored;
- ``path``: ``none`` (no gate ships: every signal is taken), ``direction``, ``meta``, ``direction-fallback``
  (the meta gate could not score this bar: the direction gate decided), ``no-signal``, ``no-probability``;
- ``reason``: one line saying why.

The decision is :func:`macd_ml.models.gate.choice.decide`, the same function the run's choice and backtests use.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.trades import strength, volatility
from macd_ml.models.evaluation.backtest import BacktestSpec, macd_signals_and_histogram
from macd_ml.models.gate.choice import decide
from macd_ml.models.gate.secondary import SIDE, STRENGTH, GateSpec


class TradeGate:
    def __init__(self, doc: dict, graph: bytes | None, backtest: BacktestSpec, spec: GateSpec, check=None):
        self.doc = doc
        self.kind = doc["kind"]
        self.horizon = str(doc["horizon"])
        self.thresholds = doc["thresholds"]
        self.backtest, self.spec = backtest, spec
        self.inputs: list[str] = list((doc.get("model") or {}).get("inputs") or [])
        self.session = None
        if graph is not None:
            from macd_ml.models.release.scoring import session

            if check is not None:  # the scorer's refusal of graphs that read files or run custom code
                check(graph, catalog.GATE_ONNX)
            self.session = session(graph)[0]

    @classmethod
    def from_bundle(cls, bundle, check=None) -> TradeGate | None:
        if catalog.TRADE_GATE not in bundle.members:
            return None
        config = bundle.json(catalog.CONFIG) if catalog.CONFIG in bundle.members else {}
        return cls(
            bundle.json(catalog.TRADE_GATE),
            bundle.members.get(catalog.GATE_ONNX),
            BacktestSpec.model_validate(config.get("backtest") or {}),
            GateSpec.model_validate(config.get("gate") or {}),
            check,
        )

    def answer(self, candles: pl.DataFrame, complete: pl.DataFrame, scores: list) -> None:
        """Set ``gate`` on each of ``scores`` (bars of ``candles``, the target's tail; ``complete``: its feature
        rows)."""
        ts = candles[catalog.TIMESTAMP]
        close = candles["close"].cast(pl.Float64).to_numpy()
        signals, hist = macd_signals_and_histogram(candles["close"], self.backtest)
        power = strength(hist, close, volatility(close))
        at = {t: i for i, t in enumerate(ts.to_list())}
        rows = {t: i for i, t in enumerate(complete[catalog.TIMESTAMP].to_list())}
        names = self.inputs[: self.inputs.index(SIDE)] if self.inputs else []  # the features come first
        X = complete.select(names).to_numpy().astype(np.float64) if names and complete.height else None
        for bar in scores:
            i = at.get(bar.timestamp)
            side = int(signals[i]) if i is not None else 0
            bar.gate = self._one(bar, side, float(power[i]) if i is not None else float("nan"), rows, X)

    def _one(self, bar, side: int, power: float, rows: dict, X) -> dict:
        out = {"signal": side, "kind": self.kind, "take": False, "size": 0.0, "q": None}
        if side == 0:
            return {**out, "path": "no-signal", "reason": "no MACD crossover at this bar"}
        q = self._q(bar, side, power, rows, X)  # whatever ships: q is part of the answer (and of the record)
        out["q"] = None if np.isnan(q[0]) else float(q[0])
        if self.kind == "none":
            return {**out, "take": True, "size": 1.0, "path": "none", "reason": self.doc.get("reason", "")}
        p = None if bar.probabilities is None else bar.probabilities.get(self.horizon)
        p_arr = np.array([np.nan if p is None else p])
        sig = np.array([side])
        kind, path, why = self.kind, self.kind, ""
        if self.kind.startswith("meta") and out["q"] is None:
            missing = (
                "no gate graph"
                if self.session is None
                else "no complete feature row for this bar"
                if X is None or rows.get(bar.timestamp) is None
                else "no primary probability"
            )
            kind, path, why = "direction", "direction-fallback", f"the meta gate cannot score this bar ({missing}); "
        if kind == "direction" and p is None:
            return {**out, "path": "no-probability", "reason": why + "the ensemble gave no probability for this bar"}
        take, size = decide(
            kind,
            sig,
            p_arr,
            q,
            self.thresholds["direction"],
            self.thresholds.get("meta") or 1.0,
            self.spec,
        )
        taken = bool(take[0])
        out.update(take=taken, size=float(size[0]) if (size is not None and taken) else (1.0 if taken else 0.0))
        if kind == "direction":
            pd = p if side > 0 else 1 - p  # type: ignore[operator]
            cmp = ">=" if taken else "<"
            why += f"P(signal's direction at {self.horizon} h) {pd:.3f} {cmp} {self.thresholds['direction']}"
        else:
            why += f"P(trade pays) {out['q']:.3f} {'>=' if taken else '<'} {self.thresholds['meta']:.4f}"
        return {**out, "path": path, "reason": why}

    def _q(self, bar, side: int, power: float, rows: dict, X) -> np.ndarray:
        """The secondary model's probability for this signal bar (``onnx/gate.onnx``), NaN where it cannot score."""
        r = rows.get(bar.timestamp)
        if self.session is None or X is None or r is None or bar.probabilities is None:
            return np.array([np.nan])
        horizons = [n.removeprefix("p_h") for n in self.inputs[self.inputs.index(STRENGTH) + 1 :]]  # then the probs
        probs = [bar.probabilities.get(h, np.nan) for h in horizons]
        x = np.concatenate([X[r], [side, power], probs]).astype(np.float32).reshape(1, -1)
        return self.session.run(None, {"x": x})[0][:, 0].astype(np.float64)

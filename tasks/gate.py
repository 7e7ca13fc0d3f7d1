"""Trade gate task: meta-labels of the MACD trades, the secondary model, the choice on out-of-fold trades and
``onnx/gate.onnx`` with its parity (models/gate/, docs/trade-gate.md)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_bytes, write_json, write_parquet
from macd_ml.models.evaluation.backtest import BacktestSpec
from macd_ml.models.gate.secondary import GateSpec
from macd_ml.models.gate.train import PanelCandles, out_of_sample_probs, train_gate
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import MarketRef, PanelMember, TableRef, reload_market
from macd_ml.tasks.results import cached_task, result_type

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


@result_type
class GateResult(BaseModel):
    summary: dict  # trade_gate.json without the model's coefficients (for metrics.json and the report)
    files: dict[str, ArtifactRef]  # trade_gate.json, onnx/gate.onnx (when a model was fitted), gate_trades.parquet


def gate_parity(onnx_bytes: bytes, model, X: np.ndarray) -> dict:
    """``onnx/gate.onnx`` against the native model on the same rows (float32 in, as the bot feeds it)."""
    from macd_ml.models.release.scoring import session

    sess, _ = session(onnx_bytes)
    X32 = X.astype(np.float32)
    native = model.predict(X32.astype(np.float64))
    onnx_q = sess.run(None, {"x": X32})[0][:, 0] if len(X32) else np.zeros(0)
    worst = float(np.max(np.abs(onnx_q - native))) if len(X32) else 0.0
    return {"rows": int(len(X32)), "max_abs": worst, "tolerance": PARITY_TOLERANCE, "passed": worst <= PARITY_TOLERANCE}


@cached_task(name="trade-gate")
def gate_task(
    market: MarketRef,
    features: TableRef,
    stack_files: dict[str, ArtifactRef],
    panel: list[PanelMember],
    horizons: list[int],
    horizon: int,
    backtest: BacktestSpec,
    spec: GateSpec,
    embargo_hours: int,
    out_dir: str,
) -> GateResult:
    from macd_ml.models.gate.graph import gate_onnx

    candles = reload_market(market).target.frame
    table = read_parquet(features.data)
    oof_probs = out_of_sample_probs(read_parquet(stack_files[catalog.SHIPPED_OOF]), horizons)
    holdout = read_parquet(stack_files[catalog.SHIPPED_HOLDOUT])
    members = (
        [
            PanelCandles(m.symbol, reload_market(m.market).target.frame, read_parquet(m.features.data))
            for m in panel
            if m.market is not None
        ]
        if spec.pooled
        else []
    )
    outcome = train_gate(
        candles,
        table,
        features.names,
        oof_probs,
        holdout,
        members,
        horizons,
        horizon,
        backtest,
        spec,
        embargo_hours,
        market.target,
    )
    d = cache_dir(out_dir, "trade-gate", current_key())
    doc = outcome.doc
    files: dict[str, ArtifactRef] = {}
    if outcome.model is not None:
        data = gate_onnx(outcome.model).SerializeToString()
        rows = outcome.trades.filter(pl.col("q_holdout").is_not_null() | pl.col("q_oof").is_not_null())
        doc["parity"] = gate_parity(data, outcome.model, rows.select(outcome.model.inputs).cast(pl.Float64).to_numpy())
        files[catalog.GATE_ONNX] = write_bytes(d / catalog.GATE_ONNX, data)
    files[catalog.GATE_TRADES] = write_parquet(d / catalog.GATE_TRADES, outcome.trades)
    files[catalog.TRADE_GATE] = write_json(d / catalog.TRADE_GATE, doc)
    log.info("trade gate h=%s ships %s: %s", horizon, doc["kind"], doc["reason"])
    return GateResult(summary={k: v for k, v in doc.items() if k != "model"}, files=files)

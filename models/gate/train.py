"""The trade gate of one run, end to end (docs/trade-gate.md): signal rows with trade labels -> the secondary
model's inner walk-forward (out-of-fold probabilities) -> the choice on out-of-fold trades -> the model refitted
on every out-of-fold signal row whose trade ended before the holdout's embargo -> the holdout, for reporting only.

The holdout is handed in as its own argument and read after everything that ships is fixed: the choice and the
thresholds come from the out-of-fold span, the final model from rows purged against the holdout by their trade's
exit. Pure: frames in, frames and a JSON document out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.models.evaluation.backtest import (
    BacktestSpec,
    bars_with_probability,
    block_indices,
    choose_threshold,
    compare_gates,
    macd_signals,
)
from macd_ml.models.evaluation.stats import auc
from macd_ml.models.gate import choice as gate_choice
from macd_ml.models.gate.secondary import (
    EXIT,
    KINDS,
    LABEL,
    SYMBOL,
    GateModel,
    GateSpec,
    fit_gate,
    inner_walk_forward,
    input_names,
    prob_input,
    purged_before,
    signal_rows,
)

Q_OOF, Q_HOLDOUT = "q_oof", "q_holdout"


@dataclass(frozen=True)
class PanelCandles:
    symbol: str
    candles: pl.DataFrame
    features: pl.DataFrame


@dataclass
class GateOutcome:
    doc: dict  # trade_gate.json
    model: GateModel | None  # None: too few signal rows for a secondary model (the meta kinds are not candidates)
    trades: pl.DataFrame  # every target signal row: label, exit, q_oof / q_holdout where scored


def out_of_sample_probs(shipped_oof: pl.DataFrame, horizons: list[int]) -> pl.DataFrame:
    """timestamp + ``shipped_h{h}`` from the shipped OOF table's out-of-sample column (null where the shipped
    predictor's fitted weights saw the row): the primary probabilities the gate may learn from."""
    return shipped_oof.select(
        catalog.TIMESTAMP,
        *(pl.col(catalog.out_of_sample_column(h)).alias(catalog.shipped_column(h)) for h in horizons),
    )


def _per_bar(candles: pl.DataFrame, frame: pl.DataFrame, column: str) -> np.ndarray:
    """``frame[column]`` on the candles' bars (NaN where ``frame`` has no row)."""
    joined = candles.select(catalog.TIMESTAMP).join(
        frame.select(catalog.TIMESTAMP, pl.col(column).alias("_v")), on=catalog.TIMESTAMP, how="left"
    )
    return joined["_v"].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def _span(ts: pl.Series, first, last) -> tuple[int, int]:
    return int(ts.search_sorted(first, side="left")), int(ts.search_sorted(last, side="right"))


def train_gate(
    candles: pl.DataFrame,
    features: pl.DataFrame,
    names: list[str],
    oof_probs: pl.DataFrame,
    holdout_probs: pl.DataFrame,
    panel: list[PanelCandles],
    horizons: list[int],
    horizon: int,
    bt: BacktestSpec,
    spec: GateSpec,
    embargo_hours: int,
    target: str,
) -> GateOutcome:
    """``oof_probs``: timestamp + ``shipped_h{h}`` on OOF rows where it is out of sample (the stacker's
    out-of-sample column); ``holdout_probs``: the shipped holdout probabilities (the holdout's first row is where
    the holdout begins)."""
    inputs = input_names(names, horizons)
    n_prob = len(horizons)
    hold_first: datetime = holdout_probs[catalog.TIMESTAMP][0]
    hcol = prob_input(horizon)
    rows = signal_rows(
        candles, features, names, pl.concat([oof_probs, holdout_probs]), horizons, horizon, bt, spec, target
    )
    oof_first, oof_last = oof_probs[catalog.TIMESTAMP].min(), oof_probs[catalog.TIMESTAMP].max()
    ts_col = pl.col(catalog.TIMESTAMP)
    # OOF signal rows with an out-of-sample primary probability whose trade ended before the holdout began (with
    # the default embargo every OOF trade does; a label that reaches into the holdout is never read)
    oof_rows = rows.filter(
        ts_col.is_between(oof_first, oof_last) & pl.col(hcol).is_not_null() & (pl.col(EXIT) < hold_first)
    )
    hold_rows = rows.filter(ts_col >= hold_first)
    panel_rows = None
    if spec.pooled and panel:
        parts = [
            signal_rows(p.candles, p.features, names, None, horizons, horizon, bt, spec, p.symbol).filter(
                ts_col < hold_first
            )
            for p in panel
        ]
        panel_rows = pl.concat(parts) if parts else None

    ts = candles[catalog.TIMESTAMP]
    open_ = candles["open"].cast(pl.Float64).to_numpy()
    signals = macd_signals(candles["close"], bt)
    p_oof = _per_bar(candles, oof_probs, catalog.shipped_column(horizon))
    y_oof = oof_rows.filter(pl.col(LABEL).is_not_null())
    labelled = y_oof.height
    inner = None
    if labelled >= spec.min_signals:
        inner = inner_walk_forward(oof_rows, panel_rows, inputs, n_prob, target, spec, embargo_hours)
    # the choice: on the span the secondary model has out-of-fold probabilities for (else the whole OOF span)
    first = inner.test_timestamps[0] if inner is not None else oof_first
    a, b = _span(ts, first, oof_last)
    q_bar = np.full(len(ts), np.nan)
    if inner is not None:
        qf = pl.DataFrame({catalog.TIMESTAMP: pl.Series(inner.test_timestamps, dtype=ts.dtype), "q": inner.q})
        q_bar = _per_bar(candles, qf, "q")
    bars = bars_with_probability(candles, pl.DataFrame({catalog.TIMESTAMP: ts, "p": p_oof}).fill_nan(None))
    direction = choose_threshold(bars, signals, horizon, bt, (ts[a], ts[b - 1]))
    chosen = gate_choice.choose(
        open_[a:b], signals[a:b], p_oof[a:b], q_bar[a:b], direction["threshold"], horizon, bt, spec
    )

    model: GateModel | None = None
    if inner is not None:
        pool = oof_rows if panel_rows is None else pl.concat([oof_rows, panel_rows.select(oof_rows.columns)])
        train = pool.filter(purged_before(pool, hold_first, embargo_hours))
        model = fit_gate(train, inputs, n_prob, target, inner.C, spec)
        model.extra = {"n_train": train.height, "n_train_target": int((train[SYMBOL] == target).sum())}

    # ------------------------------------------------------------------ the holdout: reporting only
    q_hold = model.predict(hold_rows.select(inputs).cast(pl.Float64).to_numpy()) if model is not None else None
    holdout = _holdout(candles, signals, holdout_probs, hold_rows, q_hold, chosen, horizon, bt, spec)

    trades = rows.select(catalog.TIMESTAMP, "entry", EXIT, "barrier", "net_return", LABEL, *inputs)
    if inner is not None:
        qf = pl.DataFrame({catalog.TIMESTAMP: pl.Series(inner.test_timestamps, dtype=ts.dtype), Q_OOF: inner.q})
        trades = trades.join(qf, on=catalog.TIMESTAMP, how="left")
    else:
        trades = trades.with_columns(pl.lit(None, dtype=pl.Float64).alias(Q_OOF))
    if q_hold is not None:
        qh = pl.DataFrame({catalog.TIMESTAMP: hold_rows[catalog.TIMESTAMP], Q_HOLDOUT: q_hold})
        trades = trades.join(qh, on=catalog.TIMESTAMP, how="left")
    else:
        trades = trades.with_columns(pl.lit(None, dtype=pl.Float64).alias(Q_HOLDOUT))

    scored = trades.filter(pl.col(Q_OOF).is_not_null())
    doc = {
        "kind": chosen["kind"],
        "reason": chosen["reason"],
        "horizon": horizon,
        "label": spec.label,
        "thresholds": chosen["thresholds"],
        "sizing": {"min_size": spec.min_size, "max_size": spec.max_size},
        "model": model.to_json() if model is not None else None,
        "inner": None
        if inner is None
        else {
            "C": inner.C,
            "c_logloss": inner.c_scores,
            "n_rows": inner.n_rows,
            "n_test": len(inner.q),
            "auc": auc(
                scored[LABEL].cast(pl.Float64).to_numpy(),
                scored[Q_OOF].to_numpy(),
            ),
        },
        "signals": {
            "oof": oof_rows.height,
            "oof_labelled": y_oof.height,
            "oof_profitable": float(y_oof[LABEL].mean()) if y_oof.height else None,  # type: ignore[arg-type]
            "holdout": hold_rows.height,
            "panel": 0 if panel_rows is None else panel_rows.height,
        },
        "pooled": bool(spec.pooled and panel_rows is not None),
        "symbol_feature": spec.symbol_feature,
        "direction_threshold_scores": direction["oof_sharpe"],
        "meta_threshold_scores": chosen["meta_threshold_scores"],
        "candidates": chosen["candidates"],
        "lower_bounds": chosen["lower_bounds"],
        "oof": chosen["oof"],
        "oof_span": [ts[a].isoformat(), ts[b - 1].isoformat()],
        "holdout": holdout,
        "min_signals": spec.min_signals,
    }
    if inner is None:
        doc["note"] = (
            f"{labelled} labelled out-of-fold signal rows with primary probabilities, fewer than min_signals "
            f"({spec.min_signals}): no secondary model, the meta kinds are not candidates"
        )
    return GateOutcome(doc, model, trades)


def _holdout(candles, signals, holdout_probs, hold_rows, q_hold, chosen, horizon, bt, spec) -> dict:
    """Every kind on the holdout with the thresholds chosen on the OOF span (reported; never fed back)."""
    ts = candles[catalog.TIMESTAMP]
    a, b = _span(ts, holdout_probs[catalog.TIMESTAMP][0], holdout_probs[catalog.TIMESTAMP][-1])
    if b - a < 2:
        return {}
    p = _per_bar(candles, holdout_probs, catalog.shipped_column(horizon))[a:b]
    q = np.full(b - a, np.nan)
    if q_hold is not None:
        qf = pl.DataFrame({catalog.TIMESTAMP: hold_rows[catalog.TIMESTAMP], "q": q_hold})
        q = _per_bar(candles, qf, "q")[a:b]
    thr = chosen["thresholds"]
    gates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for kind in KINDS:
        if kind.startswith("meta") and (thr["meta"] is None or q_hold is None):
            continue
        gates[kind] = gate_choice.decide(kind, signals[a:b], p, q, thr["direction"], thr["meta"] or 1.0, spec)
    idx = block_indices(b - a, bt.block_hours or max(horizon, 24), bt.bootstrap, bt.seed)
    cmp = compare_gates(candles["open"].cast(pl.Float64).to_numpy()[a:b], signals[a:b], horizon, bt, gates, idx)
    labelled = hold_rows.filter(pl.col(LABEL).is_not_null())
    q_auc = None
    if q_hold is not None and labelled.height:
        qd = dict(zip(hold_rows[catalog.TIMESTAMP].to_list(), q_hold))
        q_auc = auc(
            labelled[LABEL].cast(pl.Float64).to_numpy(),
            np.array([qd[t] for t in labelled[catalog.TIMESTAMP].to_list()]),
        )
    return {
        "first": ts[a].isoformat(),
        "last": ts[b - 1].isoformat(),
        "bars": b - a,
        "signals": int((signals[a:b] != 0).sum()),
        "auc": q_auc,
        "kinds": {k: gate_choice.summary_of(v) for k, v in cmp["kinds"].items()},
    }

"""The secondary (meta-label) model: on MACD signal rows only, P(this trade makes money) (docs/trade-gate.md).

López de Prado's meta-labeling: the primary model (MACD) proposes the side; the secondary learns whether to take
it. Its inputs at signal bar t: the feature row of t, the signal's ``side`` and ``strength``, and the primary
ensemble's probability for the signal's direction at each horizon (``p`` for a buy, ``1 - p`` for a sell, as a
logit). Those probabilities are out-of-fold ones only (the stacking stage's out-of-sample column): a gate fitted on
in-sample primary probabilities would learn how confident an overfitted model is on rows it memorised.

The model: L2-regularised logistic regression on standardised inputs (missing inputs enter as the training mean),
its strength chosen on an inner walk-forward over the signal rows whose training rows are purged by the trade
label's *span* (``exit + embargo < block start``). Why not a tree model: signal rows are few (about one bar in
twelve), and a linear model on ~1,000 rows is the honest capacity; it also exports as a handful of ONNX nodes.

Pooled training (``pooled``): the other symbols of the candle folder add their signal rows (their own features,
each symbol standardised by its own training rows; they carry no primary probability, which enters as the
uninformative mean), purged by the same time rule; ``symbol_feature`` adds an "is the target" input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from macd_ml.artifacts import catalog
from macd_ml.features.trades import Barrier, LabelKind, strength, trade_outcomes, volatility
from macd_ml.models.ensemble.logistic import EPS, fit_logistic, sigmoid
from macd_ml.models.evaluation.backtest import BacktestSpec, macd_signals_and_histogram

GateKind = Literal["none", "direction", "meta", "meta_sized"]
KINDS: tuple[GateKind, ...] = ("none", "direction", "meta", "meta_sized")
SIDE, STRENGTH, SYMBOL, LABEL, EXIT, NET = "side", "strength", "symbol", "label", "exit", "net_return"


def prob_input(h: int | str) -> str:
    """The primary ensemble's probability for horizon ``h`` as a gate input (turned into the signal's direction)."""
    return f"p_h{h}"


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, title="Train the trade gate", description="train the trade gate (meta-labels of the MACD trades)"
    )
    label: LabelKind = Field(
        default="exit",
        title="Trade outcome label",
        description="trade outcome label: 'exit' (the bot's exits: opposite signal or the horizon) or 'barrier' "
        "(triple barrier: profit-take / stop-loss in multiples of recent volatility, the horizon as the time limit)",
    )
    profit_take: float = Field(
        default=1.0,
        gt=0,
        title="Profit-take (barrier label)",
        description="barrier label: profit-take in sigma * sqrt(horizon)",
    )
    stop_loss: float = Field(
        default=1.0,
        gt=0,
        title="Stop-loss (barrier label)",
        description="barrier label: stop-loss in sigma * sqrt(horizon)",
    )
    pooled: bool = Field(
        default=False,
        title="Pool other symbols' signals",
        description="also train on the signal rows of the candle folder's other symbols (each standardised by its "
        "own rows, purged in time like the target's)",
    )
    symbol_feature: bool = Field(
        default=False, title="Is-the-target input (pooled)", description="pooled: add an 'is the target' input"
    )
    c_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default=[0.001, 0.01, 0.1],
        min_length=1,
        title="Trade gate L2 grid (C)",
        description="inverse L2 strengths tried on the inner walk-forward (each > 0)",
    )
    inner_folds: int = Field(
        default=4,
        ge=2,
        le=10,
        title="Inner folds (trade gate)",
        description="inner walk-forward blocks over the signal rows",
    )
    min_train_fraction: float = Field(
        default=0.4,
        gt=0,
        lt=0.9,
        title="Signal share before the first inner fold",
        description="signal rows before the first inner block",
    )
    skip_shares: list[float] = Field(
        default=[0.2, 0.35, 0.5, 0.65],
        min_length=1,
        title="Skip shares tried",
        description="meta gate thresholds tried: the share of the out-of-fold signals each one skips (each strictly "
        "between 0 and 1)",
        json_schema_extra={"items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
    )
    min_size: float = Field(
        default=0.25,
        gt=0,
        le=1,
        title="Smallest position (sizing)",
        description="sizing: the smallest position a taken trade gets (at most the largest)",
    )
    max_size: float = Field(
        default=1.0, gt=0, le=1, title="Largest position (sizing)", description="sizing: the cap on a position"
    )
    beyond_noise: bool = Field(
        default=True,
        title="Ship a gate only beyond noise",
        description="a gate ships only if its out-of-fold Sharpe over 'no gate' has a bootstrap interval above 0; "
        "otherwise no gate ships (every MACD trade is taken)",
    )
    min_signals: int = Field(
        default=60,
        ge=10,
        title="Fewest signals for a meta gate",
        description="fewer labelled target signal rows with primary probabilities: no meta gate",
    )

    @model_validator(mode="after")
    def _sizes_in_order(self) -> "GateSpec":
        if self.min_size > self.max_size:
            raise ValueError(f"gate.min_size ({self.min_size}) is above gate.max_size ({self.max_size})")
        if any(not 0 < x < 1 for x in self.skip_shares):
            raise ValueError(f"gate.skip_shares {self.skip_shares}: each must be a share strictly between 0 and 1")
        return self


# --------------------------------------------------------------------------------------------- rows


def signal_rows(
    candles: pl.DataFrame,
    features: pl.DataFrame,
    names: list[str],
    probs: pl.DataFrame | None,
    horizons: list[int],
    horizon: int,
    bt: BacktestSpec,
    spec: GateSpec,
    symbol: str,
) -> pl.DataFrame:
    """The signal bars of ``candles`` that have a feature row: timestamp, symbol, side, strength, the features,
    ``p_h{h}`` (the primary probability, from ``probs``' ``shipped_h{h}``; null where absent), and the trade's
    ``exit``, ``net_return`` and ``label`` (features/trades.py) at the backtest's horizon and costs."""
    ts = candles[catalog.TIMESTAMP]
    open_ = candles["open"].cast(pl.Float64).to_numpy()
    close = candles["close"].cast(pl.Float64).to_numpy()
    signals, hist = macd_signals_and_histogram(candles["close"], bt)
    sigma = volatility(close)
    trades = trade_outcomes(
        ts, open_, close, signals, horizon, bt.cost, spec.label, Barrier(spec.profit_take, spec.stop_loss), sigma
    )
    at = np.flatnonzero(signals != 0)
    trades = trades.with_columns(
        pl.Series(STRENGTH, strength(hist, close, sigma)[at], dtype=pl.Float64), pl.lit(symbol).alias(SYMBOL)
    )
    rows = trades.join(features.select(catalog.TIMESTAMP, *names), on=catalog.TIMESTAMP, how="inner")
    pcols = [prob_input(h) for h in horizons]
    if probs is not None:
        sel = [pl.col(catalog.shipped_column(h)).alias(prob_input(h)) for h in horizons]
        rows = rows.join(probs.select(catalog.TIMESTAMP, *sel), on=catalog.TIMESTAMP, how="left")
    else:
        rows = rows.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in pcols])
    return rows.sort(catalog.TIMESTAMP)


def input_names(names: list[str], horizons: list[int]) -> list[str]:
    """The gate's raw inputs, in order: the features, side, strength, then the primary probabilities."""
    return [*names, SIDE, STRENGTH, *(prob_input(h) for h in horizons)]


def transform(X: np.ndarray, side_index: int, n_prob: int) -> np.ndarray:
    """Raw inputs -> model inputs: each primary probability becomes the logit of the signal's direction's
    probability, ``logit(0.5 + side * (p - 0.5))`` (clipped as every graph does); NaN stays NaN."""
    Z = np.array(X, dtype=np.float64, copy=True)
    if n_prob:
        side = Z[:, side_index : side_index + 1]
        p = np.clip(0.5 + side * (Z[:, -n_prob:] - 0.5), EPS, 1 - EPS)
        Z[:, -n_prob:] = np.log(p / (1 - p))
    return Z


def _stats(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std over the rows that have a value (an all-missing column: 0 and 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: handled below
        mean = np.nanmean(Z, axis=0)
        std = np.nanstd(Z, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return mean, std


def _standardise(Z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    S = (Z - mean) / std
    return np.where(np.isfinite(S), S, 0.0)  # a missing input enters as the training mean


@dataclass
class GateModel:
    """The fitted secondary model as the bot runs it: raw inputs -> P(the trade makes money)."""

    inputs: list[str]
    n_prob: int
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    C: float
    target: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def side_index(self) -> int:
        return self.inputs.index(SIDE)

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = _standardise(transform(X, self.side_index, self.n_prob), self.mean, self.std)
        return sigmoid(Z @ self.weights + self.bias)

    def to_json(self) -> dict:
        return {
            "inputs": self.inputs,
            "n_prob": self.n_prob,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "C": self.C,
            "target": self.target,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> "GateModel":
        known = {"inputs", "n_prob", "mean", "std", "weights", "bias", "C", "target"}
        return cls(
            inputs=list(d["inputs"]),
            n_prob=int(d["n_prob"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            std=np.asarray(d["std"], dtype=np.float64),
            weights=np.asarray(d["weights"], dtype=np.float64),
            bias=float(d["bias"]),
            C=float(d["C"]),
            target=str(d.get("target", "")),
            extra={k: v for k, v in d.items() if k not in known},
        )


def fit_gate(rows: pl.DataFrame, inputs: list[str], n_prob: int, target: str, C: float, spec: GateSpec) -> GateModel:
    """Fit on labelled ``rows`` (the target's and, pooled, other symbols'); each symbol standardised by its own
    rows. The returned model standardises with the target's statistics (what it will score)."""
    rows = rows.filter(pl.col(LABEL).is_not_null())
    X = rows.select(inputs).cast(pl.Float64).to_numpy()
    Z = transform(X, inputs.index(SIDE), n_prob)
    y = rows[LABEL].cast(pl.Float64).to_numpy()
    sym = rows[SYMBOL].to_numpy()
    if not (sym == target).any():
        raise ValueError(f"no labelled signal row of the target {target} to fit the trade gate on")
    S = np.empty_like(Z)
    stats = {}
    for s in np.unique(sym):
        m = sym == s
        stats[s] = _stats(Z[m])
        S[m] = _standardise(Z[m], *stats[s])
    if spec.symbol_feature:
        S = np.column_stack([S, (sym == target).astype(np.float64)])
    w, b = fit_logistic(S, y, C, nonneg=False)
    if spec.symbol_feature:  # the bot scores the target only: its "is the target" input is 1, folded into the bias
        b, w = b + float(w[-1]), w[:-1]
    mean, std = stats[target]
    return GateModel(list(inputs), n_prob, mean, std, np.asarray(w, dtype=np.float64), float(b), C, target)


# --------------------------------------------------------------------------------------------- inner walk-forward


def purged_before(rows: pl.DataFrame, start, gap_hours: int) -> pl.Expr:
    """Rows whose label is known, with room to spare, before ``start``: ``exit + embargo < start`` (the label's
    span, not a fixed horizon)."""
    return (pl.col(EXIT) + pl.duration(hours=gap_hours) < start) & pl.col(LABEL).is_not_null()


@dataclass
class InnerResult:
    q: np.ndarray  # the secondary model's out-of-fold probability on each target row of the inner test blocks
    test_timestamps: list  # those rows' signal times
    c_scores: dict[str, float]  # inner log-loss per L2 strength
    C: float
    n_rows: int


def _logloss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def inner_walk_forward(
    target_rows: pl.DataFrame,
    panel_rows: pl.DataFrame | None,
    inputs: list[str],
    n_prob: int,
    target: str,
    spec: GateSpec,
    gap_hours: int,
) -> InnerResult:
    """Out-of-fold secondary probabilities on the target's signal rows (time-ordered, expanding blocks): each
    block's model sees only rows (the target's and the panel's) whose trade ended ``gap_hours`` before the block
    starts. The L2 strength with the lowest inner log-loss is kept; its predictions are returned."""
    rows = target_rows.filter(pl.col(LABEL).is_not_null()).sort(catalog.TIMESTAMP)
    n = rows.height
    start = int(n * spec.min_train_fraction)
    size = (n - start) // spec.inner_folds
    if size < 5:
        raise ValueError(f"{n} labelled signal rows are too few for {spec.inner_folds} inner blocks")
    ts = rows[catalog.TIMESTAMP]
    everything = rows if panel_rows is None else pl.concat([rows, panel_rows.select(rows.columns)])
    blocks = []
    for k in range(spec.inner_folds):
        a = start + k * size
        b = n if k == spec.inner_folds - 1 else a + size
        train = everything.filter(purged_before(everything, ts[a], gap_hours))
        blocks.append((train, rows[a:b]))
    y_test = np.concatenate([t[LABEL].cast(pl.Float64).to_numpy() for _, t in blocks])
    preds: dict[float, np.ndarray] = {}
    scores: dict[str, float] = {}
    for C in spec.c_grid:
        parts = []
        for train, test in blocks:
            if not (train[SYMBOL] == target).any():
                parts.append(np.full(test.height, 0.5))
                continue
            model = fit_gate(train, inputs, n_prob, target, C, spec)
            parts.append(model.predict(test.select(inputs).cast(pl.Float64).to_numpy()))
        preds[C] = np.concatenate(parts)
        scores[str(C)] = _logloss(y_test, preds[C])
    best = min(spec.c_grid, key=lambda c: scores[str(c)] or np.inf)
    test_ts = [t for _, test in blocks for t in test[catalog.TIMESTAMP].to_list()]
    return InnerResult(preds[best], test_ts, scores, best, n)

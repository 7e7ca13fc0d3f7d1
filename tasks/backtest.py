"""Backtest task: the bot's MACD strategy on the holdout, always and gated by the shipped probability
(models/evaluation/backtest.py), with the gate's threshold chosen on the OOF rows."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_bytes, write_json
from macd_ml.models.evaluation.backtest import (
    BacktestSpec,
    bars_with_probability,
    choose_threshold,
    evaluate,
    macd_signals,
)
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import MarketRef, reload_market
from macd_ml.tasks.results import cached_task, result_type

log = logging.getLogger(__name__)


@result_type
class BacktestResult(BaseModel):
    summary: dict  # backtest.json without the equity curves (for metrics.json and the report)
    files: dict[str, ArtifactRef]  # backtest.json, plots/equity.png


def run_backtest(candles: pl.DataFrame, oof: pl.DataFrame, holdout: pl.DataFrame, h: int, spec: BacktestSpec):
    """Threshold on the OOF span, evaluation on the holdout span; both from the shipped probability at ``h``."""
    col = catalog.shipped_column(h)
    probs = pl.concat([oof.select(catalog.TIMESTAMP, col), holdout.select(catalog.TIMESTAMP, col)]).unique(
        catalog.TIMESTAMP
    )
    bars = bars_with_probability(candles, probs.rename({col: "p"}))
    signals = macd_signals(bars["close"], spec)
    oof_rows = oof.filter(pl.col(col).is_not_null())
    choice = choose_threshold(bars, signals, h, spec, (oof_rows[catalog.TIMESTAMP][0], oof_rows[catalog.TIMESTAMP][-1]))
    result = evaluate(
        bars, signals, h, choice["threshold"], spec, (holdout[catalog.TIMESTAMP][0], holdout[catalog.TIMESTAMP][-1])
    )
    result["threshold_choice"] = choice
    return result


@cached_task(name="backtest")
def backtest_task(
    market: MarketRef,
    stack_files: dict[str, ArtifactRef],
    horizon: int,
    spec: BacktestSpec,
    out_dir: str,
    plots: bool = True,
) -> BacktestResult:
    """``plots``: the run's ``report.plots`` (off: no equity curve PNG; backtest.json is written either way)."""
    candles = reload_market(market).target.frame
    result = run_backtest(
        candles,
        read_parquet(stack_files[catalog.SHIPPED_OOF]),
        read_parquet(stack_files[catalog.SHIPPED_HOLDOUT]),
        horizon,
        spec,
    )
    equity, stamps = result.pop("equity"), result.pop("timestamps")
    d = cache_dir(out_dir, "backtest", current_key())
    files: dict[str, ArtifactRef] = {}
    if plots:
        with tempfile.TemporaryDirectory(prefix="macd-ml-plots-") as scratch:
            from macd_ml.models.evaluation.plots import plot_equity  # matplotlib only when drawn

            png = plot_equity(Path(scratch) / "equity.png", stamps, equity, result)
            files[catalog.EQUITY_PLOT] = write_bytes(d / "plots" / "equity.png", png.read_bytes())
    files[catalog.BACKTEST] = write_json(d / catalog.BACKTEST, result)
    v = result["variants"]
    log.info(
        "backtest h=%s on the holdout (threshold %.2f, chosen on OOF rows): Sharpe ungated %.2f, gated %.2f "
        "(long/flat); buy and hold %.2f",
        horizon,
        result["threshold"],
        v["ungated_long_flat"]["sharpe"],
        v["gated_long_flat"]["sharpe"],
        v["buy_and_hold"]["sharpe"],
    )
    if result["lookahead_suspect"]:
        log.warning("backtest: %s look too good to be true (look-ahead?)", ", ".join(result["lookahead_suspect"]))
    return BacktestResult(summary=result, files=files)


@cached_task(name="drift")
def drift_task(
    features: ArtifactRef, names: list[str], folds: ArtifactRef, window_hours: int, max_feature_psi: float, out_dir: str
) -> dict:
    """Feature PSI of the newest ``window_hours`` rows against the refit's training rows. (The shipped
    probability against the champion's is measured by champion / challenger, on the same bars: it depends on
    which run is current, so it stays out of the run's content, as the promotion decision does.)"""
    from macd_ml.models.evaluation.drift import feature_drift
    from macd_ml.tasks.refs import load_folds

    frame = read_parquet(features)
    fit = load_folds(folds).refit.fit
    n = frame.height
    X = frame.select(names).to_numpy().astype(float)
    newest = slice(max(0, n - window_hours), n)
    return {"features": feature_drift(X, names, slice(fit.start, fit.stop), newest, max_feature_psi)}

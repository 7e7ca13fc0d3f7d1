"""Pooled training (models.pooled): the panel of other symbols joins each fold's fit only up to the fold's end,
predictions and scores stay on the target, and the flow and preflight wire it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from macd_ml.errors import ConfigError
from macd_ml.features.build import build_features
from macd_ml.features.ingest import load_market, panel_symbols
from macd_ml.features.labels import align_labels, make_labels
from macd_ml.features.splits import make_folds
from macd_ml.features.synth import synth_market, write_market
from macd_ml.flows.config import RetrainConfig, load_config
from macd_ml.flows.preflight import preflight
from macd_ml.models.learners.base import Dataset
from macd_ml.models.learners.params import LGBParams
from macd_ml.models.learners.registry import make_model, own_features
from macd_ml.models.learners.train import build_dataset, fold_fit_rows, pool, train_fold

H = [5, 12, 24]


def _dataset(data_dir: Path, symbol: str, cross: list[str], names: list[str] | None = None):
    market = load_market(data_dir, symbol, cross)
    table = build_features(market)
    labels = make_labels(market.target.frame, H)
    labels = align_labels(table.frame, labels)
    return build_dataset(table.frame, labels, names or own_features(table.names), H, 1)


@pytest.fixture(scope="module")
def market_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("panel-market")
    write_market(synth_market(("ETHUSDT", "BTCUSDT", "SOLUSDT", "XRPUSDT"), hours=4_000, seed=3, gaps=1), d)
    return d


@pytest.fixture(scope="module")
def pooled(market_dir):
    target = _dataset(market_dir, "ETHUSDT", ["BTCUSDT"])
    others = [_dataset(market_dir, s, ["BTCUSDT"], target.feature_names) for s in ("SOLUSDT", "XRPUSDT")]
    folds = make_folds(build_features(load_market(market_dir, "ETHUSDT", ["BTCUSDT"])).frame["timestamp"], H)
    return target, others, folds


def test_panel_is_every_other_symbol_but_target_and_cross(market_dir):
    assert panel_symbols(market_dir, "ETHUSDT", ["BTCUSDT"]) == ["SOLUSDT", "XRPUSDT"]
    assert panel_symbols(market_dir, "BTCUSDT", ["ETHUSDT"]) == ["SOLUSDT", "XRPUSDT"]


def test_panel_rows_join_each_fit_only_up_to_the_folds_end(pooled):
    target, others, folds = pooled
    data = pool(target, others)
    n = target.n_rows
    assert data.n_rows == n + sum(o.n_rows for o in others)
    assert np.array_equal(data.X[:n], target.X) and np.array_equal(data.segment_start[:n], target.segment_start)
    # no sequence window crosses from one symbol into another
    second = n + others[0].n_rows
    assert data.segment_start[n:second].min() >= n and data.segment_start[second:].min() >= second
    for fold in [*folds.folds, folds.refit]:
        rows = fold_fit_rows(data, fold, n).idx
        own, panel = rows[rows < n], rows[rows >= n]
        assert np.array_equal(own, np.arange(fold.fit.start, fold.fit.stop))
        last = target.timestamps[fold.fit.stop - 1]
        assert len(panel) > 0 and data.timestamps[panel].max() <= last
        # purged like the target: every panel row is embargoed from the early-stopping and test spans
        gap = folds.embargo_hours * 3_600_000_000
        assert data.timestamps[panel].max() + gap < target.timestamps[fold.early_stop.start]
        # every panel row up to the end is in: none is dropped either
        for o, start in ((others[0], n), (others[1], second)):
            assert (panel >= start).sum() - (panel >= start + o.n_rows).sum() == int((o.timestamps <= last).sum())
    assert np.array_equal(fold_fit_rows(target, folds.folds[0]).idx, np.arange(0, folds.folds[0].fit.stop))


def test_panel_rows_after_a_folds_end_change_nothing(pooled):
    """Scramble every panel label and feature after fold 0's fit end: fold 0's model is the same model."""
    target, others, folds = pooled
    fold = folds.folds[0]
    last = target.timestamps[fold.fit.stop - 1]
    rng = np.random.default_rng(0)

    def scrambled(o: Dataset) -> Dataset:
        late = o.timestamps > last
        X, Y = o.X.copy(), o.labels.copy()
        X[late] = rng.normal(size=X[late].shape).astype(np.float32)
        Y[late] = rng.integers(0, 2, size=Y[late].shape).astype(np.float32)
        return Dataset(X, Y, o.feature_names, o.horizons, o.segment_start, o.timestamps)

    params = LGBParams(max_rounds=60, min_rounds=10)

    def predictions(panel: list[Dataset]) -> np.ndarray:
        model = make_model("lgb", params, target.feature_names, H)
        return train_fold(model, pool(target, panel), fold, n_target=target.n_rows).predictions

    base = predictions(others)
    assert np.array_equal(base, predictions([scrambled(o) for o in others]))
    # and the panel rows before the end are used: scrambling those changes the model
    early = [Dataset(o.X, 1 - o.labels, o.feature_names, o.horizons, o.segment_start, o.timestamps) for o in others]
    assert not np.array_equal(base, predictions(early))
    unpooled = train_fold(make_model("lgb", params, target.feature_names, H), target, fold)
    assert unpooled.fit_rows == len(fold.fit) and len(base) == len(unpooled.predictions) == len(fold.test)


def test_pool_refuses_a_panel_with_other_features(pooled):
    target, others, _ = pooled
    o = others[0]
    wrong = Dataset(o.X[:, :-1], o.labels, o.feature_names[:-1], o.horizons, o.segment_start, o.timestamps)
    with pytest.raises(ValueError, match="features or horizons differ"):
        pool(target, [wrong])


def test_pooled_models_must_be_enabled_and_need_a_panel(tmp_path):
    with pytest.raises(ConfigError, match="not enabled"):
        load_config(overrides=['models.enabled=["lgb"]', 'models.pooled=["xgb"]'])
    two = tmp_path / "two"
    m = synth_market(("ETHUSDT", "BTCUSDT"), hours=3_000, seed=2)
    write_market(m, two)
    cfg = RetrainConfig.model_validate(
        {"data_dir": str(two), "folds": {"n_folds": 3}, "models": {"enabled": ["lgb"], "pooled": ["lgb"]}}
    )
    with pytest.raises(ConfigError, match="models.pooled"):
        preflight(cfg)
    synthetic = cfg.model_copy(update={"data_dir": ""})  # the built-in market has SOLUSDT besides ETH and BTC
    preflight(synthetic)


@pytest.mark.usefixtures("prefect_server")
def test_flow_trains_pooled_models_on_the_panel_and_scores_the_target(market_dir, tmp_path):
    from tests.flowutil import run_flow

    cfg = RetrainConfig.model_validate(
        {
            "data_dir": str(market_dir),
            "out_dir": str(tmp_path / "out"),
            "folds": {"n_folds": 3},
            "models": {"enabled": ["lgb", "xgb"], "pooled": ["lgb"]},
            "health": {"auc_gates": False},
        }
    )
    path, _ = run_flow(cfg)
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    lgb, xgb = metrics["training"]["lgb"], metrics["training"]["xgb"]
    for fold in lgb["folds"].values():
        assert fold["pooled_with"] == ["SOLUSDT", "XRPUSDT"]
    assert lgb["refit"]["pooled_with"] == ["SOLUSDT", "XRPUSDT"]
    assert lgb["refit"]["fit_rows"] > 2 * metrics["n_oof"] // 3
    assert "pooled_with" not in xgb["refit"] and "pooled_with" not in metrics["training"]["reference"]["refit"]
    # scored on the target's rows only, like every other model
    assert metrics["models"]["lgb"]["5"]["n_oof"] == metrics["models"]["xgb"]["5"]["n_oof"]
    assert metrics["models"]["lgb"]["5"]["n_test"] == metrics["models"]["xgb"]["5"]["n_test"]

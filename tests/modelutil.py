"""Small synthetic datasets for model tests (no Prefect)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market
from macd_ml.features.labels import align_labels, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.features.synth import synth_market
from macd_ml.models.learners.registry import ModelsConfig
from macd_ml.models.learners.train import build_dataset

HORIZONS = [5, 12, 24]
# Small, fast sequence models for CPU tests; the defaults are for real runs.
FAST_MODELS = {
    "lstm": {"max_epochs": 4, "max_train_rows": 5_000},
    "tft": {"max_epochs": 4, "max_train_rows": 5_000},
}


@lru_cache(maxsize=4)
def synthetic_dataset(hours: int = 12_000, seed: int = 2, signal: float = 2.0, n_folds: int = 3):
    m = synth_market(hours=hours, seed=seed, signal=signal)
    market = Market(Candles("ETHUSDT", None, "e", m["ETHUSDT"]), (Candles("BTCUSDT", None, "b", m["BTCUSDT"]),))
    table = build_features(market)
    labels = make_labels(m["ETHUSDT"], HORIZONS)
    labels = align_labels(table.frame, labels)
    data = build_dataset(table.frame, labels, table.names, HORIZONS, 1)
    folds = make_folds(table.frame["timestamp"], HORIZONS, FoldSpec(n_folds=n_folds))
    return table, data, folds


def fast_config(**extra) -> ModelsConfig:
    return ModelsConfig.model_validate({**FAST_MODELS, **extra})


def constant_like(data, value: float = 1.0):
    """The same dataset with every feature constant (a degenerate input)."""
    from macd_ml.models.learners.base import Dataset

    return Dataset(np.full_like(data.X, value), data.Y, data.feature_names, data.horizons, data.segment_start)

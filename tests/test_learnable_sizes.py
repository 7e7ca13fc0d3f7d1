"""The planted signal is learnable at every market size the tests and ``make run`` use, out of fold, within every
fold; the driftless market stays at chance.

LightGBM and XGBoost with their default parameters, through the model functions (``train_fold``) on the
pipeline's default purged walk-forward folds, no Prefect. Scores are per fold, averaged weighted by rows (a model
that predicts each fold's training base rate scores 0.5 there), with the noise band SE = sqrt(h / 3n) of the
README (overlapping labels). The markets are the ones the suite and ``make run`` use.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market
from macd_ml.features.labels import align_labels, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.features.synth import synth_market
from macd_ml.models.evaluation.stats import auc
from macd_ml.models.learners.registry import ModelsConfig, make_model, select_features
from macd_ml.models.learners.train import build_dataset, train_fold

HORIZONS = [5, 12, 24]  # the folds' embargo follows the longest horizon, as in a run
H = 5  # the horizon scored (the models fit only this one: three times faster)
MODELS = ("lgb", "xgb")
# (hours, seed, gaps): the conftest ``market`` (3,000 h), the reproduction (``macd-ml synth --hours 6000``
# defaults) and ``make run`` (SynthSpec defaults, 12,000 h)
SIZES = [(3_000, 5, 1), (6_000, 7, 2), (12_000, 7, 2)]


def _scores(hours: int, seed: int, gaps: int, signal: float) -> dict[str, dict]:
    m = synth_market(hours=hours, seed=seed, signal=signal, gaps=gaps)
    market = Market(Candles("ETHUSDT", None, "e", m["ETHUSDT"]), (Candles("BTCUSDT", None, "b", m["BTCUSDT"]),))
    table = build_features(market)
    labels = make_labels(m["ETHUSDT"], HORIZONS)
    labels = align_labels(table.frame, labels)
    data = build_dataset(table.frame, labels, table.names, [H], 1)
    folds = make_folds(table.frame["timestamp"], HORIZONS, FoldSpec())
    cfg = ModelsConfig()
    out = {}
    for name in MODELS:
        names = select_features(data.feature_names, cfg.feature_set(name))
        per_fold, sizes, trees, ys, ps = [], [], [], [], []
        for fold in folds.folds:
            model = make_model(name, cfg.params_for(name), names, [H])
            r = train_fold(model, data, fold, collapse_std=0.0)
            y, p = data.Y[r.rows, 0], r.predictions[:, 0]
            ok = ~np.isnan(y)
            a = auc(y, p)
            per_fold.append(0.5 if a is None else a)
            sizes.append(int(ok.sum()))
            trees.append(model.info.best_iteration[str(H)])
            ys.append(y[ok])
            ps.append(p[ok])
        n = np.asarray(sizes)
        out[name] = {
            "auc": float(np.dot(per_fold, n) / n.sum()),
            "pooled": auc(np.concatenate(ys), np.concatenate(ps)),
            "se": math.sqrt(H / (3 * n.sum())),
            "folds": np.round(per_fold, 3).tolist(),
            "trees": trees,
            "min_rounds": min(cfg.params_for(name).min_rounds, cfg.params_for(name).max_rounds),
        }
    return out


@pytest.mark.parametrize(("hours", "seed", "gaps"), SIZES)
def test_planted_signal_is_learnable_at_every_size(hours, seed, gaps):
    for name, s in _scores(hours, seed, gaps, signal=1.0).items():
        assert s["auc"] > 0.5 + s["se"], f"{name} at {hours} h: per-fold OOF AUC {s['auc']:.3f} (SE {s['se']:.3f}) {s}"
        assert s["pooled"] > 0.5, f"{name} at {hours} h: pooled OOF AUC {s['pooled']:.3f} below chance {s}"
        assert min(s["trees"]) >= s["min_rounds"], f"{name} at {hours} h stopped below min_rounds: {s}"


@pytest.mark.parametrize(("hours", "seed", "gaps"), SIZES)
def test_null_market_stays_at_chance_at_every_size(hours, seed, gaps):
    for name, s in _scores(hours, seed, gaps, signal=0.0).items():
        assert abs(s["auc"] - 0.5) <= 3 * s["se"], f"{name} at {hours} h: null per-fold OOF AUC {s['auc']:.3f} {s}"

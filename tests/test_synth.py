"""The synthetic market: deterministic, realistic in the ways that matter, and learnable only when told to be."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market, read_candles
from macd_ml.features.labels import make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.features.synth import synth_market, write_market


def _returns(df: pl.DataFrame) -> np.ndarray:
    c = df["close"].to_numpy()
    return np.diff(np.log(c))


def test_deterministic_and_valid(tmp_path):
    a = synth_market(hours=3_000, seed=5, gaps=2)
    b = synth_market(hours=3_000, seed=5, gaps=2)
    c = synth_market(hours=3_000, seed=6, gaps=2)
    for s in a:
        assert a[s].equals(b[s])
        assert not a[s].equals(c[s])
    paths = write_market(a, tmp_path)
    again = write_market(b, tmp_path / "again")
    for p, q in zip(paths, again):
        assert p.read_bytes() == q.read_bytes(), "same arguments give the same bytes"
        candles = read_candles(p)  # passes every validation rule of the input contract
        assert candles.gaps.n_gaps == 2


def test_stylised_facts():
    m = synth_market(hours=20_000, seed=3, signal=0.0)
    r = _returns(m["ETHUSDT"])
    rb = _returns(m["BTCUSDT"])
    z = (r - r.mean()) / r.std()
    kurt = float(np.mean(z**4))
    assert kurt > 4.0, f"fat tails expected, kurtosis {kurt:.2f}"
    a = np.abs(r)
    ac_abs = np.corrcoef(a[:-1], a[1:])[0, 1]
    ac_raw = np.corrcoef(r[:-1], r[1:])[0, 1]
    assert ac_abs > 0.05, f"volatility clustering expected, |r| autocorrelation {ac_abs:.3f}"
    assert abs(ac_raw) < 0.03, f"returns themselves should not be autocorrelated, got {ac_raw:.3f}"
    assert np.corrcoef(r, rb)[0, 1] > 0.3, "a common factor should tie the symbols together"


def _holdout_auc(signal: float, h: int, seed: int, hours: int) -> tuple[float, int]:
    m = synth_market(hours=hours, seed=seed, signal=signal)
    market = Market(Candles("ETHUSDT", None, "x", m["ETHUSDT"]), (Candles("BTCUSDT", None, "y", m["BTCUSDT"]),))
    table = build_features(market)
    labels = make_labels(m["ETHUSDT"], [h])
    df = table.frame.join(labels, on="timestamp", how="left")
    folds = make_folds(df["timestamp"], [h], FoldSpec(n_folds=2))
    f = folds.refit
    y = f"y_{h}"

    def part(span):
        return df[span.start : span.stop].drop_nulls(y)

    fit, es, test = part(f.fit), part(f.early_stop), part(folds.holdout)
    model = lgb.LGBMClassifier(
        n_estimators=400,
        learning_rate=0.03,
        num_leaves=15,
        min_child_samples=100,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.7,
        verbose=-1,
        random_state=0,
    )
    model.fit(
        fit.select(table.names).to_numpy(),
        fit[y].to_numpy(),
        eval_set=[(es.select(table.names).to_numpy(), es[y].to_numpy())],
        callbacks=[lgb.early_stopping(40, verbose=False)],
    )
    p = model.predict_proba(test.select(table.names).to_numpy())[:, 1]
    return roc_auc_score(test[y].to_numpy(), p), test.height


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.heavy  # three GBDTs per seed on 30,000 bars
def test_planted_signal_is_learnable(seed):
    """A plain LightGBM reaches a holdout AUC of roughly 0.55-0.68 (mean over the three horizons; a single
    holdout of ~4,500 overlapping labels has an SE of about 0.03, so one horizon alone is too noisy). The market is
    strong enough to be learnable from 3,000 h (tests/test_learnable_sizes.py): seeds 1 and 2 give 0.669 and 0.666
    here, near the top of the band; a generator change that pushes it past 0.68 makes the market unrealistically
    easy."""
    aucs = [_holdout_auc(signal=1.0, h=h, seed=seed, hours=30_000)[0] for h in (5, 12, 24)]
    assert 0.55 <= float(np.mean(aucs)) <= 0.68, f"holdout AUCs {np.round(aucs, 3)}"
    assert max(aucs) < 0.72


def test_null_market_is_not_learnable():
    h = 5
    auc, n = _holdout_auc(signal=0.0, h=h, seed=4, hours=40_000)
    se = math.sqrt(h / (3 * n))
    assert abs(auc - 0.5) <= 3 * se, f"null AUC {auc:.3f}, band ±{3 * se:.3f} (n={n})"

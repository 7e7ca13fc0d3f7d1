"""The reference model and per-fold OOF scoring: pure functions on small synthetic data."""

from __future__ import annotations

import numpy as np
import polars as pl

from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market
from macd_ml.features.labels import label_name, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.features.synth import synth_market
from macd_ml.models.evaluate import model_metrics, per_fold_auc
from macd_ml.models.reference import FEATURES, reference_features, reference_predictions, reference_scores


def test_a_constant_per_fold_scores_half_within_folds_however_its_intercepts_fall():
    """Each fold's model predicts its training base rate; the next span's base rate goes the other way. Pooled
    across folds that ranks the rows backwards (AUC far below 0.5); within each fold it is a constant: 0.5."""
    rng = np.random.default_rng(0)
    spans, rows, ys, ps = [(0, 400), (400, 800), (800, 1200)], [], [], []
    for k, (a, b) in enumerate(spans):
        rate = [0.3, 0.7, 0.3][k]
        rows.append(np.arange(a, b))
        ys.append((rng.random(b - a) < rate).astype(float))
        ps.append(np.full(b - a, 1 - rate))  # the intercept of a model trained on the opposite regime
    table = pl.DataFrame({"row": np.concatenate(rows), label_name(5): np.concatenate(ys), "m_h5": np.concatenate(ps)})
    scores = model_metrics(table, table, ["m"], [5], fold_spans=spans)["m"]["5"]
    assert scores["oof_auc_pooled"] < 0.35
    assert scores["oof_auc"] == 0.5
    assert per_fold_auc(table, "m", [5], spans) == {"5": 0.5}
    assert model_metrics(table, table, ["m"], [5])["m"]["5"]["oof_auc"] == scores["oof_auc_pooled"]  # no spans


def _inputs(hours=3_000, signal=1.0, seed=5):
    m = synth_market(hours=hours, seed=seed, signal=signal)
    market = Market(Candles("ETHUSDT", None, "e", m["ETHUSDT"]), (Candles("BTCUSDT", None, "b", m["BTCUSDT"]),))
    table = build_features(market)
    labels = make_labels(m["ETHUSDT"], [5, 12, 24])
    labels = table.frame.select("timestamp").join(labels, on="timestamp", how="left", maintain_order="left")
    folds = make_folds(table.frame["timestamp"], [5, 12, 24], FoldSpec(n_folds=3))
    return table.frame, labels, folds


def test_reference_trains_on_the_same_folds_and_scores_the_holdout():
    features, labels, folds = _inputs()
    assert reference_features(features.columns) == [f for f in FEATURES if f in features.columns]
    assert len(reference_features(features.columns)) >= 10
    table = reference_predictions(features, labels, folds, [5, 12, 24], 1)
    for f in folds.folds:
        got = table.filter(pl.col("fold") == f.index)["row"].to_numpy()
        assert np.array_equal(got, np.arange(f.test.start, f.test.stop))
    hold = table.filter(pl.col("fold") == -1)["row"].to_numpy()
    assert np.array_equal(hold, np.arange(folds.holdout.start, folds.holdout.stop))
    assert table.select(pl.col("^reference_h.*$")).to_numpy().std(axis=0).min() > 1e-4  # not a constant
    again = reference_predictions(features, labels, folds, [5, 12, 24], 1)
    assert again.equals(table)  # fixed parameters, fixed seed: the same numbers every run
    scores = reference_scores(table, [5, 12, 24])
    for h in ("5", "12", "24"):
        s = scores[h]
        assert s["n_oof"] + s["n_test"] == table.filter(pl.col(label_name(int(h))).is_not_null()).height
        assert 0 <= s["oof_auc"] <= 1 and 0 <= s["test_auc"] <= 1 and s["test_se"] > 0

"""The reference model (trained like a base model, fixed parameters) and per-fold OOF scoring."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.errors import ConfigError
from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market
from macd_ml.features.labels import align_labels, label_name, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.features.synth import synth_market
from macd_ml.flows.config import load_config
from macd_ml.models.evaluation.evaluate import model_metrics, per_fold_auc
from macd_ml.models.learners.base import Rows
from macd_ml.models.learners.gbdt import ReferenceModel
from macd_ml.models.learners.reference import FEATURES, PARAMS, REFERENCE, reference_features, reference_scores
from macd_ml.models.learners.registry import NAMES, load_model, make_model, select_features
from macd_ml.models.learners.train import build_dataset, train_fold
from macd_ml.models.release.onnx_export import model_onnx


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
    labels = align_labels(table.frame, labels)
    folds = make_folds(table.frame["timestamp"], [5, 12, 24], FoldSpec(n_folds=3))
    return table.frame, labels, folds


def test_the_reference_always_trains_with_fixed_parameters_and_joins_the_stack_unless_left_out():
    config = load_config(overrides=['models.enabled=["lgb","xgb"]', "models.lgb.num_leaves=63"])
    assert config.models.trained() == ["lgb", "xgb", REFERENCE]
    assert config.models.params_for(REFERENCE) == PARAMS  # a user's LightGBM settings never reach it
    assert config.models.feature_set(REFERENCE) == "reference"
    assert config.stack_models() == ["lgb", "xgb", REFERENCE]
    assert load_config(overrides=["stacking.include_reference=false"]).stack_models() == list(NAMES)
    with pytest.raises(ConfigError, match="reference"):  # not a user's model to enable or configure
        load_config(overrides=['models.enabled=["lgb","reference"]'])


def test_reference_trains_on_its_feature_set_reproducibly_and_exports():
    import onnxruntime as ort

    features, labels, folds = _inputs()
    names = select_features([c for c in features.columns if c != "timestamp"], "reference")
    assert names == reference_features(features.columns) == [f for f in FEATURES if f in features.columns]
    assert len(names) >= 10
    data = build_dataset(features, labels, names, [5, 12, 24], 1)

    def fit(fold):
        model = make_model(REFERENCE, PARAMS, names, [5, 12, 24])
        return model, train_fold(model, data, fold)

    model, result = fit(folds.folds[0])
    assert isinstance(model, ReferenceModel) and model.name == REFERENCE
    assert np.array_equal(result.rows, np.arange(folds.folds[0].test.start, folds.folds[0].test.stop))
    assert result.predictions.std(axis=0).min() > 1e-4  # not a constant
    assert np.array_equal(fit(folds.folds[0])[1].predictions, result.predictions)  # fixed seed: the same numbers

    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d))
        again = load_model(REFERENCE, Path(d))
        rows = Rows.span(folds.holdout.start, folds.holdout.stop)
        native = again.predict(data, rows)
        assert np.allclose(native, model.predict(data, rows), atol=1e-9)
    graph = model_onnx(model)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_p = sess.run(None, {"x": data.columns(names)[rows.idx].astype(np.float32)})[0]
    assert np.abs(onnx_p - native).max() < 1e-3


def test_reference_scores_are_its_model_scores_with_the_holdout_se():
    rng = np.random.default_rng(3)
    y = (rng.random(900) < 0.5).astype(float)
    table = pl.DataFrame({"row": np.arange(900), label_name(5): y, "reference_h5": rng.random(900), "lgb_h5": y})
    scores = model_metrics(table[:600], table[600:], ["lgb", REFERENCE], [5], fold_spans=[(0, 300), (300, 600)])
    ref = reference_scores(scores, [5])
    assert ref is not None and ref["5"]["test_auc"] == scores[REFERENCE]["5"]["test_auc"]
    assert ref["5"]["test_se"] == pytest.approx((5 / (3 * 300)) ** 0.5)
    assert reference_scores({"lgb": scores["lgb"]}, [5]) is None

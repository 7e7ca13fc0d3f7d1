"""The inference view: candles from memory validated like files, a dataset without labels, the
shipped predictor saved and loaded on its own, and a clear error from any model used before it is fitted."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from macd_ml.errors import DataError
from macd_ml.features.build import build_features
from macd_ml.features.ingest import Market, candles_from_frame, read_candles
from macd_ml.features.synth import synth_market, write_market
from macd_ml.models.ensemble.predictor import Predictor, load_predictors, save_predictors
from macd_ml.models.learners.base import NotFittedError, Rows
from macd_ml.models.learners.registry import MODEL_CLASSES, make_model
from macd_ml.models.learners.train import build_dataset, inference_view, train_fold
from tests.modelutil import HORIZONS, fast_config, synthetic_dataset


def test_candles_from_memory_are_validated_like_a_file(tmp_path):
    frames = synth_market(["ETHUSDT"], hours=300, seed=1)
    write_market(frames, tmp_path)
    from_file = read_candles(tmp_path / "ETHUSDT_1h.csv")
    raw = pl.read_csv(tmp_path / "ETHUSDT_1h.csv", infer_schema=False).reverse()  # newest first, text columns
    from_memory = candles_from_frame("ethusdt", raw)
    assert from_memory.symbol == "ETHUSDT" and from_memory.path is None
    assert from_memory.frame.equals(from_file.frame)
    assert from_memory.sha256 == candles_from_frame("ETHUSDT", from_file.frame).sha256
    bad = raw.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("-1")).otherwise(pl.col("close")).alias("close")
    )
    with pytest.raises(DataError, match=r"<ETHUSDT candles in memory>, row 6, column 'close': price must be > 0"):
        candles_from_frame("ETHUSDT", bad)
    with pytest.raises(DataError, match="my feed"):
        candles_from_frame("ETHUSDT", raw.drop("volume"), source="my feed")


def test_inference_view_has_no_labels_and_predicts_like_the_training_view():
    table, data, folds = synthetic_dataset(hours=6_000, seed=4, signal=2.0, n_folds=3)
    model = make_model("lgb", fast_config().lgb, data.feature_names, HORIZONS)
    with pytest.raises(NotFittedError, match="lgb is not fitted yet"):
        model.predict(data, Rows.span(0, 10))
    train_fold(model, data, folds.folds[0])
    view = inference_view(table.frame, data.feature_names, HORIZONS, 1)
    assert view.Y is None
    rows = Rows.span(folds.holdout.start, folds.holdout.stop)
    np.testing.assert_array_equal(model.predict(view, rows), model.predict(data, rows))
    np.testing.assert_array_equal(view.segment_start, data.segment_start)
    with pytest.raises(ValueError, match="inference view without labels"):
        make_model("lgb", fast_config().lgb, data.feature_names, HORIZONS).fit(
            view, Rows.span(0, 500), Rows.span(600, 700)
        )


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_every_model_refuses_to_predict_or_save_before_fit(name, tmp_path):
    cfg = fast_config()
    model = make_model(name, cfg.params_for(name), ["a", "b"], HORIZONS)
    view = inference_view(
        pl.DataFrame(
            {
                "timestamp": pl.datetime_range(
                    pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1, 9), "1h", eager=True, time_zone="UTC"
                ),
                "a": np.arange(10.0),
                "b": np.ones(10),
            }
        ),
        ["a", "b"],
        HORIZONS,
        1,
    )
    with pytest.raises(NotFittedError, match=f"{name} is not fitted yet"):
        model.predict(view, Rows.span(0, 5))
    with pytest.raises(NotFittedError):
        model.save(tmp_path)


def test_predictor_saves_and_loads_on_its_own(tmp_path):
    meta = Predictor("meta", ["lgb", "xgb"], [0.7, 0.2], -0.1, [0.0, 0.1], [1.0, 2.0], 0.1)
    preds = {"5": meta, "12": Predictor("mean", ["lgb", "xgb"]), "24": Predictor("best", ["xgb"])}
    path = save_predictors(tmp_path / "meta.json", [5, 12, 24], preds)
    again = load_predictors(path)
    P = np.random.default_rng(0).uniform(0.2, 0.8, size=(50, 2))
    for h, p in preds.items():
        q = again[h]
        np.testing.assert_allclose(
            q.predict(P if q.kind != "best" else P[:, 1:]), p.predict(P if p.kind != "best" else P[:, 1:])
        )
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_predictors(tmp_path / "bad.json")


def test_features_from_memory_candles_match_features_from_files(tmp_path):
    frames = synth_market(["ETHUSDT", "BTCUSDT"], hours=800, seed=3)
    write_market(frames, tmp_path)
    from macd_ml.features.ingest import load_market

    files = build_features(load_market(tmp_path, "ETHUSDT", ["BTCUSDT"]))
    memory = build_features(
        Market(candles_from_frame("ETHUSDT", frames["ETHUSDT"]), (candles_from_frame("BTCUSDT", frames["BTCUSDT"]),))
    )
    assert memory.frame.equals(files.frame) and memory.names == files.names
    assert build_dataset  # the training view stays the one with labels

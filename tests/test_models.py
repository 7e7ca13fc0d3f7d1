"""Base learners: save/load without pickle, collapse guard, train-only normalisation, windows, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from macd_ml.features.segments import window_index
from macd_ml.models.evaluation.stats import auc
from macd_ml.models.learners.base import Rows
from macd_ml.models.learners.registry import MODEL_CLASSES, make_model, select_features
from macd_ml.models.learners.sequence import fit_normaliser
from macd_ml.models.learners.train import train_fold
from tests.modelutil import HORIZONS, constant_like, fast_config, synthetic_dataset

ALL = list(MODEL_CLASSES)


def _fit(name: str, data, fold, cfg=None):
    cfg = cfg or fast_config()
    names = select_features(data.feature_names, cfg.feature_set(name))
    model = make_model(name, cfg.params_for(name), names, HORIZONS)
    return model, train_fold(model, data, fold, collapse_std=cfg.collapse_std)


@pytest.fixture(scope="module")
def fitted():
    table, data, folds = synthetic_dataset()
    return data, folds, {name: _fit(name, data, folds.folds[-1]) for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_save_load_identical_and_no_pickle(fitted, name, tmp_path):
    data, folds, models = fitted
    model, result = models[name]
    files = model.save(tmp_path)
    assert files and all(Path(f).parent == tmp_path for f in files)
    for f in tmp_path.iterdir():
        assert f.suffix in {".txt", ".json", ".safetensors"}, f"unexpected model file {f.name}"
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{f.name} looks like a pickle stream"
        if f.suffix == ".safetensors":
            load_file(str(f))  # loads without pickle
    again = MODEL_CLASSES[name].load(tmp_path)
    rows = Rows.span(folds.holdout.start, folds.holdout.stop)
    np.testing.assert_array_equal(again.predict(data, rows), model.predict(data, rows))
    assert (tmp_path / f"{name}_meta.json").is_file()


@pytest.mark.parametrize("name", ALL)
def test_learns_planted_signal_and_does_not_collapse(fitted, name):
    data, folds, models = fitted
    model, result = models[name]
    assert not any(result.collapsed.values()), result.early_stop_std
    assert min(result.early_stop_std.values()) > 1e-3
    j = HORIZONS.index(12)
    a = auc(data.Y[result.rows, j], result.predictions[:, j])
    assert a is not None and a > 0.53, f"{name}: fold AUC {a:.3f} at h=12"
    d = model.describe()
    assert d["device"] == "cpu" and d["horizons"] == HORIZONS and d["feature_names"] == model.feature_names
    assert all(int(v) >= 1 for v in d["best_iteration"].values())


@pytest.mark.parametrize("name", ALL)
def test_constant_features_trigger_collapse_guard(fitted, name, caplog):
    data, folds, _ = fitted
    flat = constant_like(data)
    with caplog.at_level("WARNING"):
        _, result = _fit(name, flat, folds.folds[0])
    assert all(result.collapsed.values()), result.early_stop_std
    assert "collapsed" in caplog.text


def test_cross_model_uses_its_own_feature_set(fitted):
    data, _, models = fitted
    lgb, cross = models["lgb"][0], models["lgb_cross"][0]
    assert not any("__" in n for n in lgb.feature_names)
    assert any(n.startswith("BTCUSDT__") for n in cross.feature_names)
    assert set(lgb.feature_names) < set(cross.feature_names)


def test_sequence_meta_records_normalisation_heads_epochs(fitted, tmp_path):
    import json

    data, folds, models = fitted
    model, _ = models["lstm"]
    model.save(tmp_path)
    meta = json.loads((tmp_path / "lstm_meta.json").read_text())
    assert meta["feature_names"] == model.feature_names
    assert len(meta["normalisation"]["mean"]) == len(model.feature_names)
    assert meta["horizons"] == HORIZONS and meta["best_head"] in HORIZONS
    assert meta["epochs"] >= 1 and meta["window"] == 48
    # the normalisation is fitted on the fold's fitting rows only
    f = folds.folds[-1]
    X = data.columns(model.feature_names)
    fit_rows = np.arange(f.fit.start, f.fit.stop)
    fit_rows = fit_rows[~np.isnan(data.Y[fit_rows]).all(axis=1)][-5_000:]
    mean, std = fit_normaliser(X, fit_rows)
    np.testing.assert_allclose(meta["normalisation"]["mean"], mean, rtol=1e-6)


def test_normaliser_ignores_rows_it_is_not_given():
    X = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    m1, s1 = fit_normaliser(X, np.arange(50))
    X2 = X.copy()
    X2[50:] *= 1000.0  # the "future" changes wildly
    m2, s2 = fit_normaliser(X2, np.arange(50))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)


def test_windows_never_cross_a_segment_start():
    seg = np.array([0, 0, 0, 0, 4, 4, 4, 4, 4, 4], dtype=np.int64)
    idx = window_index(np.array([3, 5, 9]), seg, 4)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 4, 4, 5], [6, 7, 8, 9]]


@pytest.mark.parametrize("share", [False, True])
def test_batches_gathered_from_a_device_tensor_equal_the_host_gather(fitted, share):
    """A CUDA fit keeps the feature matrix on the device and sends only indices (``_on_device``); the batches
    it gathers there are the host's, bar for bar (a CPU tensor stands in for the device here)."""
    import torch

    data, folds, models = fitted
    model, _ = models["tft"]
    Xn = np.random.default_rng(1).normal(size=(data.n_rows, 4)).astype(np.float32)
    rows = np.arange(folds.holdout.start, folds.holdout.start + 600)
    order = np.random.default_rng(2).permutation(len(rows))
    host = list(model._batches(Xn, rows, data.segment_start, order, share))
    dev = list(model._batches(torch.from_numpy(Xn), rows, data.segment_start, order, share))
    assert len(host) == len(dev) > 1
    for (r1, x1), (r2, x2) in zip(host, dev):
        np.testing.assert_array_equal(r1, r2)
        for a, b in zip(x1 if share else [x1], x2 if share else [x2]):
            assert torch.equal(a, b)
    assert model._on_device(Xn, "cpu") is Xn


@pytest.mark.parametrize("name", ["lstm", "tft"])
def test_window_reads_past_rows_only(fitted, name):
    """Changing a later row never changes an earlier row's sequence prediction."""
    data, folds, models = fitted
    model, _ = models[name]
    rows = Rows(np.arange(folds.holdout.start, folds.holdout.start + 50))
    before = model.predict(data, rows)
    from macd_ml.models.learners.base import Dataset

    X = data.X.copy()
    X[folds.holdout.start + 50 :] = 99.0
    after = model.predict(Dataset(X, data.Y, data.feature_names, data.horizons, data.segment_start), rows)
    np.testing.assert_array_equal(before, after)


def test_tft_encodes_each_bar_once_and_predicts_as_its_windows_do(fitted):
    """The TFT's variable selection runs once per distinct bar of a batch (``encode_bars``) and the windows are
    gathered from it: the same probabilities as the net applied to whole windows (which ONNX exports)."""
    import torch

    from macd_ml.models.learners.sequence import normalise

    data, folds, models = fitted
    model, _ = models["tft"]
    assert model._shares_bars(training=False)
    rows = np.arange(folds.holdout.start, folds.holdout.start + 300)
    shared = model.predict(data, Rows(rows))
    Xn = normalise(data.columns(model.feature_names), model.mean, model.std)
    windows = torch.from_numpy(Xn[window_index(rows, data.segment_start, model.params.window)])
    with torch.no_grad():
        whole = torch.sigmoid(model.net(windows)).numpy()
    np.testing.assert_allclose(shared, whole, atol=1e-6)
    # augmentations change a bar per window: then training feeds whole windows
    noisy = make_model("tft", fast_config(tft={"augment_noise": 0.1}).params_for("tft"), model.feature_names, HORIZONS)
    noisy.net = noisy.build_net()
    assert noisy._shares_bars(training=False) and not noisy._shares_bars(training=True)
    assert not models["lstm"][0]._shares_bars(training=False)  # no per-bar encoder: windows as they are


def test_augmentation_runs_and_is_off_by_default(fitted):
    data, folds, _ = fitted
    cfg = fast_config()
    assert cfg.lstm.augment_noise == 0 and cfg.lstm.augment_time_warp == 0
    aug = fast_config(lstm={"max_epochs": 1, "max_train_rows": 2_000, "augment_noise": 0.1, "augment_time_warp": 0.2})
    model, result = _fit("lstm", data, folds.folds[0], aug)
    assert np.isfinite(result.predictions).all()


@pytest.mark.parametrize("name", ["lstm", "tft"])
def test_early_stopping_on_auc_restores_the_best_auc_epoch_after_min_epochs(fitted, name):
    data, folds, _ = fitted
    cfg = fast_config(
        **{name: {"max_epochs": 6, "max_train_rows": 3_000, "patience": 1, "min_epochs": 4, "early_stop_metric": "auc"}}
    )
    model, result = _fit(name, data, folds.folds[0], cfg)
    extra = model.info.extra
    history = extra["history"]
    assert len(history) >= 4  # patience 1 could have stopped after epoch 2; min_epochs holds it to 4
    aucs = [e["early_stop_auc"] for e in history]
    assert extra["best_epoch"] == 1 + int(np.argmax(aucs))  # first epoch with the highest inner-slice AUC
    # the restored weights are that epoch's: the inner slice scores its AUC again
    es = Rows.span(folds.folds[0].early_stop.start, folds.folds[0].early_stop.stop)
    y = data.labels[es.idx]
    again = np.mean([auc(y[:, j], model.predict(data, es)[:, j]) for j in range(len(HORIZONS))])
    assert again == pytest.approx(max(aucs), abs=1e-4)
    loss_cfg = fast_config(**{name: {"max_epochs": 6, "max_train_rows": 3_000, "early_stop_metric": "loss"}})
    loss_model, _ = _fit(name, data, folds.folds[0], loss_cfg)
    losses = [e["early_stop_loss"] for e in loss_model.info.extra["history"]]
    assert loss_model.info.extra["best_epoch"] == 1 + int(np.argmin(losses))
    assert "early_stop_auc" not in loss_model.info.extra["history"][0]


def test_the_tft_stops_on_auc_by_default_and_the_lstm_on_loss():
    from macd_ml.models.learners.registry import ModelsConfig

    cfg = ModelsConfig()
    assert (cfg.tft.early_stop_metric, cfg.tft.min_epochs) == ("auc", 3)
    assert (cfg.lstm.early_stop_metric, cfg.lstm.min_epochs) == ("loss", 1)


def test_focal_loss_option(fitted):
    data, folds, _ = fitted
    cfg = fast_config(lstm={"max_epochs": 2, "max_train_rows": 3_000, "loss": "focal"})
    model, result = _fit("lstm", data, folds.folds[0], cfg)
    assert model.describe()["params"]["loss"] == "focal"
    assert np.isfinite(result.predictions).all()


def test_sequence_fits_are_reproducible_under_threads(fitted):
    """Fold tasks run in threads; a seed must still give the same model whatever runs beside it."""
    from concurrent.futures import ThreadPoolExecutor

    data, folds, _ = fitted
    cfg = fast_config(lstm={"max_epochs": 1, "max_train_rows": 1_500}, tft={"max_epochs": 1, "max_train_rows": 1_500})
    rows = Rows.span(folds.holdout.start, folds.holdout.start + 200)

    def fit_predict(name):
        model, _ = _fit(name, data, folds.folds[0], cfg)
        return model.predict(data, rows)

    serial = fit_predict("lstm")
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(fit_predict, ["lstm", "tft", "lstm"]))
    np.testing.assert_array_equal(results[0], serial)
    np.testing.assert_array_equal(results[2], serial)


@pytest.mark.parametrize("name", ["lstm", "tft"])
def test_sequence_nets_export_to_onnx(fitted, name):
    """The TFT is written in plain torch so it exports: both nets run in onnxruntime with the same logits."""
    import io

    import onnxruntime as ort
    import torch

    data, folds, models = fitted
    model, _ = models[name]
    net = model.net.eval()
    x = torch.randn(16, model.params.window, len(model.feature_names))
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (x,),
        buf,
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-5)

"""Calibration of the shipped probability: chosen on OOF rows, never a constant, the same numbers in ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from macd_ml.models.ensemble import calibration
from macd_ml.models.ensemble.calibration import Calibrator
from macd_ml.models.ensemble.logistic import sigmoid
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.ensemble.stacking import inner_blocks
from macd_ml.models.release.onnx_export import predictor_onnx


def _market(n: int, seed: int, scale: float = 3.0, shift: float = 1.0):
    """Labels from p_true = sigmoid(z); the 'model' reports sigmoid(scale * z + shift): informative, badly
    calibrated (over-confident and biased up)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 0.6, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return sigmoid(scale * z + shift), y


def _blocks(n: int):
    ts = np.arange(n, dtype=np.int64) * 3_600_000_000
    return list(inner_blocks(ts, 4, 0.4, 24))


def test_miscalibrated_probabilities_get_calibrated_and_it_holds_out_of_sample():
    p, y = _market(6000, 0)
    choice = calibration.choose(p, y, _blocks(len(p)))
    assert choice.calibrator.kind in ("platt", "isotonic")
    assert choice.inner_brier[choice.calibrator.kind] < choice.inner_brier["none"]
    p2, y2 = _market(6000, 1)  # a fresh sample of the same market
    assert calibration.brier(choice.calibrator.apply(p2), y2) < calibration.brier(p2, y2) - 0.01


def test_the_choice_is_made_among_the_configured_kinds_and_isotonic_is_off_by_default():
    """A probability bent so that only a non-logistic map fixes it: isotonic wins when allowed, never when the
    stacker's default kinds (none, platt) leave it out."""
    from macd_ml.models.ensemble.stacking import StackSpec

    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.0, 8000)
    y = (rng.random(8000) < sigmoid(z)).astype(float)
    p = np.clip(0.6 + 0.35 * np.tanh(z) ** 3, 0.01, 0.99)  # biased up, flat around the middle, steep at the ends
    everything = calibration.choose(p, y, _blocks(len(p)))
    assert everything.calibrator.kind == "isotonic"
    assert "isotonic" not in StackSpec().calibrations
    default = calibration.choose(p, y, _blocks(len(p)), StackSpec().calibrations)
    assert default.calibrator.kind == "platt" and set(default.inner_brier) == {"none", "platt"}
    assert calibration.choose(p, y, _blocks(len(p)), ["isotonic"]).inner_brier.keys() == {"none", "isotonic"}


def test_platt_keeps_the_order_of_bars():
    p, y = _market(4000, 2)
    c = calibration.fit_platt(p, y)
    assert c.a > 0
    q = c.apply(p)
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))


def test_no_information_never_ships_a_constant():
    rng = np.random.default_rng(3)
    p, y = rng.random(5000), (rng.random(5000) < 0.5).astype(float)
    choice = calibration.choose(p, y, _blocks(len(p)))
    out = choice.calibrator.apply(p)
    assert not calibration.collapsed(choice.calibrator, p)
    assert out.std() > 1e-3


def test_a_calibration_that_squeezes_a_weak_signal_flat_never_ships():
    """A barely informative probability: the Brier-best map pulls it to the base rate; 'none' ships instead."""
    rng = np.random.default_rng(8)
    z = rng.normal(0, 1, 6000)
    y = (rng.random(6000) < 0.5 + 0.002 * z).astype(float)
    p = sigmoid(2.0 * z)  # confident, nearly useless
    squeezed = Calibrator("platt", a=0.003, b=0.0)  # a real slope, but the output hardly moves
    assert calibration.collapsed(squeezed, p) and not calibration.collapsed(Calibrator("platt", a=0.5), p)
    assert calibration.collapsed(Calibrator("isotonic", x=[0.0, 1.0], y=[0.499, 0.501]), p)
    choice = calibration.choose(p, y, _blocks(len(p)))
    assert choice.calibrator.kind == "none" or np.std(choice.calibrator.apply(p)) >= calibration.MIN_STD


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_json_round_trip_and_onnx_parity(kind):
    p, y = _market(3000, 4)
    cal = calibration.fit(kind, p, y)
    assert Calibrator.from_json(cal.to_json()) == cal
    # a meta predictor over two models, calibrated, in numpy and in its ONNX graph
    rng = np.random.default_rng(5)
    P = np.clip(np.stack([p, rng.random(len(p))], axis=1), 1e-3, 1 - 1e-3)
    pred = Predictor("meta", ["a", "b"], [0.8, 0.1], 0.05, [0.1, 0.0], [1.2, 1.0], 1.0, calibration=cal)
    mean = Predictor("mean", ["a", "b"], calibration=cal)
    assert Predictor.from_json(pred.to_json()) == pred
    g = predictor_onnx({"5": pred, "12": mean}, [5, 12], ["a", "b"])
    sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {m: np.repeat(P[:, [i]], 2, axis=1).astype(np.float32) for i, m in enumerate(["a", "b"])}
    out = sess.run(None, feeds)[0]  # within the health gate's parity tolerance for the meta (float32 sums)
    np.testing.assert_allclose(out[:, 0], pred.predict(P.astype(np.float32).astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(out[:, 1], mean.predict(P.astype(np.float32).astype(np.float64)), atol=1e-4)
    assert not np.allclose(out[:, 1], P.mean(axis=1), atol=1e-3)  # the calibration is really applied


def test_isotonic_map_equals_interpolation_and_clips():
    c = Calibrator("isotonic", x=[0.2, 0.4, 0.9], y=[0.1, 0.3, 0.8])
    q = np.array([0.0, 0.2, 0.3, 0.4, 0.65, 0.9, 1.0])
    np.testing.assert_allclose(c.apply(q), np.interp(q, c.x, c.y))


def test_the_choice_never_reads_the_holdout(trained_stack_inputs):
    """Shuffling the holdout's labels changes the holdout Brier scores and nothing that was chosen."""
    from macd_ml.models.ensemble.stacking import StackSpec, stack_all

    oof, holdout, models = trained_stack_inputs
    a = stack_all(oof, holdout, models, [5], StackSpec(), 24, {})
    rng = np.random.default_rng(0)
    shuffled = holdout.with_columns(holdout["y_5"].sample(fraction=1.0, shuffle=True, seed=int(rng.integers(99))))
    b = stack_all(oof, shuffled, models, [5], StackSpec(), 24, {})
    assert a.predictors["5"] == b.predictors["5"]
    assert a.metrics["5"].calibration.kind == b.metrics["5"].calibration.kind
    assert a.metrics["5"].calibration.holdout_brier != b.metrics["5"].calibration.holdout_brier


@pytest.fixture(scope="module")
def trained_stack_inputs():
    """OOF and holdout tables of two synthetic base models (one informative, one noise)."""
    import polars as pl

    rng = np.random.default_rng(7)
    n, m = 8000, 1500
    ts = (np.datetime64("2024-01-01T00", "h") + np.arange(n + m)).astype("datetime64[us]")
    z = rng.normal(0, 0.7, n + m)
    y = (rng.random(n + m) < sigmoid(z)).astype(float)
    a = sigmoid(2.5 * z + 0.4)
    b = rng.random(n + m)

    def frame(sl):
        return pl.DataFrame({"timestamp": ts[sl], "y_5": y[sl], "a_h5": a[sl], "b_h5": b[sl]}).with_columns(
            pl.col("timestamp").dt.replace_time_zone("UTC")
        )

    return frame(slice(0, n)), frame(slice(n, n + m)), ["a", "b"]


def test_the_report_draws_the_shipped_probability_before_and_after_calibration(tmp_path):
    import polars as pl

    from macd_ml.models.ensemble.predictor import predictors_document
    from macd_ml.models.evaluation.plots import _curves, render_plots
    from macd_ml.tasks.report import uncalibrated

    p, y = _market(2000, 9)
    holdout = pl.DataFrame({"y_5": y, "a_h5": p, "y_12": y, "a_h12": p})
    cal = calibration.fit_platt(p, y)
    doc = predictors_document([5, 12], {"5": Predictor("mean", ["a"], calibration=cal), "12": Predictor("mean", ["a"])})
    raw = uncalibrated(doc, holdout)
    assert list(raw) == ["5"]  # only the calibrated horizon has a "before"
    np.testing.assert_allclose(raw["5"], p)
    shipped = {"5": cal.apply(p), "12": p}
    _, series = _curves(holdout, 5, ["a"], shipped, {"5": "mean"}, raw)
    assert [s[0] for s in series] == ["a", "shipped before calibration", "shipped: mean"]
    _, series12 = _curves(holdout, 12, ["a"], shipped, {"12": "mean"}, raw)
    assert "shipped before calibration" not in [s[0] for s in series12]
    out = render_plots(
        tmp_path, horizons=[5], oof=holdout, holdout=holdout, models=["a"], shipped=shipped, shipped_raw=raw
    )
    assert out["calibration_h5.png"].stat().st_size > 1000

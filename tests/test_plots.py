"""Diagnostic plots: every expected PNG is written at a fixed size, is not blank, and bad inputs don't raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from macd_ml.models.evaluation.plots import render_plots

HORIZONS = [5, 12, 24]
MODELS = ["lgb", "xgb", "lgb_cross", "lstm"]
GBDT = ["lgb", "xgb", "lgb_cross"]
N = 2_000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _frame(rng: np.random.Generator, n: int = N) -> pl.DataFrame:
    """Labels per horizon (a few nulls) and per-model predictions that carry a weak signal (AUC ~0.6)."""
    cols: dict[str, object] = {
        "timestamp": pl.datetime_range(
            pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1) + pl.duration(hours=n - 1), "1h", eager=True
        )
    }
    for h in HORIZONS:
        y = rng.integers(0, 2, n)
        for k, m in enumerate(MODELS):
            signal = (2 * y - 1) * 0.18 + rng.normal(0, 1, n)
            cols[f"{m}_h{h}"] = _sigmoid(0.5 * signal + 0.05 * k)
        labels = pl.Series(y, dtype=pl.Int8).to_list()
        for i in rng.choice(n, 50, replace=False):
            labels[i] = None
        cols[f"y_{h}"] = pl.Series(labels, dtype=pl.Int8)
    return pl.DataFrame(cols)


def _correlations(oof: pl.DataFrame) -> dict[str, dict]:
    out = {}
    for h in HORIZONS:
        p = np.column_stack([oof[f"{m}_h{h}"].to_numpy() for m in MODELS])
        out[str(h)] = {"models": MODELS, "matrix": np.corrcoef(p, rowvar=False).tolist()}
    return out


def _importance(rng: np.random.Generator) -> dict:
    features = [f"feature_{i:02d}_{kind}" for i, kind in zip(range(30), ["macd_hist", "rsi_14", "ret_24h_btc"] * 10)]
    return {
        m: {str(h): dict(zip(features, rng.gamma(1.0, 10.0, len(features)).tolist())) for h in HORIZONS} for m in GBDT
    }


@pytest.fixture(scope="module")
def inputs() -> dict:
    rng = np.random.default_rng(7)
    oof, holdout = _frame(rng), _frame(rng, 1_000)
    shipped = {str(h): np.mean([holdout[f"{m}_h{h}"].to_numpy() for m in MODELS], axis=0) for h in HORIZONS}
    return {
        "horizons": HORIZONS,
        "oof": oof,
        "holdout": holdout,
        "models": MODELS,
        "shipped": shipped,
        "shipped_name": {str(h): "meta" for h in HORIZONS},
        "correlations": _correlations(oof),
        "importance": _importance(rng),
        "meta_weights": {
            str(h): {m: float(w) for m, w in zip(MODELS, rng.normal(0.5, 0.4, len(MODELS)))} for h in HORIZONS
        },
    }


@pytest.fixture(scope="module")
def rendered(inputs, tmp_path_factory) -> dict[str, Path]:
    return render_plots(tmp_path_factory.mktemp("plots") / "plots", **inputs)


def _expected(horizons=HORIZONS, meta=True) -> set[str]:
    names = {f"{kind}_h{h}.png" for h in horizons for kind in ("roc", "calibration", "correlation")}
    return names | {"importance.png"} | ({"meta_weights.png"} if meta else set())


def _assert_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    img = imread(path)
    assert img.shape == (*shape, 4), (path.name, img.shape)
    rgb = (img[..., :3] * 255).astype(np.uint32)
    assert rgb.std() > 10, f"{path.name} looks blank"
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 20, f"{path.name} has hardly any colours"
    return img


def test_every_file_written_at_a_fixed_size(rendered):
    assert set(rendered) == _expected()
    for name, path in rendered.items():
        assert path.is_file() and path.name == name
        shape = (len(GBDT) * 500, 1000) if name == "importance.png" else (600, 800)
        _assert_image(path, shape)


def test_roc_differs_between_horizons(rendered):
    a, b = imread(rendered["roc_h5.png"]), imread(rendered["roc_h12.png"])
    assert np.abs(a - b).mean() > 1e-3


def test_missing_inputs_skip_their_plots(inputs, tmp_path):
    base = {"horizons": [5], "oof": inputs["oof"], "holdout": inputs["holdout"], "models": MODELS}
    out = render_plots(tmp_path / "bare", **base)
    assert set(out) == {"roc_h5.png", "calibration_h5.png"}
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == sorted(out)

    # optional inputs present, but not for the horizon asked for; and no label column at all for h=48
    other = {k: inputs[k] for k in ("shipped", "shipped_name", "correlations", "meta_weights")}
    other = {k: {"24": v["24"]} for k, v in other.items()}
    out = render_plots(tmp_path / "other", **{**base, "horizons": [5, 48], **other})
    assert set(out) == {"roc_h5.png", "calibration_h5.png"}


def test_degenerate_inputs_do_not_raise(inputs, tmp_path):
    holdout = inputs["holdout"].with_columns(
        pl.when(pl.col("y_5").is_not_null()).then(pl.lit(1, pl.Int8)).otherwise(None).alias("y_5"),  # one class
        pl.lit(0.5).alias("lstm_h12"),  # constant model
        pl.lit(None, pl.Float64).alias("xgb_h12"),  # all-null model
    )
    shipped = {**inputs["shipped"], "12": np.full(holdout.height, 0.5)}
    m = np.array(inputs["correlations"]["12"]["matrix"], dtype=float)
    m[3, :] = m[:, 3] = np.nan  # the constant model's correlations are undefined
    correlations = {"12": {"models": MODELS, "matrix": [[None if np.isnan(v) else v for v in r] for r in m]}}
    importance = {"lgb": inputs["importance"]["lgb"], "xgb": {str(h): {} for h in HORIZONS}}  # xgb: no gain
    out = render_plots(
        tmp_path / "degenerate",
        **{
            **inputs,
            "horizons": [5, 12],
            "holdout": holdout,
            "shipped": shipped,
            "correlations": correlations,
            "importance": importance,
        },
    )
    expected = {
        "roc_h5.png",
        "calibration_h5.png",
        "roc_h12.png",
        "calibration_h12.png",
        "correlation_h12.png",
        "importance.png",
        "meta_weights.png",
    }
    assert set(out) == expected
    for name in expected - {"importance.png"}:
        _assert_image(out[name], (600, 800))
    _assert_image(out["importance.png"], (500, 1000))  # one model left with any gain


def test_misaligned_shipped_predictions_raise(inputs, tmp_path):
    with pytest.raises(ValueError, match="rows"):
        render_plots(tmp_path / "bad", **{**inputs, "shipped": {"5": np.zeros(3)}})

"""Exporting a run's models to ONNX and proving the graphs score like the native models (parity).

Parity is measured on the holdout rows, against what the run itself computed natively (the refitted models'
holdout predictions and the shipped predictor's holdout probabilities):

- every base model's own file and its branch of ``ensemble.onnx``: max |onnx - native| <= 1e-3 for trees
  (float32 thresholds), <= 1e-4 for the sequence nets;
- the shipped-predictor graph fed the native base probabilities: <= 1e-4;
- ``ensemble.onnx``'s shipped output: <= 1e-3 (it carries the trees' float32 error), and the holdout AUC at every
  horizon equal to 3 decimals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.evaluation.stats import auc
from macd_ml.models.learners.base import Model
from macd_ml.models.learners.train import inference_view
from macd_ml.models.release.onnx_export import (
    EnsembleSpec,
    ensemble_onnx,
    input_window,
    model_onnx,
    predictor_onnx,
)
from macd_ml.models.release.scoring import run_ensemble, session, windows

TREE_TOL = 1e-3
NET_TOL = 1e-4
META_TOL = 1e-4


@dataclass
class Exported:
    files: dict[str, bytes]  # relative path (onnx/NAME.onnx) -> bytes
    parity: dict
    spec: EnsembleSpec


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def export_run(
    models: dict[str, Model],
    predictors: dict[str, Predictor],
    features: pl.DataFrame,
    feature_names: list[str],
    horizons: list[int],
    gap_tolerance_hours: int,
    holdout: pl.DataFrame,
    shipped: pl.DataFrame,
) -> Exported:
    """``holdout``: the run's holdout table (``row``, ``{model}_h{h}``, ``y_{h}``); ``shipped``: the shipped
    predictor's native holdout probabilities (``shipped_h{h}``, same rows and order)."""
    parts = {m: (model_onnx(mod), mod.feature_names, input_window(mod)) for m, mod in models.items()}
    shipped_graph = predictor_onnx(predictors, horizons, list(models))
    ensemble, spec = ensemble_onnx(feature_names, horizons, parts, shipped_graph)
    files = {f"onnx/{m}.onnx": g.SerializeToString() for m, (g, _, _) in parts.items()}
    files[catalog.META_ONNX] = shipped_graph.SerializeToString()
    files[catalog.ENSEMBLE_ONNX] = ensemble.SerializeToString()

    rows = holdout[catalog.ROW].to_numpy().astype(np.int64)
    view = inference_view(features, feature_names, horizons, gap_tolerance_hours)
    ens, provider = session(files[catalog.ENSEMBLE_ONNX])
    out = run_ensemble(ens, windows(view.X, view.segment_start, rows, spec.lookback))
    report: dict = {"provider": provider, "rows": int(len(rows)), "models": {}, "passed": True}
    for m, (_, names, window) in parts.items():
        native = holdout.select([catalog.prediction_column(m, h) for h in horizons]).to_numpy()
        own, _ = session(files[f"onnx/{m}.onnx"])
        cols = [feature_names.index(n) for n in names]
        x = windows(view.X[:, cols], view.segment_start, rows, window)
        x = x[:, -1, :] if window == 1 else x
        own_out = np.concatenate([own.run(None, {"x": x[k : k + 1024]})[0] for k in range(0, len(x), 1024)])
        tol = NET_TOL if window > 1 else TREE_TOL
        entry = {
            "max_abs_file": _max_abs(own_out, native),
            "max_abs_ensemble": _max_abs(out[m], native),
            "tolerance": tol,
        }
        entry["passed"] = bool(entry["max_abs_file"] <= tol and entry["max_abs_ensemble"] <= tol)
        report["models"][m] = entry
    meta_sess, _ = session(files[catalog.META_ONNX])
    feeds = {
        m: holdout.select([catalog.prediction_column(m, h) for h in horizons]).to_numpy().astype(np.float32)
        for m in models
    }
    meta_out = meta_sess.run(None, feeds)[0]
    native_meta = np.column_stack(
        [
            predictors[str(h)].predict(
                holdout.select([catalog.prediction_column(m, h) for m in predictors[str(h)].models]).to_numpy()
            )
            for h in horizons
        ]
    )
    report["meta"] = {"max_abs": _max_abs(meta_out, native_meta), "tolerance": META_TOL}
    report["meta"]["passed"] = bool(report["meta"]["max_abs"] <= META_TOL)
    native_shipped = shipped.select([catalog.shipped_column(h) for h in horizons]).to_numpy()
    report["ensemble"] = {"max_abs": _max_abs(out["shipped"], native_shipped), "tolerance": TREE_TOL, "auc": {}}
    ok_auc = True
    for j, h in enumerate(horizons):
        y = holdout[catalog.label_column(h)].cast(pl.Float64).to_numpy()
        a_native, a_onnx = auc(y, native_shipped[:, j]), auc(y, out["shipped"][:, j].astype(np.float64))
        same = (a_native is None and a_onnx is None) or (
            a_native is not None and a_onnx is not None and round(a_native, 3) == round(a_onnx, 3)
        )
        ok_auc &= same
        report["ensemble"]["auc"][str(h)] = {"native": a_native, "onnx": a_onnx, "equal_to_3_decimals": same}
    report["ensemble"]["passed"] = bool(report["ensemble"]["max_abs"] <= TREE_TOL and ok_auc)
    report["passed"] = bool(
        all(e["passed"] for e in report["models"].values())
        and report["meta"]["passed"]
        and report["ensemble"]["passed"]
    )
    report["spec"] = {
        "lookback": spec.lookback,
        "models": spec.models,
        "horizons": spec.horizons,
        "n_features": len(spec.feature_names),
    }
    return Exported(files=files, parity=report, spec=spec)

"""Scoring through ensemble.onnx vs the native models, one bar and 1,000 bars.

    .venv/bin/python bench/bench_onnx.py [RUN_DIR]      # default: out/current (make run makes one)

Both paths start from the run's own feature table (features are not timed here: see bench_features.py) and
return every horizon's shipped probability. Native = each base model's predict() on the inference view plus the
shipped predictor; ONNX = one ``session.run`` of ensemble.onnx on the windows. p50/p95 over repeated calls,
measured in one process; target on this CPU: one bar, p50 <= 5 ms for the ONNX ensemble.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from macd_ml.artifacts.store import read_json, read_parquet, run_artifacts, verify_run
from macd_ml.models.ensemble.predictor import load_predictors
from macd_ml.models.learners.base import Rows
from macd_ml.models.learners.registry import load_model
from macd_ml.models.learners.train import inference_view
from macd_ml.models.release.onnx_export import ensemble_spec
from macd_ml.models.release.scoring import session, windows


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000.0


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(run: Path) -> None:
    refs = run_artifacts(run, verify_run(run, signed=False))
    config = read_json(refs["config.json"])
    features = read_parquet(refs["features.parquet"])
    spec = ensemble_spec(onnx.load(str(run / "onnx" / "ensemble.onnx")))
    gap = int(config.get("gap_tolerance_hours", 1))
    view = inference_view(features, spec.feature_names, spec.horizons, gap)
    sess, provider = session(run / "onnx" / "ensemble.onnx")
    models = {m: load_model(m, run / "models" / m) for m in spec.models}
    predictors = load_predictors(run / "meta.json")
    last = view.n_rows - 1

    def onnx_path(rows: np.ndarray):
        return sess.run(["shipped"], {"bars": windows(view.X, view.segment_start, rows, spec.lookback)})[0]

    def native_path(rows: np.ndarray):
        probs = {m: model.predict(view, Rows(rows)) for m, model in models.items()}
        return np.column_stack(
            [
                predictors[str(h)].predict(np.column_stack([probs[m][:, j] for m in predictors[str(h)].models]))
                for j, h in enumerate(spec.horizons)
            ]
        )

    one = np.array([last])
    thousand = np.arange(view.n_rows - 1000, view.n_rows)
    agree = float(np.max(np.abs(onnx_path(thousand) - native_path(thousand))))
    print(
        f"run {run.name}: models {', '.join(spec.models)}; lookback {spec.lookback}; "
        f"{len(spec.feature_names)} features; onnxruntime on {provider}; max |onnx - native| {agree:.1e}"
    )
    print(f"{'case':28s} {'p50 ms':>9s} {'p95 ms':>9s}")
    rows = [
        ("ONNX ensemble, 1 bar", timed(lambda: onnx_path(one), 300)),
        ("native models, 1 bar", timed(lambda: native_path(one), 100)),
        ("ONNX ensemble, 1000 bars", timed(lambda: onnx_path(thousand), 20)),
        ("native models, 1000 bars", timed(lambda: native_path(thousand), 10)),
    ]
    for name, xs in rows:
        print(f"{name:28s} {pct(xs, 50):9.2f} {pct(xs, 95):9.2f}")
    p50 = statistics.median(rows[0][1]) * 1000
    print(
        f"target: one bar through ensemble.onnx p50 <= 5 ms: {'met' if p50 <= 5 else 'NOT met'} ({p50:.2f} ms); "
        f"native/ONNX one-bar ratio {statistics.median(rows[1][1]) / statistics.median(rows[0][1]):.1f}x"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/current").resolve())

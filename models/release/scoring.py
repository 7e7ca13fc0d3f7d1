"""Scoring feature rows through ONNX: the onnxruntime session (CUDA only when a GPU really answers), the input
windows ``ensemble.onnx`` reads, and a table of its outputs. Pure: the caller gives frames and model bytes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.segments import window_index
from macd_ml.models.learners.device import cuda_available
from macd_ml.models.learners.train import inference_view
from macd_ml.models.release.onnx_export import EnsembleSpec

log = logging.getLogger(__name__)
BATCH = 1024


def session(model: bytes | str | Path):
    """An onnxruntime session and the provider it really uses. ``get_available_providers()`` lists CUDA on any
    onnxruntime-gpu install, GPU or not; so CUDA is asked for only when torch finds a device that answers, and
    the provider reported is the one the session ended up with."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_available() else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about output shapes of converted trees are noise here
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, sess_options=opts, providers=wanted)
    provider = sess.get_providers()[0]
    log.info("onnxruntime provider: %s", provider)
    return sess, provider


def windows(X: np.ndarray, segment_start: np.ndarray, rows: np.ndarray, lookback: int) -> np.ndarray:
    """``[len(rows), lookback, F]`` float32: the bars up to each row, oldest first, clamped at its segment's
    first bar (the same windows the sequence models trained on)."""
    return X[window_index(rows, segment_start, lookback)].astype(np.float32, copy=False)


def run_ensemble(sess, bars: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k in range(0, len(bars), BATCH):
        for n, v in zip(names, sess.run(None, {"bars": bars[k : k + BATCH]})):
            outs[n].append(v)
    return {n: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for n, v in outs.items()}


def score_features(
    sess, spec: EnsembleSpec, features: pl.DataFrame, rows: np.ndarray, gap_tolerance_hours: int
) -> pl.DataFrame:
    """Score ``rows`` of a feature table (timestamp + features, in time order): ``timestamp``, ``shipped_h{h}``
    and ``{model}_h{h}`` for every base model."""
    view = inference_view(features, spec.feature_names, spec.horizons, gap_tolerance_hours)
    bars = windows(view.X, view.segment_start, np.asarray(rows, dtype=np.int64), spec.lookback)
    out = run_ensemble(sess, bars)
    cols: dict[str, object] = {catalog.TIMESTAMP: features[catalog.TIMESTAMP].gather(rows)}
    for j, h in enumerate(spec.horizons):
        cols[catalog.shipped_column(h)] = out["shipped"][:, j].astype(np.float64)
    for m in spec.models:
        for j, h in enumerate(spec.horizons):
            cols[catalog.prediction_column(m, h)] = out[m][:, j].astype(np.float64)
    return pl.DataFrame(cols)

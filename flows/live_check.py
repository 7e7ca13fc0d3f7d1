"""The health gate's live check, run in a fresh process: what a bot would compute from raw candles.

``python -m macd_ml.flows.live_check JOB.json`` reads the candle folder, builds the features with the run's
feature spec through the current feature code, scores the newest bars with ``ensemble.onnx`` and writes
``timestamp`` + ``shipped_h{h}`` to the job's ``out`` file as JSON
(a list of rows). The parent compares them with the run's own
predictions; a mismatch means the feature code (or the data) is not what the run was trained with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import polars as pl

from macd_ml.artifacts import catalog


def main(job_path: str) -> int:
    from macd_ml.features.build import build_features
    from macd_ml.features.ingest import load_market
    from macd_ml.features.spec import FeatureSpec
    from macd_ml.models.release.onnx_export import ensemble_spec
    from macd_ml.models.release.scoring import score_features, session

    job = json.loads(Path(job_path).read_text())
    meta = json.loads(Path(job["features_json"]).read_text())
    spec = ensemble_spec(onnx.load(job["ensemble"]))
    market = load_market(job["data_dir"], meta["target"], meta["cross"])
    table = build_features(market, FeatureSpec.model_validate(meta["spec"]), int(job["gap_tolerance_hours"]))
    if table.names != spec.feature_names:
        extra = sorted(set(table.names) ^ set(spec.feature_names))[:5]
        print(f"the feature code builds other features than the run's ensemble reads: {extra}", file=sys.stderr)
        return 3
    n = min(int(job["bars"]), table.frame.height)
    rows = np.arange(table.frame.height - n, table.frame.height)
    sess, _ = session(job["ensemble"])
    scored = score_features(sess, spec, table.frame, rows, int(job["gap_tolerance_hours"]))
    rows_out = scored.select(
        pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%z"), *[catalog.shipped_column(h) for h in spec.horizons]
    )
    Path(job["out"]).write_text(json.dumps(rows_out.to_dicts()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Reference task: the fixed simple LightGBM (models/reference.py) on the same folds and holdout as the ensemble;
its predictions go to the run folder (``reference_predictions.parquet``) and its AUCs to metrics.json."""

from __future__ import annotations

from prefect import get_run_logger

from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_parquet
from macd_ml.models.reference import reference_predictions
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import TrainingData, load_folds
from macd_ml.tasks.results import cached_task


@cached_task(name="reference")
def reference_task(inputs: TrainingData, out_dir: str) -> ArtifactRef:
    table = reference_predictions(
        read_parquet(inputs.features.data),
        read_parquet(inputs.labels),
        load_folds(inputs.folds),
        inputs.horizons,
        inputs.gap_tolerance_hours,
    )
    ref = write_parquet(cache_dir(out_dir, "reference", current_key()) / "reference_predictions.parquet", table)
    get_run_logger().info("reference model: %d OOF + holdout predictions", table.height)
    return ref

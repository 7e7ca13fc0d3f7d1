"""Bundle task: after promotion, the run packed for the bot (serving/bundle.py) into ``OUT/bundles/``."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from macd_ml.artifacts.store import ArtifactRef, RunRef
from macd_ml.serving.bundle import save_bundle
from macd_ml.tasks.results import cached_task


@cached_task(name="bundle")
def bundle_task(run: RunRef, out_dir: str) -> ArtifactRef:
    ref = save_bundle(run.path, Path(out_dir) / "bundles" / f"{run.run_id}.tar.gz")
    get_run_logger().info("bundle %s (%d bytes, sha256 %s)", ref.path, ref.bytes, ref.sha256)
    return ref

"""Bundle task: the run packed for the bot (serving/bundle.py) into ``OUT/bundles/``, before it is promoted (so
``OUT/current`` never names a run without its bundle)."""

from __future__ import annotations

import logging
from pathlib import Path

from macd_ml.artifacts.store import ArtifactRef, RunRef
from macd_ml.serving.bundle import save_bundle
from macd_ml.tasks.results import cached_task

log = logging.getLogger(__name__)


@cached_task(name="bundle")
def bundle_task(run: RunRef, out_dir: str) -> ArtifactRef:
    ref = save_bundle(run.path, Path(out_dir) / "bundles" / f"{run.run_id}.tar.gz")
    log.info("bundle %s (%d bytes, sha256 %s)", ref.path, ref.bytes, ref.sha256)
    return ref

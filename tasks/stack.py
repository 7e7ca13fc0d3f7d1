"""Stacking task: choose and fit what ships per horizon from OOF rows, then report it on the holdout."""

from __future__ import annotations

import logging
from pathlib import Path

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_json, write_parquet
from macd_ml.models.ensemble.predictor import predictors_document
from macd_ml.models.ensemble.stacking import StackOutcome, StackSpec, stack_all
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import StackResult
from macd_ml.tasks.results import cached_task

log = logging.getLogger(__name__)


@cached_task(name="stack")
def stack_task(
    tables: dict[str, ArtifactRef],
    models: list[str],
    horizons: list[int],
    spec: StackSpec,
    embargo_hours: int,
    collapsed: dict[str, bool],
    out_dir: str,
) -> StackResult:
    """meta.json (the shipped predictors), stack.json (the choice and diversity) and the shipped holdout scores."""
    oof = read_parquet(tables[catalog.OOF])
    holdout = read_parquet(tables[catalog.HOLDOUT_PREDICTIONS])
    outcome = stack_all(oof, holdout, models, horizons, spec, embargo_hours, collapsed)
    for h, m in outcome.metrics.items():
        log.info("h=%s ships %s: inner-CV AUC %s, holdout %s", h, m.shipped, m.val_auc, m.test_auc)
    files = write_stack(cache_dir(out_dir, "stack", current_key()), outcome, horizons, spec)
    return StackResult(files=files, meta=outcome.metrics, diversity=outcome.diversity)


def write_stack(
    folder: Path, outcome: StackOutcome, horizons: list[int], spec: StackSpec, extra: dict | None = None
) -> dict[str, ArtifactRef]:
    """The stacking stage's files (the stage and ``macd-ml stack`` on a published run write them alike)."""
    doc = {"meta": outcome.metrics, "diversity": outcome.diversity, "spec": spec.model_dump(), **(extra or {})}
    files = {
        catalog.META: write_json(folder / catalog.META, predictors_document(horizons, outcome.predictors)),
        catalog.STACK: write_json(folder / catalog.STACK, doc),
        catalog.SHIPPED_HOLDOUT: write_parquet(folder / catalog.SHIPPED_HOLDOUT, outcome.shipped),
    }
    if outcome.oof_shipped is not None:  # the gate's threshold is chosen on these rows (models/evaluation/backtest.py)
        files[catalog.SHIPPED_OOF] = write_parquet(folder / catalog.SHIPPED_OOF, outcome.oof_shipped)
    return files

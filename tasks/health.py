"""Health task: the gate before promotion (models/release/health.py) on the run's artifacts, before they are
published."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, write_json
from macd_ml.models.evaluation.metrics import HealthReport, Metrics
from macd_ml.models.release.health import HealthSpec, evaluate
from macd_ml.serving.live_check import live_check
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import MarketRef, reload_market
from macd_ml.tasks.results import cached_task, result_type

log = logging.getLogger(__name__)


@result_type
class HealthResult(BaseModel):
    report: HealthReport
    file: ArtifactRef  # health.json


@cached_task(name="health")
def health_task(
    artifacts: dict[str, ArtifactRef],
    metrics: Metrics,
    config: dict,
    spec: HealthSpec,
    collapse_std: float,
    market: MarketRef | None,
    out_dir: str,
) -> HealthResult:
    """``market``: the run's validated candles, for the live check (serving/live_check.py); None skips it."""
    live = live_check(reload_market(market)) if market is not None else None
    report = evaluate(artifacts, metrics, config, spec, collapse_std, live)
    for line in report.table().splitlines():
        log.info(line)
    ref = write_json(cache_dir(out_dir, "health", current_key()) / catalog.HEALTH, report.model_dump(mode="json"))
    return HealthResult(report=report, file=ref)

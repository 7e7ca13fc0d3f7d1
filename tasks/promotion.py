"""Champion / challenger before ``current`` moves (models/release/promotion.py). Never cached: the champion is whatever
``OUT/current`` is when the run gets here."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from macd_ml.artifacts.store import ArtifactRef, current_champion, run_dir
from macd_ml.features.build import FeatureTable
from macd_ml.features.ingest import load_market
from macd_ml.features.spec import FeatureSpec
from macd_ml.models.evaluation.metrics import Decision, Metrics
from macd_ml.models.release.promotion import PromotionSpec, decide
from macd_ml.tasks.candles import candle_reader
from macd_ml.tasks.table import feature_table

log = logging.getLogger(__name__)


def _features(data_dir: str, out_dir: str):
    """The champion's feature table from the run's stored candles (and, for the run's own spec, its stored table)."""

    def features(target: str, cross: list[str], spec: FeatureSpec, gap: int) -> FeatureTable:
        market = load_market(data_dir, target, cross, read=candle_reader(out_dir))
        return feature_table(market, spec, gap, out_dir)

    return features


@task(name="champion-challenger", cache_policy=NO_CACHE, persist_result=False)
def champion_task(
    out_dir: str,
    artifacts: dict[str, ArtifactRef],
    metrics: Metrics,
    data_dir: str,
    horizon: int,
    spec: PromotionSpec,
    run_id: str,
) -> Decision:
    name = current_champion(out_dir)
    champion = run_dir(out_dir, name).resolve() if name else None
    decision = decide(
        artifacts,
        metrics,
        champion,
        data_dir,
        horizon,
        spec,
        challenger_id=run_id,
        features=_features(data_dir, out_dir),
    )
    (log.warning if decision.forced else log.info)(
        "champion/challenger: %s: %s", "promote" if decision.promote else "keep the champion", decision.reason
    )
    return decision

"""Feature, label and fold stages: each wraps a pure function from ``features/`` and returns a reference.
Outputs go to the content-addressed cache (``OUT/cache/STAGE/KEY/``) first; the run folder gets copies at
publish time."""

from __future__ import annotations

import logging

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.artifacts.codehash import code_version
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_json, write_parquet
from macd_ml.features.build import table_until
from macd_ml.features.labels import align_labels, label_name, make_labels
from macd_ml.features.spec import FeatureSpec
from macd_ml.features.splits import FoldSpec, check_folds, make_folds
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import MarketRef, TableRef, reload_market
from macd_ml.tasks.results import cached_task
from macd_ml.tasks.table import feature_table

log = logging.getLogger(__name__)


@cached_task(name="features")
def features_task(market: MarketRef, spec: FeatureSpec, gap_tolerance_hours: int, out_dir: str) -> TableRef:
    table = feature_table(reload_market(market, whole=True), spec, gap_tolerance_hours, out_dir)
    if market.until is not None:  # the whole table, built once for every cutoff, sliced (features/build.py)
        table = table_until(table, reload_market(market), spec, gap_tolerance_hours)
    folder = cache_dir(out_dir, "features", current_key())
    data = write_parquet(folder / catalog.FEATURES, table.frame)
    meta = write_json(
        folder / catalog.FEATURES_META,
        {
            "target": table.target,
            "cross": list(table.cross),
            "names": table.names,
            "fingerprint": table.fingerprint,
            "n_rows": table.frame.height,
            "rows_dropped": table.rows_dropped,
            "spec": spec.model_dump(mode="json"),
            **({"until": market.until.isoformat()} if market.until else {}),  # the cutoff the rows end at
            "gap_tolerance_hours": gap_tolerance_hours,
            "code_version": code_version("macd_ml.features.build"),
        },
    )
    log.info("features: %d rows x %d features", table.frame.height, len(table.names))
    return TableRef(data=data, meta=meta, names=table.names, fingerprint=table.fingerprint, n_rows=table.frame.height)


@cached_task(name="labels")
def labels_task(
    market: MarketRef,
    features: TableRef,
    horizons: list[int],
    dead_zone_bps: float,
    gap_tolerance_hours: int,
    out_dir: str,
) -> ArtifactRef:
    """Labels for exactly the feature table's rows (same order)."""
    candles = reload_market(market).target.frame
    labels = make_labels(candles, horizons, dead_zone_bps=dead_zone_bps, gap_tolerance_hours=gap_tolerance_hours)
    aligned = align_labels(read_parquet(features.data), labels)
    ref = write_parquet(cache_dir(out_dir, "labels", current_key()) / catalog.LABELS, aligned)
    for h in horizons:
        y = aligned[label_name(h)]
        defined = y.drop_nulls().cast(pl.Float64).to_numpy()
        log.info("labels h=%d: %d defined, %.3f up", h, len(defined), defined.mean() if len(defined) else 0.0)
    return ref


@cached_task(name="folds")
def folds_task(features: TableRef, horizons: list[int], spec: FoldSpec, out_dir: str) -> ArtifactRef:
    ts = read_parquet(features.data)[catalog.TIMESTAMP]
    folds = make_folds(ts, horizons, spec)
    check_folds(folds, ts)
    return write_json(cache_dir(out_dir, "folds", current_key()) / catalog.FOLDS, folds.model_dump(mode="json"))

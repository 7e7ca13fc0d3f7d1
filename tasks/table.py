"""The feature table, built once per content (docs/architecture.md, "Candles parsed once"): stored under
``OUT/cache/feature-table/KEY/`` (KEY: the market's fingerprint, the feature spec, the gap tolerance and the feature
code version) with a signed record (artifacts/records.py). No Prefect here: preflight runs before a server starts."""

from __future__ import annotations

from pathlib import Path

from macd_ml.artifacts import catalog
from macd_ml.artifacts.codehash import code_version
from macd_ml.artifacts.records import load_record, save_record
from macd_ml.artifacts.store import cache_dir
from macd_ml.features.build import FeatureTable, build_features
from macd_ml.features.ingest import Market
from macd_ml.features.spec import FeatureSpec
from macd_ml.tasks.candles import COUNTS
from macd_ml.tasks.keys import make_key


def _table_folder(out_dir: Path | str, market: Market, spec: FeatureSpec, gap_tolerance_hours: int) -> Path:
    params = {
        "market": market.fingerprint(),
        "target": market.target.symbol,
        "cross": [c.symbol for c in market.cross],
        "spec": spec.model_dump(mode="json"),
        "gap_tolerance_hours": gap_tolerance_hours,
    }
    return cache_dir(
        out_dir, "feature-table", make_key("feature-table", code_version("macd_ml.features.build"), params)
    )


def feature_table(
    market: Market, spec: FeatureSpec, gap_tolerance_hours: int, out_dir: Path | str | None, store: bool = True
) -> FeatureTable:
    """The feature table of ``market``: stored (for the same content, spec and code) or built (and stored)."""
    if out_dir is not None:
        stored = load_record(_table_folder(out_dir, market, spec, gap_tolerance_hours), "feature-table")
        if stored is not None:
            doc, frame = stored
            return FeatureTable(
                frame=frame,
                names=doc["names"],
                fingerprint=doc["fingerprint"],
                target=doc["target"],
                cross=tuple(doc["cross"]),
                rows_dropped=doc["rows_dropped"],
            )
    table = build_features(market, spec, gap_tolerance_hours)
    COUNTS["built"] += 1
    if out_dir is not None and store:
        store_table(table, market, spec, gap_tolerance_hours, out_dir)
    return table


def store_table(
    table: FeatureTable, market: Market, spec: FeatureSpec, gap_tolerance_hours: int, out_dir: Path | str
) -> None:
    folder = _table_folder(out_dir, market, spec, gap_tolerance_hours)
    if load_record(folder, "feature-table") is None:
        doc = {
            "names": table.names,
            "fingerprint": table.fingerprint,
            "target": table.target,
            "cross": list(table.cross),
            "rows_dropped": table.rows_dropped,
        }
        save_record(folder, "feature-table", catalog.FEATURES, table.frame, doc)

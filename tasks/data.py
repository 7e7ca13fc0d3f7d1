"""Data-stage tasks: synthetic market, ingest + validation, features, labels, folds.

Each wraps a pure function from ``features/`` and returns a small reference (paths + hashes), never a frame.
Outputs go to the content-addressed cache (``OUT/cache/STAGE/KEY/``) first; the run folder gets copies at
publish time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import polars as pl
from prefect import get_run_logger
from pydantic import BaseModel

from features import CODE_VERSION
from features.build import build_features
from features.errors import DataError
from features.ingest import Market, default_cross, file_sha256, find_symbol_file, load_market
from features.labels import label_name, make_labels
from features.spec import FeatureSpec
from features.splits import FoldSpec, Folds, check_folds, make_folds
from features.synth import SynthSpec, synth_market, write_market
from tasks.policy import content_key
from tasks.results import cached_task, result_type
from tasks.store import ArtifactRef, cache_dir, read_json, read_parquet, ref_for, write_bytes, write_json, write_parquet

@result_type
class MarketRef(BaseModel):
    """Validated inputs: which files, their hashes, and what ingest found (gaps, rows, span)."""

    data_dir: str
    target: str
    cross: list[str]
    files: dict[str, ArtifactRef]
    fingerprint: str
    rows: dict[str, int]
    gaps: dict[str, dict]
    span: dict[str, list[str]]

    def cache_token(self) -> dict:
        return {"market": self.fingerprint, "target": self.target, "cross": self.cross}


@result_type
class TableRef(BaseModel):
    """The feature table on disk plus what travels with it: names and fingerprint."""

    data: ArtifactRef
    meta: ArtifactRef
    names: list[str]
    fingerprint: str
    n_rows: int

    def cache_token(self) -> dict:
        return {"features": self.data.sha256}


def market_ref(market: Market, data_dir: Path | str) -> MarketRef:
    candles = (market.target, *market.cross)
    return MarketRef(
        data_dir=str(Path(data_dir).resolve()),
        target=market.target.symbol,
        cross=[c.symbol for c in market.cross],
        files={c.symbol: ref_for(c.path) for c in candles},
        fingerprint=market.fingerprint(),
        rows={c.symbol: c.frame.height for c in candles},
        gaps=market.gap_reports(),
        span={
            c.symbol: [c.frame["timestamp"][0].isoformat(), c.frame["timestamp"][-1].isoformat()] for c in candles
        },
    )


def reload_market(ref: MarketRef) -> Market:
    """Re-read the inputs a MarketRef names; refuse if any file changed since it was validated."""
    market = load_market(ref.data_dir, ref.target, ref.cross)
    if market.fingerprint() != ref.fingerprint:
        raise DataError(ref.data_dir, "input files changed during the run; start a new run")
    return market


def resolve_cross(data_dir: str, target: str, cross: list[str] | None) -> list[str]:
    return default_cross(data_dir, target) if cross is None else list(cross)


# --------------------------------------------------------------------------------------------- tasks


@cached_task(name="synthetic-market", cache_key_fn=content_key("synthetic"))
def synthetic_market_task(spec: SynthSpec, out_dir: str) -> str:
    """Generate (or reuse) the deterministic synthetic market for ``spec``; return its folder.

    The folder is named by the spec's hash and stamped last, so a half-written folder is regenerated."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    folder = Path(out_dir) / "synthetic" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    stamp = folder / "synth.json"
    if stamp.is_file() and stamp.read_text() == blob:
        return str(folder)
    market = synth_market(spec.symbols, spec.hours, spec.seed, spec.signal, gaps=spec.gaps)
    write_market(market, folder)
    write_bytes(stamp, blob.encode())
    get_run_logger().info("synthetic market (%s bars x %s) written to %s", spec.hours, len(spec.symbols), folder)
    return str(folder)


def _ingest_key(context, parameters: dict) -> str:
    """Keyed on the bytes of the files ingest would read, so new candles always invalidate it."""
    try:
        data_dir, target = parameters["data_dir"], parameters["target"]
        cross = resolve_cross(data_dir, target, parameters["cross"])
        files = [find_symbol_file(data_dir, s) for s in [target, *cross]]
        digest = {str(f.name): file_sha256(f) for f in files}
    except Exception:  # let the task itself run and report the problem
        return f"ingest-uncached-{uuid.uuid4().hex}"
    return content_key("ingest")(context, {"dir": str(Path(data_dir).resolve()), "target": target,
                                           "cross": cross, "files": digest})


@cached_task(name="ingest", cache_key_fn=_ingest_key)
def ingest_task(data_dir: str, target: str, cross: list[str] | None) -> MarketRef:
    """Read and validate every input file; nothing is written. Cached on the files' content."""
    cross = resolve_cross(data_dir, target, cross)
    market = load_market(data_dir, target, cross)
    ref = market_ref(market, data_dir)
    log = get_run_logger()
    for sym, g in ref.gaps.items():
        if g["n_gaps"]:
            log.warning("%s: %d gaps, longest %d h, %d h missing in all", sym, g["n_gaps"], g["longest_hours"], g["missing_hours"])
    log.info("validated %s (%s rows) with cross %s", target, ref.rows[target], ref.cross or "none")
    return ref


@cached_task(name="features", cache_key_fn=content_key("features"))
def features_task(market: MarketRef, spec: FeatureSpec, gap_tolerance_hours: int, out_dir: str) -> TableRef:
    table = build_features(reload_market(market), spec, gap_tolerance_hours)
    folder = cache_dir(out_dir, "features", table.fingerprint)
    data = write_parquet(folder / "features.parquet", table.frame)
    meta = write_json(
        folder / "features.json",
        {
            "target": table.target,
            "cross": list(table.cross),
            "names": table.names,
            "fingerprint": table.fingerprint,
            "n_rows": table.frame.height,
            "rows_dropped": table.rows_dropped,
            "spec": spec.model_dump(mode="json"),
            "gap_tolerance_hours": gap_tolerance_hours,
            "code_version": CODE_VERSION,
        },
    )
    get_run_logger().info("features: %d rows x %d features", table.frame.height, len(table.names))
    return TableRef(data=data, meta=meta, names=table.names, fingerprint=table.fingerprint, n_rows=table.frame.height)


@cached_task(name="labels", cache_key_fn=content_key("labels"))
def labels_task(
    market: MarketRef, features: TableRef, horizons: list[int], dead_zone_bps: float, gap_tolerance_hours: int,
    out_dir: str,
) -> ArtifactRef:
    """Labels for exactly the feature table's rows (same order)."""
    candles = reload_market(market).target.frame
    labels = make_labels(candles, horizons, dead_zone_bps=dead_zone_bps, gap_tolerance_hours=gap_tolerance_hours)
    rows = read_parquet(features.data).select("timestamp")
    aligned = rows.join(labels, on="timestamp", how="left", maintain_order="left")
    key = content_key("labels")(None, {"m": market, "f": features, "h": horizons, "d": dead_zone_bps, "g": gap_tolerance_hours})
    ref = write_parquet(cache_dir(out_dir, "labels", key) / "labels.parquet", aligned)
    log = get_run_logger()
    for h in horizons:
        y = aligned[label_name(h)]
        log.info("labels h=%d: %d defined, %.3f up", h, y.drop_nulls().len(), float(y.mean() or 0.0))
    return ref


@cached_task(name="folds", cache_key_fn=content_key("folds"))
def folds_task(features: TableRef, horizons: list[int], spec: FoldSpec, out_dir: str) -> ArtifactRef:
    ts = read_parquet(features.data)["timestamp"]
    folds = make_folds(ts, horizons, spec)
    check_folds(folds, ts)
    key = content_key("folds")(None, {"f": features, "h": horizons, "s": spec})
    return write_json(cache_dir(out_dir, "folds", key) / "folds.json", folds.model_dump(mode="json"))


def load_folds(ref: ArtifactRef) -> Folds:
    return Folds.model_validate(read_json(ref))


def load_labels(ref: ArtifactRef) -> pl.DataFrame:
    return read_parquet(ref)

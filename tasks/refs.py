"""Typed data that passes between stages: small references (paths + sha256) and what travels with them, never
frames. Each type is registered as an allowed result type (tasks.results) and reduces to its content for cache
keys (``cache_token``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, read_json, read_parquet, ref_for
from macd_ml.features.ingest import Candles, Market, default_cross
from macd_ml.features.splits import Folds
from macd_ml.models.evaluation.metrics import Diversity, Shipped
from macd_ml.tasks.results import result_type


@result_type
class MarketRef(BaseModel):
    """Validated inputs: which files, their hashes, the stored validated candles (tasks/candles.py) and what
    ingest found (gaps, rows, span)."""

    data_dir: str
    target: str
    cross: list[str]
    files: dict[str, ArtifactRef]
    candles: dict[str, ArtifactRef]
    fingerprint: str
    rows: dict[str, int]
    gaps: dict[str, dict]
    span: dict[str, list[str]]
    until: datetime | None = None  # the cutoff (Market.until): ``candles`` are the whole files', read up to it

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


def market_ref(
    market: Market, data_dir: Path | str, stored: dict[str, ArtifactRef], until: datetime | None = None
) -> MarketRef:
    """``market`` (cut at ``until`` when given; ``stored``: the whole files' stored candles) as a reference."""
    candles = (market.target, *market.cross)
    return MarketRef(
        until=until,
        candles=stored,
        data_dir=str(Path(data_dir).resolve()),
        target=market.target.symbol,
        cross=[c.symbol for c in market.cross],
        files={c.symbol: ref_for(_file(c)) for c in candles},
        fingerprint=market.fingerprint(),
        rows={c.symbol: c.frame.height for c in candles},
        gaps=market.gap_reports(),
        span={
            c.symbol: [c.frame[catalog.TIMESTAMP][0].isoformat(), c.frame[catalog.TIMESTAMP][-1].isoformat()]
            for c in candles
        },
    )


def _file(c) -> Path:
    if c.path is None:
        raise ValueError(f"{c.symbol}: the flow reads candles from files; these were given in memory")
    return c.path


def reload_market(ref: MarketRef, whole: bool = False) -> Market:
    """The validated candles a MarketRef names, read from their stored copies (each checked against its sha256):
    no file is parsed again, and a file edited during the run changes nothing in it. Cut at the reference's
    cutoff, unless ``whole`` (the features stage: it builds the whole table once and slices it)."""

    def candles(symbol: str) -> Candles:
        return Candles(
            symbol=symbol,
            path=Path(ref.files[symbol].path),
            sha256=ref.files[symbol].sha256,
            frame=read_parquet(ref.candles[symbol]),
        )

    market = Market(target=candles(ref.target), cross=tuple(candles(c) for c in ref.cross))
    return market if whole else market.until(ref.until)


def resolve_cross(data_dir: str, target: str, cross: list[str] | None) -> list[str]:
    return default_cross(data_dir, target) if cross is None else list(cross)


@result_type
class FoldOutput(BaseModel):
    model: str
    fold: int
    predictions: ArtifactRef  # parquet: row, timestamp, p_<h> per horizon
    summary: dict  # deterministic: what the fit chose (best iteration, device, collapse check)
    seconds: float = 0.0  # wall-clock fit time: reported, never part of a cache key

    def cache_token(self) -> dict:
        return {"model": self.model, "fold": self.fold, "predictions": self.predictions.sha256, "summary": self.summary}


@result_type
class RefitOutput(BaseModel):
    model: str
    files: dict[str, ArtifactRef]  # file name -> model file in the cache
    holdout: ArtifactRef
    summary: dict
    seconds: float = 0.0

    def cache_token(self) -> dict:
        return {
            "model": self.model,
            "files": {k: v.sha256 for k, v in sorted(self.files.items())},
            "holdout": self.holdout.sha256,
            "summary": self.summary,
        }


class PanelMember(BaseModel):
    """One more symbol for pooled training (``models.pooled``): its feature table (the target's features, same
    cross symbols) and its labels."""

    symbol: str
    features: TableRef
    labels: ArtifactRef
    market: MarketRef | None = None  # its validated candles (the trade gate's pooled rows read them)


def load_folds(ref: ArtifactRef) -> Folds:
    return Folds.model_validate(read_json(ref))


def load_labels(ref: ArtifactRef) -> pl.DataFrame:
    return read_parquet(ref)


@result_type
class StackResult(BaseModel):
    """The stacking stage: its files (meta.json, stack.json, shipped_holdout.parquet) and per-horizon results."""

    files: dict[str, ArtifactRef]
    meta: dict[str, Shipped]
    diversity: dict[str, Diversity]


class TrainingData(BaseModel):
    """What every training task reads: the feature table, labels and folds (by reference), the horizons, the gap
    rule and the collapse threshold. One object, so the fold tasks and the refits take the same inputs."""

    features: TableRef
    labels: ArtifactRef
    folds: ArtifactRef
    horizons: list[int]
    gap_tolerance_hours: int
    collapse_std: float

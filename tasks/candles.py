"""The run's candles, parsed once (docs/architecture.md, "Candles parsed once"); the feature table's store is
tasks/table.py. No Prefect here: preflight runs before a Prefect server starts.

Validated candles are stored per source file under ``OUT/cache/candles/KEY/`` (KEY: the file's sha256, its
symbol and the ingest code version) and the feature table per content under ``OUT/cache/feature-table/KEY/``
(KEY: the market's fingerprint, the feature spec, the gap tolerance and the feature code version). Each folder
holds its parquet and a record, written last, naming the parquet's sha256 and signed with the cache's HMAC key
(artifacts/signing.py), so a record edited or a parquet swapped is not used: the candles are parsed (or the
table built) again. Preflight, ingest, labels, the backtest and the health gate's live check all read these, so
a cold run parses each candle file once and builds the feature table once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from macd_ml.artifacts.codehash import code_version
from macd_ml.artifacts.records import load_record, save_record
from macd_ml.artifacts.store import (
    ArtifactRef,
    cache_dir,
    sha256_file,
    write_bytes,
)
from macd_ml.features.ingest import Candles, Market, read_candles
from macd_ml.features.synth import SynthSpec, synth_market, write_market
from macd_ml.tasks.keys import make_key

log = logging.getLogger(__name__)

# how often this process parsed a candle file and built a feature table (tests and benches read them)
COUNTS = {"parsed": 0, "built": 0}


# --------------------------------------------------------------------------------------------------- candles


def _candles_folder(out_dir: Path | str, sha: str, symbol: str) -> Path:
    key = make_key("candles", code_version("macd_ml.features.ingest"), {"sha256": sha, "symbol": symbol.upper()})
    return cache_dir(out_dir, "candles", key)


def candle_reader(out_dir: Path | str | None, store: bool = True) -> Callable[[Path, str], Candles]:
    """A ``read`` for :func:`macd_ml.features.ingest.load_market`: the stored validated candles of a file when
    its bytes were seen before, else the file parsed and validated (and stored when ``store``)."""

    def read(path: Path, symbol: str) -> Candles:
        if out_dir is not None:
            sha = sha256_file(path)
            folder = _candles_folder(out_dir, sha, symbol)
            stored = load_record(folder, "candles")
            if stored is not None:
                return Candles(symbol=symbol.upper(), path=Path(path), sha256=sha, frame=stored[1])
        candles = read_candles(path, symbol)
        COUNTS["parsed"] += 1
        if out_dir is not None and store:
            store_candles(candles, out_dir)
        return candles

    return read


def store_candles(candles: Candles, out_dir: Path | str) -> ArtifactRef:
    """Store one symbol's validated candles (read from a file) under their file's content key, unless a verified
    copy is there already; returns the stored parquet's reference."""
    if candles.path is None:
        raise ValueError(f"{candles.symbol}: only candles read from a file are stored by the file's content")
    folder = _candles_folder(out_dir, candles.sha256, candles.symbol)
    stored = load_record(folder, "candles")
    if stored is not None:
        return ArtifactRef.model_validate(stored[0]["file"])
    doc = {"symbol": candles.symbol, "source": candles.sha256}
    return save_record(folder, "candles", "candles.parquet", candles.frame, doc)


def market_candles(market: Market, out_dir: Path | str) -> dict[str, ArtifactRef]:
    """The stored candles of every symbol of ``market`` (stored now if they were not)."""
    return {c.symbol: store_candles(c, out_dir) for c in (market.target, *market.cross)}


# ------------------------------------------------------------------------------------------ synthetic market


def write_synthetic_market(spec: SynthSpec, out_dir: Path | str) -> Path:
    """The synthetic market for ``spec`` as candle files under ``OUT/synthetic/HASH/`` (generated once: the folder
    is named by the spec's hash and stamped last, so a half-written folder is generated again)."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    folder = Path(out_dir) / "synthetic" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    stamp = folder / "synth.json"
    if stamp.is_file() and stamp.read_text() == blob:
        return folder
    write_market(
        synth_market(spec.symbols, spec.hours, spec.seed, spec.signal, gaps=spec.gaps, trade_signal=spec.trade_signal),
        folder,
    )
    write_bytes(stamp, blob.encode())
    log.info("synthetic market (%s bars x %s) written to %s", spec.hours, len(spec.symbols), folder)
    return folder

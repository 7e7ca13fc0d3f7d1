"""Input stages: the synthetic market (when no data folder is given) and ingest + validation of the candles.
Each returns a small reference; nothing here reads feature code."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from pathlib import Path

from macd_ml.artifacts.store import sha256_file
from macd_ml.features.ingest import find_symbol_file, load_market
from macd_ml.features.synth import SynthSpec
from macd_ml.tasks.candles import candle_reader, market_candles, write_synthetic_market
from macd_ml.tasks.policy import ContentKey
from macd_ml.tasks.refs import MarketRef, market_ref, resolve_cross
from macd_ml.tasks.results import cached_task

log = logging.getLogger(__name__)


@cached_task(name="synthetic-market")
def synthetic_market_task(spec: SynthSpec, out_dir: str) -> str:
    """Generate (or reuse) the deterministic synthetic market for ``spec``; return its folder (tasks/candles.py)."""
    return str(write_synthetic_market(spec, out_dir))


class IngestKey(ContentKey):
    """Keyed on the bytes of the files ingest would read, so new candles always invalidate it."""

    def inputs(self, inputs: dict) -> dict:
        data_dir, target = inputs["data_dir"], inputs["target"]
        cross = resolve_cross(data_dir, target, inputs["cross"])
        files = [find_symbol_file(data_dir, s) for s in [target, *cross]]
        return {
            "dir": str(Path(data_dir).resolve()),
            "target": target,
            "cross": cross,
            "files": {str(f.name): sha256_file(f) for f in files},
            "until": inputs.get("until"),
        }

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
        try:
            return super().compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        except Exception:  # let the task itself run and report the problem
            return f"ingest-uncached-{uuid.uuid4().hex}"


@cached_task(name="ingest", cache_policy=IngestKey())
def ingest_task(
    data_dir: str, target: str, cross: list[str] | None, out_dir: str, until: datetime | None = None
) -> MarketRef:
    """Read and validate every input file (or reuse the candles validated from the same bytes before) and store
    the validated candles (tasks/candles.py). Cached on the files' content. With ``until``, the market is the
    one a bot saw when that bar was the newest (``Market.until``): every later stage reads only bars up to it."""
    cross = resolve_cross(data_dir, target, cross)
    market = load_market(data_dir, target, cross, read=candle_reader(out_dir))
    ref = market_ref(market.until(until), data_dir, market_candles(market, out_dir), until)
    for sym, g in ref.gaps.items():
        if g["n_gaps"]:
            log.warning(
                "%s: %d gaps, longest %d h, %d h missing in all",
                sym,
                g["n_gaps"],
                g["longest_hours"],
                g["missing_hours"],
            )
    log.info("validated %s (%s rows) with cross %s", target, ref.rows[target], ref.cross or "none")
    return ref

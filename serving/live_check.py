"""The health gate's live check: the run's own files scored the way the bot scores them.

A :class:`~macd_ml.serving.scorer.Scorer` is built over the run's files (the members a bundle of it would hold),
given the run's validated candles (what a bot's feed hands it: frames, not the run's feature table), and scores
the newest ``health.live_bars`` bars through its own window of history. Those bars' probabilities must match
the run's own holdout predictions: a mismatch means the bot's path (its window, its feature code) does not
compute what training computed. The check sits here, beside the Scorer, and the health gate receives it as a
function (models/ must not import serving/; docs/architecture.md).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import read_bytes, read_parquet
from macd_ml.features.ingest import Market
from macd_ml.models.release.health import RunUnderCheck
from macd_ml.serving.bundle import Bundle
from macd_ml.serving.guards import ONLY_FLAG
from macd_ml.serving.scorer import Scorer


def _members(run: RunUnderCheck) -> dict[str, bytes]:
    """What the Scorer reads of a bundle, from the run's files (each read checks its sha256)."""
    wanted = [catalog.FEATURES_META, catalog.META, *[rel for rel in run.files if rel.startswith("onnx/")]]
    return {rel: read_bytes(run.file(rel)) for rel in wanted if rel in run.files}


def live_check(market: Market):
    """The ``live`` check of the health gate for a run trained on ``market``."""

    def check(run: RunUnderCheck) -> tuple[bool, str]:
        bars = run.spec.live_bars
        scorer = Scorer(Bundle(members=_members(run), index={}, sha256=""), serving=ONLY_FLAG)
        scores = scorer.score(market, last=bars)
        live = pl.DataFrame(
            {
                catalog.TIMESTAMP: [s.timestamp for s in scores],
                **{
                    catalog.shipped_column(int(h)): [
                        (s.probabilities or {}).get(h, float("nan")) if s.path == "stacked" else float("nan")
                        for s in scores
                    ]
                    for h in scorer.horizons
                },
            }
        ).with_columns(pl.col(catalog.TIMESTAMP).dt.cast_time_unit("us"))
        own = read_parquet(run.file(catalog.SHIPPED_HOLDOUT)).with_columns(
            pl.col(catalog.TIMESTAMP).dt.cast_time_unit("us")
        )
        both = live.join(own, on=catalog.TIMESTAMP, how="inner", suffix="_run")
        if both.height == 0:
            return False, (
                f"none of the {live.height} newest bars of the candles is in the run's holdout "
                "(new candles since the run; check it against the data it was trained on)"
            )
        not_stacked = [s.reason for s in scores if s.path != "stacked"]
        if not_stacked:
            return False, f"{len(not_stacked)} of {len(scores)} bars not scored by the full ensemble: {not_stacked[0]}"
        cols = [catalog.shipped_column(int(h)) for h in scorer.horizons]
        worst = max(float(np.max(np.abs(both[c].to_numpy() - both[f"{c}_run"].to_numpy()))) for c in cols)
        ok = worst <= run.spec.live_tolerance
        return ok, (
            f"{both.height} newest bars scored by the bot's Scorer from candles: max |live - run| "
            f"{worst:.2g} (limit {run.spec.live_tolerance:g})"
            + ("" if ok else "; the feature code (or the bot's window of history) differs from training")
        )

    return check

"""Familiarity task: the reference rows and threshold that tell the bot when a bar is unlike the training data,
and the run's end of data, which tells it how old the model is (models/release/familiarity.py,
docs/bot-contract.md)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_json, write_parquet
from macd_ml.models.release.familiarity import FamiliaritySpec, fit_familiarity
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import TableRef, load_folds
from macd_ml.tasks.results import cached_task, result_type

log = logging.getLogger(__name__)


@result_type
class FamiliarityResult(BaseModel):
    summary: dict  # for metrics.json: the threshold, and the share of holdout bars above it
    files: dict[str, ArtifactRef]  # training_profile.json, training_reference.parquet


@cached_task(name="familiarity")
def familiarity_task(features: TableRef, folds: ArtifactRef, spec: FamiliaritySpec, out_dir: str) -> FamiliarityResult:
    """Fit on the refit's training rows only (they end an embargo before the holdout); the holdout's flag rate is
    measured here for the report and kept out of the profile the bundle carries."""
    frame = read_parquet(features.data)
    plan = load_folds(folds)
    fit = plan.refit.fit
    names = list(features.names)
    times = frame[catalog.TIMESTAMP].dt.epoch("us").to_numpy()
    X = frame.select(names).to_numpy().astype(np.float64)
    fam = fit_familiarity(X[fit.start : fit.stop], times[fit.start : fit.stop], names, spec)
    hold = slice(plan.holdout.start, plan.holdout.stop)
    held = fam.score(X[hold])
    rate = float(np.mean(held[np.isfinite(held)] > fam.threshold)) if np.isfinite(held).any() else None
    profile = {
        **fam.to_json(),
        "data_end": frame[catalog.TIMESTAMP][-1].isoformat(),  # the newest bar the run read: the model's age
        "training_end": frame[catalog.TIMESTAMP][fit.stop - 1].isoformat(),
    }
    d = cache_dir(out_dir, "familiarity", current_key())
    reference = pl.DataFrame(
        {
            catalog.TIMESTAMP: pl.Series(fam.reference_times).cast(pl.Datetime("us", "UTC")),
            **{n: fam.reference[:, j] for j, n in enumerate(names)},
        }
    )
    files = {
        catalog.TRAINING_PROFILE: write_json(d / catalog.TRAINING_PROFILE, profile),
        catalog.TRAINING_REFERENCE: write_parquet(d / catalog.TRAINING_REFERENCE, reference),
    }
    summary = {
        "threshold": fam.threshold,
        "quantile": fam.quantile,
        "reference_rows": int(len(fam.reference)),
        "calibration_rows": fam.calibration_rows,
        "holdout_unfamiliar_rate": rate,
        "data_end": profile["data_end"],
    }
    log.info(
        "familiarity: threshold %.3f (q=%.3f of %d training rows); %s of the holdout's bars above it",
        fam.threshold,
        fam.quantile,
        fam.calibration_rows,
        "n/a" if rate is None else f"{rate:.1%}",
    )
    return FamiliarityResult(summary=summary, files=files)

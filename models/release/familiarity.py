"""How unlike the training rows a bar is: a per-bar dissimilarity score and its threshold (docs/bot-contract.md,
"Bars unlike the training data").

The score is FreqAI's dissimilarity index in spirit: the mean distance from the bar's feature row to its ``k``
nearest rows of a reference sample of the training rows, in robustly standardised units (each feature minus its
training median, over its training interquartile range / 1.349, so a normal feature has unit scale; the distance is
the root mean square over the features, so it does not grow with their number).

The threshold is the ``quantile`` of the same score over the training rows, each measured **without the reference
rows within ``exclusion_hours`` of it**: hourly features are autocorrelated, so a training row's nearest reference
is usually the hour beside it, a neighbour no live bar ever has (a live bar is newer than every training row by at
least the holdout). Without the exclusion the threshold would be far too tight and nearly every live bar flagged.

Only rows the shipped models trained on are read (the refit's rows, which end an embargo before the holdout):
the reference, the scales and the threshold know nothing of the holdout.

Written by hand on numpy: the reference is a few hundred rows, a brute-force distance matrix is exact and costs
microseconds per bar, and the time exclusion (a mask per row) is not something scikit-learn's neighbour search
offers; the bundle then needs no pickled index, only the reference rows (a small float32 parquet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

HOUR_US = 3_600_000_000
IQR_TO_SIGMA = 1.349  # the interquartile range of a standard normal


class FamiliaritySpec(BaseModel):
    """How the run measures how unlike the training rows a bar is (config key ``serving.unfamiliar``)."""

    model_config = ConfigDict(extra="forbid")

    quantile: float = Field(
        default=0.99,
        ge=0.5,
        le=0.9999,
        title="Unfamiliar above this quantile",
        description="the threshold is this quantile of the training rows' own scores: about 1 - quantile of bars "
        "like the training data are flagged",
    )
    reference_rows: int = Field(
        default=1000,
        ge=50,
        le=20_000,
        title="Reference training rows",
        description="training rows kept in the bundle to measure distances to",
    )
    neighbours: int = Field(
        default=5,
        ge=1,
        le=50,
        title="Nearest rows averaged",
        description="a bar's score is its mean distance to this many",
    )
    exclusion_hours: int = Field(
        default=168,
        ge=0,
        title="Neighbours in time ignored (hours)",
        description="a training row's score ignores reference rows this close in time (their features are nearly "
        "its own; a live bar has no such neighbour)",
    )


@dataclass(frozen=True)
class Familiarity:
    """What the bundle carries: the feature names, the standardisation, the reference rows, the threshold."""

    names: list[str]
    center: np.ndarray  # [D] float64
    scale: np.ndarray  # [D] float64
    reference: np.ndarray  # [R, D] float32, standardised
    reference_times: np.ndarray  # [R] int64, µs since the epoch
    neighbours: int
    quantile: float
    threshold: float
    exclusion_hours: int
    calibration_rows: int

    def score(self, X: np.ndarray, times_us: np.ndarray | None = None) -> np.ndarray:
        """The dissimilarity of each row of ``X`` (raw features, the columns of ``names``); NaN for a row with a
        non-finite feature. With ``times_us``, reference rows within ``exclusion_hours`` of a row are ignored."""
        return _score(self, np.asarray(X, dtype=np.float64), times_us)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "neighbours": self.neighbours,
            "quantile": self.quantile,
            "threshold": self.threshold,
            "exclusion_hours": self.exclusion_hours,
            "calibration_rows": self.calibration_rows,
            "reference_rows": int(len(self.reference)),
        }

    @classmethod
    def from_json(cls, doc: dict, reference: np.ndarray, reference_times: np.ndarray) -> Familiarity:
        names = list(doc["names"])
        if reference.ndim != 2 or reference.shape[1] != len(names) or len(reference) != len(reference_times):
            raise ValueError(
                f"the reference rows are {reference.shape}, for {len(names)} features and {len(reference_times)} times"
            )
        return cls(
            names=names,
            center=np.asarray(doc["center"], dtype=np.float64),
            scale=np.asarray(doc["scale"], dtype=np.float64),
            reference=reference.astype(np.float32),
            reference_times=reference_times.astype(np.int64),
            neighbours=int(doc["neighbours"]),
            quantile=float(doc["quantile"]),
            threshold=float(doc["threshold"]),
            exclusion_hours=int(doc["exclusion_hours"]),
            calibration_rows=int(doc["calibration_rows"]),
        )


def _standardise(X: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (X - center) / scale


def _score(fam: Familiarity, X: np.ndarray, times_us: np.ndarray | None, chunk: int = 2048) -> np.ndarray:
    Z = _standardise(X, fam.center, fam.scale)
    out = np.full(len(Z), np.nan)
    ok = np.all(np.isfinite(Z), axis=1)
    R = fam.reference.astype(np.float64)
    r2 = np.sum(R * R, axis=1)
    d = R.shape[1]
    idx = np.flatnonzero(ok)
    for lo in range(0, len(idx), chunk):
        rows = idx[lo : lo + chunk]
        Zc = Z[rows]
        # squared distances by the expansion |z|^2 - 2 z.r + |r|^2 (clipped at 0 against rounding)
        dist2 = np.maximum(np.sum(Zc * Zc, axis=1)[:, None] - 2.0 * Zc @ R.T + r2[None, :], 0.0)
        if times_us is not None and fam.exclusion_hours > 0:
            near = np.abs(times_us[rows][:, None] - fam.reference_times[None, :]) < fam.exclusion_hours * HOUR_US
            dist2 = np.where(near, np.inf, dist2)
        k = min(fam.neighbours, R.shape[0])
        nearest = np.partition(dist2, k - 1, axis=1)[:, :k]
        finite = np.isfinite(nearest)
        # a row whose every reference is excluded has no score (too short a training span for the exclusion)
        with np.errstate(invalid="ignore"):
            mean = np.where(finite.any(axis=1), np.sqrt(np.where(finite, nearest, 0.0) / d).sum(axis=1), np.nan)
            out[rows] = mean / np.maximum(finite.sum(axis=1), 1)
    return out


def fit_familiarity(
    X: np.ndarray, times_us: np.ndarray, names: list[str], spec: FamiliaritySpec, seed: int = 0
) -> Familiarity:
    """The reference sample, standardisation and threshold from the training rows ``X`` (complete feature rows,
    oldest first) and their open times."""
    X = np.asarray(X, dtype=np.float64)
    times_us = np.asarray(times_us, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != len(names) or len(X) != len(times_us):
        raise ValueError(f"training rows {X.shape} do not match {len(names)} feature names and {len(times_us)} times")
    if len(X) < 2 * spec.neighbours + 2:
        raise ValueError(f"{len(X)} training rows are too few to measure how unlike them a bar is")
    center = np.nanmedian(X, axis=0)
    q75, q25 = np.nanpercentile(X, [75, 25], axis=0)
    spread = (q75 - q25) / IQR_TO_SIGMA
    fallback = np.nanstd(X, axis=0)
    # a feature constant on most rows (an IQR of 0) is scaled by its standard deviation, or left as is
    scale = np.where(spread > 1e-12, spread, np.where(fallback > 1e-12, fallback, 1.0))
    rng = np.random.default_rng(seed)
    n_ref = min(spec.reference_rows, len(X))
    pick = np.sort(rng.choice(len(X), size=n_ref, replace=False))
    reference = _standardise(X[pick], center, scale).astype(np.float32)
    draft = Familiarity(
        names=list(names),
        center=center,
        scale=scale,
        reference=reference,
        reference_times=times_us[pick],
        neighbours=spec.neighbours,
        quantile=spec.quantile,
        threshold=float("nan"),
        exclusion_hours=spec.exclusion_hours,
        calibration_rows=0,
    )
    cal = draft.score(X, times_us)
    cal = cal[np.isfinite(cal)]
    if not len(cal):
        raise ValueError(
            f"no training row has reference rows more than {spec.exclusion_hours} h away: the training span is "
            "too short for serving.unfamiliar.exclusion_hours"
        )
    return Familiarity(
        **{
            **draft.__dict__,
            "threshold": float(np.quantile(cal, spec.quantile)),
            "calibration_rows": int(len(cal)),
        }
    )

"""Purged walk-forward folds and the final holdout (docs/leakage.md).

All positions are row ranges ``[start, stop)`` into the feature table (sorted by time). Separation is measured
in time, not rows, so gaps in the data never shrink it:

- holdout = the latest ``holdout_fraction`` of rows; it is in no fold, and every row before it that is used
  anywhere (fit, early stopping, test, refit) has ``t + embargo < holdout start``;
- each fold trains only on rows before its test span, with ``t + embargo < test start`` (purge: a training
  row's label window [t, t + h_max] never touches the test span; embargo >= h_max is enforced);
- early stopping uses the last ``early_stop_fraction`` of the training span; the rows fitted are purged the same
  way against that slice, and the slice itself lies entirely before the test span.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from macd_ml.errors import ConfigError
from macd_ml.features.form import OptionalPositiveInt, optional_field
from macd_ml.features.segments import HOUR_US


class FoldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_folds: int = Field(
        default=5, ge=2, le=50, title="Number of folds", description="number of walk-forward test spans"
    )
    scheme: Literal["expanding", "sliding"] = Field(
        default="expanding",
        title="Training window",
        description="expanding: every fold trains on all rows before it; sliding: on the latest rows only",
    )
    holdout_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=0.5,
        title="Holdout share",
        description="latest fraction of rows kept for the final holdout",
    )
    min_train_fraction: float = Field(
        default=0.3,
        gt=0.0,
        lt=0.9,
        title="Training share before the first fold",
        description="share of development rows before the first test span",
    )
    early_stop_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=0.5,
        title="Early-stopping share of each fold",
        description="end of each training span used for early stopping",
    )
    embargo_hours: Annotated[OptionalPositiveInt, Field(title="Embargo (hours)")] = optional_field(
        "hours between a training span and the test span after it; empty = the longest horizon (also the minimum)"
    )


class Span(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: int
    stop: int
    first: datetime | None = None
    last: datetime | None = None

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def rows(self) -> range:
        return range(self.start, self.stop)


class Fold(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    fit: Span
    early_stop: Span
    test: Span


class Folds(BaseModel):
    """Everything later stages need to train and score honestly; serialises to JSON."""

    model_config = ConfigDict(frozen=True)

    n_rows: int
    horizons: list[int]
    embargo_hours: int
    scheme: str
    folds: list[Fold]
    refit: Fold  # full refit on every development row (its ``test`` is the holdout)
    holdout: Span

    @model_validator(mode="after")
    def _ordered(self) -> "Folds":
        for f in [*self.folds, self.refit]:
            if not (f.fit.stop <= f.early_stop.start and f.early_stop.stop <= f.test.start):
                raise ValueError(f"fold {f.index}: spans out of order")
        return self


def _span(ts: pl.Series, start: int, stop: int) -> Span:
    if stop <= start:
        return Span(start=start, stop=stop)
    return Span(start=start, stop=stop, first=ts[start], last=ts[stop - 1])


def _last_row_before(ts_us: list[int], limit_us: int, hi: int) -> int:
    """Number of rows in [0, hi) with t < limit (rows are sorted), by bisection."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if ts_us[mid] < limit_us:
            lo = mid + 1
        else:
            hi = mid
    return lo


def make_folds(timestamps: pl.Series, horizons: list[int], spec: FoldSpec | None = None) -> Folds:
    """Build purged walk-forward folds over rows with these (sorted, unique) timestamps."""
    spec = spec or FoldSpec()
    if not horizons:
        raise ConfigError("horizons: at least one horizon is required")
    h_max = max(horizons)
    embargo = spec.embargo_hours if spec.embargo_hours is not None else h_max
    if embargo < h_max:
        raise ConfigError(f"folds.embargo_hours ({embargo}) must be >= the longest horizon ({h_max})")
    n = len(timestamps)
    ts_us = timestamps.dt.epoch("us").to_list()
    if any(b <= a for a, b in zip(ts_us, ts_us[1:])):
        raise ValueError("timestamps must be sorted and unique")
    gap = embargo * HOUR_US

    h_start = n - max(1, int(round(n * spec.holdout_fraction)))
    if h_start <= 0:
        raise ConfigError(f"folds.holdout_fraction: {n} rows are too few")
    dev_stop = _last_row_before(ts_us, ts_us[h_start] - gap, h_start)

    test0 = int(dev_stop * spec.min_train_fraction)
    test_len = (dev_stop - test0) // spec.n_folds
    min_rows = 50
    if test_len < min_rows:
        raise ConfigError(
            f"folds.n_folds: {n} rows leave {dev_stop} development rows, too few for {spec.n_folds} test spans "
            f"of at least {min_rows} rows (lower folds.n_folds or supply more data)"
        )

    def training(index: int, train_start: int, test_start: int, test_stop: int) -> Fold:
        train_stop = _last_row_before(ts_us, ts_us[test_start] - gap, test_start) if test_start < n else test_start
        n_train = train_stop - train_start
        es_start = train_start + int(round(n_train * (1.0 - spec.early_stop_fraction)))
        fit_stop = _last_row_before(ts_us, ts_us[es_start] - gap, es_start) if es_start < n else es_start
        fold = Fold(
            index=index,
            fit=_span(timestamps, train_start, max(train_start, fit_stop)),
            early_stop=_span(timestamps, es_start, train_stop),
            test=_span(timestamps, test_start, test_stop),
        )
        if len(fold.fit) < min_rows or len(fold.early_stop) < 10:
            raise ConfigError(
                f"folds: fold {index} has {len(fold.fit)} fitting rows and {len(fold.early_stop)} early-stopping "
                "rows after purging; supply more data or lower folds.n_folds / folds.early_stop_fraction"
            )
        return fold

    folds = []
    first_train_len = None
    for k in range(spec.n_folds):
        a = test0 + k * test_len
        b = dev_stop if k == spec.n_folds - 1 else a + test_len
        start = 0
        if spec.scheme == "sliding":
            first_train_len = first_train_len or _last_row_before(ts_us, ts_us[test0] - gap, test0)
            start = max(0, _last_row_before(ts_us, ts_us[a] - gap, a) - first_train_len)
        folds.append(training(k, start, a, b))

    refit = training(spec.n_folds, 0, h_start, n)
    return Folds(
        n_rows=n,
        horizons=sorted(horizons),
        embargo_hours=embargo,
        scheme=spec.scheme,
        folds=folds,
        refit=refit,
        holdout=_span(timestamps, h_start, n),
    )


def check_folds(folds: Folds, timestamps: pl.Series) -> None:
    """Assert the leakage rules hold for these folds on these timestamps (used by tests and on load)."""
    ts = timestamps.to_list()
    emb = timedelta(hours=folds.embargo_hours)
    h_max = timedelta(hours=max(folds.horizons))
    hold0 = ts[folds.holdout.start]
    for f in [*folds.folds, folds.refit]:
        t0 = ts[f.test.start]
        for span in (f.fit, f.early_stop):
            if len(span):
                last = ts[span.stop - 1]
                if not last + h_max < t0 or not last + emb < t0:
                    raise AssertionError(f"fold {f.index}: training row {last} within embargo of test {t0}")
                if not last + emb < hold0:
                    raise AssertionError(f"fold {f.index}: training row {last} within embargo of holdout")
        if len(f.fit) and not ts[f.fit.stop - 1] + emb < ts[f.early_stop.start]:
            raise AssertionError(f"fold {f.index}: fit rows overlap the early-stopping slice")
        if f is not folds.refit and f.test.stop > folds.holdout.start:
            raise AssertionError(f"fold {f.index}: test span reaches into the holdout")
        if f is not folds.refit and len(f.test) and not ts[f.test.stop - 1] + emb < hold0:
            raise AssertionError(f"fold {f.index}: test rows within embargo of the holdout")

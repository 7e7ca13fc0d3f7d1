"""Training one model on one fold, honestly: fit on the fold's fitting rows, early-stop on its inner slice,
predict its test span (out-of-fold), and check the model did not collapse to a constant.

Pure functions (no Prefect); tasks/train.py wraps them with caching and artifact I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.labels import label_name
from macd_ml.features.segments import segment_starts
from macd_ml.features.splits import Fold
from macd_ml.models.learners.base import Dataset, Model, Rows

log = logging.getLogger(__name__)


def build_dataset(
    features: pl.DataFrame, labels: pl.DataFrame, names: list[str], horizons: list[int], gap_tolerance_hours: int
) -> Dataset:
    """Feature matrix + labels aligned row for row (labels.parquet has the feature table's rows)."""
    if features.height != labels.height or not features[catalog.TIMESTAMP].equals(labels[catalog.TIMESTAMP]):
        raise ValueError("labels are not aligned with the feature table")
    ts = features[catalog.TIMESTAMP].dt.epoch("us").to_numpy()
    Y = labels.select([pl.col(label_name(h)).cast(pl.Float32) for h in horizons]).to_numpy()
    return Dataset(
        X=features.select(names).to_numpy().astype(np.float32),
        Y=np.asarray(Y, dtype=np.float32),
        feature_names=list(names),
        horizons=list(horizons),
        segment_start=segment_starts(ts, gap_tolerance_hours),
        timestamps=ts,
    )


def inference_view(features: pl.DataFrame, names: list[str], horizons: list[int], gap_tolerance_hours: int) -> Dataset:
    """What predicting needs, without labels: the feature matrix and segment starts of ``features`` (rows in
    time order, as ``build_features`` gives them). Fitting on it is refused."""
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise ValueError(f"the feature table lacks {len(missing)} feature(s) the model needs, e.g. {missing[:3]}")
    ts = features[catalog.TIMESTAMP].dt.epoch("us").to_numpy()
    return Dataset(
        X=features.select(names).to_numpy().astype(np.float32),
        Y=None,
        feature_names=list(names),
        horizons=list(horizons),
        segment_start=segment_starts(ts, gap_tolerance_hours),
        timestamps=ts,
    )


@dataclass
class FoldResult:
    model: Model
    rows: np.ndarray  # the test rows predicted (indices into the Dataset)
    predictions: np.ndarray  # (len(rows), n_horizons)
    early_stop_std: dict[str, float]
    collapsed: dict[str, bool]
    fit_rows: int = 0  # rows the model was fitted on (target + panel)


def collapse_check(model: Model, data: Dataset, rows: Rows, threshold: float) -> tuple[dict, dict]:
    """Std of the model's predictions on the inner slice, per horizon; below ``threshold`` = collapsed."""
    p = model.predict(data, rows)
    std = {str(h): float(np.std(p[:, j])) for j, h in enumerate(model.horizons)}
    collapsed = {h: s < threshold for h, s in std.items()}
    if any(collapsed.values()):
        log.warning(
            "%s collapsed (prediction std on the inner slice %s < %g): it will be left out of the stack",
            model.name,
            {h: round(s, 6) for h, s in std.items()},
            threshold,
        )
    return std, collapsed


def pool(target: Dataset, panel: list[Dataset]) -> Dataset:
    """The target's rows, then each panel symbol's rows (same features and horizons): row i < target.n_rows is
    still the target's row i, so folds keep indexing the target; segment starts are offset so that no sequence
    window crosses from one symbol into another."""
    if not panel:
        return target
    for p in panel:
        if p.feature_names != target.feature_names or p.horizons != target.horizons:
            raise ValueError("a panel symbol's features or horizons differ from the target's")
        if p.timestamps is None:
            raise ValueError("panel rows need their timestamps (the fit takes only rows before the fold's end)")
    offsets = np.cumsum([target.n_rows, *(p.n_rows for p in panel)])[:-1]
    return Dataset(
        X=np.concatenate([target.X, *(p.X for p in panel)]),
        Y=np.concatenate([target.labels, *(p.labels for p in panel)]),
        feature_names=target.feature_names,
        horizons=target.horizons,
        segment_start=np.concatenate([target.segment_start, *(p.segment_start + o for p, o in zip(panel, offsets))]),
        timestamps=np.concatenate([np.asarray(target.timestamps), *(np.asarray(p.timestamps) for p in panel)]),
    )


def fold_fit_rows(data: Dataset, fold: Fold, n_target: int | None = None) -> Rows:
    """The fold's fit rows; with a pooled dataset (target rows first, ``n_target`` of them) also every panel
    row whose time is no later than the fold's last fit row, so the panel obeys the fold's purge and embargo
    exactly as the target's own rows do (a panel row at the time of a test row would leak the market's move)."""
    own = Rows.span(fold.fit.start, fold.fit.stop)
    if n_target is None or n_target >= data.n_rows:
        return own
    assert data.timestamps is not None
    last = data.timestamps[fold.fit.stop - 1]
    extra = n_target + np.flatnonzero(data.timestamps[n_target:] <= last)
    return Rows(np.concatenate([own.idx, extra]))


def train_fold(
    model: Model,
    data: Dataset,
    fold: Fold,
    test_rows: Rows | None = None,
    collapse_std: float = 1e-3,
    n_target: int | None = None,
) -> FoldResult:
    """Fit on ``fold.fit`` (plus the panel's rows up to its end when ``data`` is pooled: ``n_target`` target
    rows first), early-stop on ``fold.early_stop``, predict ``fold.test`` (or ``test_rows``), target rows only."""
    fit = fold_fit_rows(data, fold, n_target)
    es = Rows.span(fold.early_stop.start, fold.early_stop.stop)
    test = test_rows or Rows.span(fold.test.start, fold.test.stop)
    model.fit(data, fit, es)
    std, collapsed = collapse_check(model, data, es, collapse_std)
    model.info.extra = {**model.info.extra, "early_stop_std": std, "collapsed": collapsed}
    return FoldResult(
        model=model,
        rows=test.idx,
        predictions=model.predict(data, test),
        early_stop_std=std,
        collapsed=collapsed,
        fit_rows=len(fit),
    )

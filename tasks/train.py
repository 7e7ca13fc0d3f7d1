"""Training tasks: one task per (model, fold) producing out-of-fold predictions, one full refit per model
scoring the holdout, and the assembly of the OOF and holdout tables.

Cache key of a training task = feature table sha256 + labels sha256 + folds sha256 + fold index + that model's
parameters and feature set + the models' code version: changing one model's parameters retrains only that
model. Sequence models carry the ``gpu`` tag (bounded by a concurrency limit where a GPU exists) and report
per-epoch progress (a Prefect progress artifact + console lines, :mod:`macd_ml.tasks.progress`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, write_bytes, write_json, write_parquet
from macd_ml.features.labels import label_name
from macd_ml.models.evaluation.evaluate import prediction_columns
from macd_ml.models.learners.base import Rows, files_digest, fitted_digest
from macd_ml.models.learners.registry import FeatureSelection, load_model, make_model, select_features
from macd_ml.models.learners.train import build_dataset, pool, train_fold
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.progress import attach_progress
from macd_ml.tasks.refs import FoldOutput, PanelMember, RefitOutput, TrainingData, load_folds
from macd_ml.tasks.results import cached_task

log = logging.getLogger(__name__)


def _dataset(inputs: TrainingData, feature_set: FeatureSelection, panel: list[PanelMember]):
    """The target's frame and its dataset; with a panel, the pooled dataset (target rows first) and how many
    target rows it has, else None."""
    frame = read_parquet(inputs.features.data)
    names = select_features(inputs.features.names, feature_set)
    data = build_dataset(frame, read_parquet(inputs.labels), names, inputs.horizons, inputs.gap_tolerance_hours)
    if not panel:
        return frame, data, None
    others = []
    for member in panel:
        missing = [n for n in names if n not in member.features.names]
        if missing:
            raise ValueError(
                f"panel symbol {member.symbol} lacks {len(missing)} of the target's features, e.g. {missing[:3]}"
            )
        others.append(
            build_dataset(
                read_parquet(member.features.data),
                read_parquet(member.labels),
                names,
                inputs.horizons,
                inputs.gap_tolerance_hours,
            )
        )
    return frame, pool(data, others), data.n_rows


def _summary(model, fold_result, panel: list[PanelMember], fitted: str) -> dict:
    """What the fit chose, for metrics.json's ``training``; ``fitted`` is the sha256 of the saved model, so two
    runs can be compared fit by fit (the holdout-blindness tests do)."""
    d = model.describe()
    keep = ("device", "best_iteration", "best_head", "epochs", "n_features", "precision")
    out = {k: d[k] for k in keep if k in d}
    out["fitted_sha256"] = fitted
    if panel:
        out["pooled_with"] = [m.symbol for m in panel]
        out["fit_rows"] = fold_result.fit_rows
    out["collapsed"] = fold_result.collapsed
    out["early_stop_std"] = fold_result.early_stop_std
    return out


def _prediction_frame(frame: pl.DataFrame, rows: np.ndarray, preds: np.ndarray, horizons: list[int]) -> pl.DataFrame:
    cols = {catalog.ROW: rows.astype(np.int64), catalog.TIMESTAMP: frame[catalog.TIMESTAMP].gather(rows)}
    for j, h in enumerate(horizons):
        cols[f"p_{h}"] = preds[:, j]
    return pl.DataFrame(cols)


@cached_task(name="fit-fold", task_run_name="{model_name}-fold{fold}")
def fit_fold_task(
    model_name: str,
    params: BaseModel,
    feature_set: FeatureSelection,
    inputs: TrainingData,
    fold: int,
    out_dir: str,
    panel: list[PanelMember] | None = None,
) -> FoldOutput:
    """Fit one model on one walk-forward fold (with ``panel``: on the pooled rows up to the fold's end) and
    persist its out-of-fold predictions on the target."""
    panel = panel or []
    frame, data, n_target = _dataset(inputs, feature_set, panel)
    horizons = inputs.horizons
    f = load_folds(inputs.folds).folds[fold]
    model = make_model(model_name, params, data.feature_names, horizons)
    attach_progress(model, f"{model_name} fold {fold}")
    result = train_fold(model, data, f, collapse_std=inputs.collapse_std, n_target=n_target)
    preds = write_parquet(
        cache_dir(out_dir, "oof", current_key()) / f"{model_name}_fold{fold}.parquet",
        _prediction_frame(frame, result.rows, result.predictions, horizons),
    )
    summary = _summary(model, result, panel, fitted_digest(model))
    log.info(
        "%s fold %d: %.1fs on %s, best %s",
        model_name,
        fold,
        model.info.seconds,
        summary["device"],
        summary["best_iteration"],
    )
    return FoldOutput(
        model=model_name, fold=fold, predictions=preds, summary=summary, seconds=round(model.info.seconds, 3)
    )


@cached_task(name="refit", task_run_name="{model_name}-refit")
def refit_task(
    model_name: str,
    params: BaseModel,
    feature_set: FeatureSelection,
    inputs: TrainingData,
    out_dir: str,
    panel: list[PanelMember] | None = None,
) -> RefitOutput:
    """Fit on every development row (inner slice at its end; with ``panel``, plus the pooled rows up to its
    end), save the model, score the holdout."""
    panel = panel or []
    frame, data, n_target = _dataset(inputs, feature_set, panel)
    horizons = inputs.horizons
    model = make_model(model_name, params, data.feature_names, horizons)
    attach_progress(model, f"{model_name} refit")
    result = train_fold(
        model, data, load_folds(inputs.folds).refit, collapse_std=inputs.collapse_std, n_target=n_target
    )
    folder = cache_dir(out_dir, "models", current_key()) / model_name
    with tempfile.TemporaryDirectory(prefix=f"macd-ml-{model_name}-") as scratch:
        # the libraries write their own formats into a scratch folder; the store then writes each file
        # atomically (and retries it), so a failed write never leaves a partial model or costs a retrain
        staged = model.save(Path(scratch))
        again = load_model(model_name, Path(scratch)).predict(data, Rows(result.rows))
        if not np.allclose(again, result.predictions, rtol=0, atol=1e-6):
            raise RuntimeError(f"{model_name}: reloaded model does not reproduce its predictions")
        files = {p.name: write_bytes(folder / p.name, p.read_bytes()) for p in staged}
        fitted = files_digest(staged)
    importance = getattr(model, "feature_importance", None)
    if importance is not None:
        files[f"{model_name}_importance.json"] = write_json(folder / f"{model_name}_importance.json", importance())
    holdout = write_parquet(
        folder.parent / f"{model_name}_holdout.parquet",
        _prediction_frame(frame, result.rows, result.predictions, horizons),
    )
    return RefitOutput(
        model=model_name,
        files=files,
        holdout=holdout,
        summary=_summary(model, result, panel, fitted),
        seconds=round(model.info.seconds, 3),
    )


@cached_task(name="assemble-predictions")
def assemble_task(
    fold_outputs: list[FoldOutput],
    refits: list[RefitOutput],
    labels: ArtifactRef,
    horizons: list[int],
    out_dir: str,
) -> dict[str, ArtifactRef]:
    """One OOF table (a row per test timestamp, a column per model x horizon, plus labels) and one holdout
    table of the same shape."""
    y = read_parquet(labels).with_row_index(catalog.ROW).with_columns(pl.col(catalog.ROW).cast(pl.Int64))
    ycols = [label_name(h) for h in horizons]

    def wide(parts: dict[str, list[pl.DataFrame]]) -> pl.DataFrame:
        table: pl.DataFrame | None = None
        for name, frames in parts.items():
            df = pl.concat(frames).sort(catalog.ROW)
            df = df.rename({f"p_{h}": c for h, c in zip(horizons, prediction_columns(name, horizons))})
            table = (
                df
                if table is None
                else table.join(df.drop(catalog.TIMESTAMP), on=catalog.ROW, how="full", coalesce=True)
            )
        assert table is not None, "no predictions to assemble"
        return table.join(y.select(catalog.ROW, *ycols), on=catalog.ROW, how="left").sort(catalog.ROW)

    oof_parts: dict[str, list[pl.DataFrame]] = {}
    for fo in fold_outputs:
        oof_parts.setdefault(fo.model, []).append(read_parquet(fo.predictions))
    hold_parts = {r.model: [read_parquet(r.holdout)] for r in refits}
    oof, hold = wide(oof_parts), wide(hold_parts)
    if oof[catalog.ROW].is_duplicated().any():
        raise RuntimeError("a row was predicted by two folds")
    d = cache_dir(out_dir, "predictions", current_key())
    return {
        catalog.OOF: write_parquet(d / catalog.OOF, oof),
        catalog.HOLDOUT_PREDICTIONS: write_parquet(d / catalog.HOLDOUT_PREDICTIONS, hold),
    }

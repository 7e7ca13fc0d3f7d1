"""Training tasks: one task per (model, fold) producing out-of-fold predictions, one full refit per model
scoring the holdout, and the assembly of the OOF and holdout tables.

Cache key of a training task = feature table sha256 + labels sha256 + folds sha256 + fold index + that model's
parameters and feature set + the models' code version: changing one model's parameters retrains only that
model. Sequence models carry the ``gpu`` tag (bounded by a concurrency limit where a GPU exists).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger
from pydantic import BaseModel

from features.labels import label_name
from models.base import MODELS_VERSION, Rows
from models.evaluate import prediction_columns
from models.registry import load_model, make_model, select_features
from models.train import build_dataset, train_fold
from tasks.data import TableRef, load_folds
from tasks.policy import content_key
from tasks.results import cached_task, result_type
from tasks.store import ArtifactRef, cache_dir, read_parquet, write_bytes, write_json, write_parquet

TRAIN_CODE = f"{MODELS_VERSION}"


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
        return {"model": self.model, "files": {k: v.sha256 for k, v in sorted(self.files.items())},
                "holdout": self.holdout.sha256, "summary": self.summary}


def _dataset(features: TableRef, labels: ArtifactRef, feature_set: str, horizons: list[int], gap_tol: int):
    frame = read_parquet(features.data)
    names = select_features(features.names, feature_set)
    return frame, build_dataset(frame, read_parquet(labels), names, horizons, gap_tol)


def _summary(model, fold_result) -> dict:
    d = model.describe()
    keep = ("device", "best_iteration", "best_head", "epochs", "n_features", "precision")
    out = {k: d[k] for k in keep if k in d}
    out["collapsed"] = fold_result.collapsed
    out["early_stop_std"] = fold_result.early_stop_std
    return out


def _prediction_frame(frame: pl.DataFrame, rows: np.ndarray, preds: np.ndarray, horizons: list[int]) -> pl.DataFrame:
    cols = {"row": rows.astype(np.int64), "timestamp": frame["timestamp"].gather(rows)}
    for j, h in enumerate(horizons):
        cols[f"p_{h}"] = preds[:, j]
    return pl.DataFrame(cols)


@cached_task(name="fit-fold", task_run_name="{model_name}-fold{fold}", cache_key_fn=content_key("fit-fold", TRAIN_CODE))
def fit_fold_task(
    model_name: str, params: BaseModel, feature_set: str, features: TableRef, labels: ArtifactRef,
    folds: ArtifactRef, fold: int, horizons: list[int], gap_tolerance_hours: int, collapse_std: float, out_dir: str,
) -> FoldOutput:
    """Fit one model on one walk-forward fold and persist its out-of-fold predictions."""
    frame, data = _dataset(features, labels, feature_set, horizons, gap_tolerance_hours)
    f = load_folds(folds).folds[fold]
    model = make_model(model_name, params, data.feature_names, horizons)
    result = train_fold(model, data, f, collapse_std=collapse_std)
    key = content_key("fit-fold", TRAIN_CODE)(None, dict(m=model_name, p=params, s=feature_set, f=features,
                                                          l=labels, k=folds, i=fold, h=horizons))
    preds = write_parquet(cache_dir(out_dir, "oof", key) / f"{model_name}_fold{fold}.parquet",
                          _prediction_frame(frame, result.rows, result.predictions, horizons))
    summary = _summary(model, result)
    get_run_logger().info("%s fold %d: %.1fs on %s, best %s", model_name, fold, model.info.seconds,
                          summary["device"], summary["best_iteration"])
    return FoldOutput(model=model_name, fold=fold, predictions=preds, summary=summary,
                      seconds=round(model.info.seconds, 3))


@cached_task(name="refit", task_run_name="{model_name}-refit", cache_key_fn=content_key("refit", TRAIN_CODE))
def refit_task(
    model_name: str, params: BaseModel, feature_set: str, features: TableRef, labels: ArtifactRef,
    folds: ArtifactRef, horizons: list[int], gap_tolerance_hours: int, collapse_std: float, out_dir: str,
) -> RefitOutput:
    """Fit on every development row (inner slice at its end), save the model, score the holdout."""
    frame, data = _dataset(features, labels, feature_set, horizons, gap_tolerance_hours)
    folds_obj = load_folds(folds)
    model = make_model(model_name, params, data.feature_names, horizons)
    result = train_fold(model, data, folds_obj.refit, collapse_std=collapse_std)
    key = content_key("refit", TRAIN_CODE)(None, dict(m=model_name, p=params, s=feature_set, f=features,
                                                       l=labels, k=folds, h=horizons))
    folder = cache_dir(out_dir, "models", key) / model_name
    with tempfile.TemporaryDirectory(prefix=f"macd-ml-{model_name}-") as scratch:
        # the libraries write their own formats into a scratch folder; the store then writes each file
        # atomically (and retries it), so a failed write never leaves a partial model or costs a retrain
        staged = model.save(Path(scratch))
        again = load_model(model_name, Path(scratch)).predict(data, Rows(result.rows))
        if not np.allclose(again, result.predictions, rtol=0, atol=1e-6):
            raise RuntimeError(f"{model_name}: reloaded model does not reproduce its predictions")
        files = {p.name: write_bytes(folder / p.name, p.read_bytes()) for p in staged}
    importance = getattr(model, "feature_importance", None)
    if importance is not None:
        files[f"{model_name}_importance.json"] = write_json(folder / f"{model_name}_importance.json", importance())
    holdout = write_parquet(folder.parent / f"{model_name}_holdout.parquet",
                            _prediction_frame(frame, result.rows, result.predictions, horizons))
    return RefitOutput(model=model_name, files=files, holdout=holdout, summary=_summary(model, result),
                       seconds=round(model.info.seconds, 3))


@cached_task(name="assemble-predictions", cache_key_fn=content_key("assemble", TRAIN_CODE))
def assemble_task(
    fold_outputs: list[FoldOutput], refits: list[RefitOutput], labels: ArtifactRef, horizons: list[int],
    out_dir: str,
) -> dict[str, ArtifactRef]:
    """One OOF table (a row per test timestamp, a column per model x horizon, plus labels) and one holdout
    table of the same shape."""
    y = read_parquet(labels).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    ycols = [label_name(h) for h in horizons]

    def wide(parts: dict[str, list[pl.DataFrame]]) -> pl.DataFrame:
        table = None
        for name, frames in parts.items():
            df = pl.concat(frames).sort("row")
            df = df.rename({f"p_{h}": c for h, c in zip(horizons, prediction_columns(name, horizons))})
            table = df if table is None else table.join(df.drop("timestamp"), on="row", how="full", coalesce=True)
        return table.join(y.select("row", *ycols), on="row", how="left").sort("row")

    oof_parts: dict[str, list[pl.DataFrame]] = {}
    for fo in fold_outputs:
        oof_parts.setdefault(fo.model, []).append(read_parquet(fo.predictions))
    hold_parts = {r.model: [read_parquet(r.holdout)] for r in refits}
    oof, hold = wide(oof_parts), wide(hold_parts)
    if oof["row"].is_duplicated().any():
        raise RuntimeError("a row was predicted by two folds")
    key = content_key("assemble", TRAIN_CODE)(None, dict(f=fold_outputs, r=refits, l=labels, h=horizons))
    d = cache_dir(out_dir, "predictions", key)
    return {"oof.parquet": write_parquet(d / "oof.parquet", oof),
            "holdout_predictions.parquet": write_parquet(d / "holdout_predictions.parquet", hold)}


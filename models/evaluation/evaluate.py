"""Scoring predictions: per model and horizon, AUC on the OOF rows and on the holdout."""

from __future__ import annotations

import numpy as np
import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.labels import label_name
from macd_ml.models.evaluation.stats import auc, auc_within


def prediction_columns(model: str, horizons: list[int]) -> list[str]:
    return [catalog.prediction_column(model, h) for h in horizons]


def score_table(table: pl.DataFrame, model: str, horizons: list[int]) -> dict[str, dict]:
    out = {}
    for h, col in zip(horizons, prediction_columns(model, horizons)):
        if col not in table.columns:
            continue
        y = table[label_name(h)].cast(pl.Float64).to_numpy()
        p = table[col].cast(pl.Float64).to_numpy()
        ok = ~np.isnan(y) & ~np.isnan(p)
        out[str(h)] = {"auc": auc(y[ok], p[ok]), "n": int(ok.sum())}
    return out


def per_fold_auc(
    table: pl.DataFrame, model: str, horizons: list[int], spans: list[tuple[int, int]]
) -> dict[str, float]:
    """AUC within each fold's test span (rows ``start <= row < stop``), averaged weighted by its rows
    (:func:`macd_ml.models.learners.train.auc_within`: pooled, it would also score each fold's intercept)."""
    out: dict[str, float] = {}
    row = table[catalog.ROW].to_numpy()
    fold = np.full(len(row), -1)
    for k, (start, stop) in enumerate(spans):
        fold[(row >= start) & (row < stop)] = k
    for h, col in zip(horizons, prediction_columns(model, horizons)):
        if col not in table.columns:
            continue
        y = table[label_name(h)].cast(pl.Float64).to_numpy()
        p = table[col].cast(pl.Float64).to_numpy()
        a = auc_within(np.where(fold >= 0, y, np.nan), p, fold)
        if a is not None:
            out[str(h)] = a
    return out


def model_metrics(
    oof: pl.DataFrame,
    holdout: pl.DataFrame,
    models: list[str],
    horizons: list[int],
    fold_spans: list[tuple[int, int]] | None = None,
) -> dict:
    """``models.{name}.{h}.{oof_auc, oof_auc_pooled, test_auc, n_oof, n_test}`` (docs/run-folder.md). ``oof_auc`` is
    scored within each fold and averaged (see :func:`per_fold_auc`) when ``fold_spans`` is given; the pooled
    figure is kept beside it."""
    result: dict[str, dict] = {}
    for m in models:
        o, t = score_table(oof, m, horizons), score_table(holdout, m, horizons)
        within = per_fold_auc(oof, m, horizons, fold_spans) if fold_spans else {}
        result[m] = {
            str(h): {
                "oof_auc": within.get(str(h), o.get(str(h), {}).get("auc")),
                "oof_auc_pooled": o.get(str(h), {}).get("auc"),
                "test_auc": t.get(str(h), {}).get("auc"),
                "n_oof": o.get(str(h), {}).get("n", 0),
                "n_test": t.get(str(h), {}).get("n", 0),
            }
            for h in horizons
        }
    return result


def cross_gain(scores: dict, horizons: list[int], base: str = "lgb", cross: str = "lgb_cross") -> dict | None:
    """What the cross-asset block adds: AUC of the cross-asset LightGBM minus the plain one, per horizon."""
    if base not in scores or cross not in scores:
        return None
    out = {}
    for h in map(str, horizons):
        b, c = scores[base][h], scores[cross][h]
        out[h] = {k: (None if b[k] is None or c[k] is None else round(c[k] - b[k], 4)) for k in ("oof_auc", "test_auc")}
    return out


def importance_share(importance: dict[str, dict[str, float]], marker: str = "__", top: int = 10) -> dict:
    """Share of total gain that features containing ``marker`` (the cross block) carry, and the top ones."""
    total: dict[str, float] = {}
    for per_h in importance.values():
        for name, g in per_h.items():
            total[name] = total.get(name, 0.0) + g
    s = sum(total.values()) or 1.0
    cross = {k: v for k, v in total.items() if marker in k}
    ranked = sorted(cross.items(), key=lambda kv: -kv[1])[:top]
    return {
        "cross_gain_share": round(sum(cross.values()) / s, 4),
        "top_cross_features": [{"feature": k, "gain_share": round(v / s, 4)} for k, v in ranked],
    }

"""The metrics stage: ``metrics.json`` assembled from what the stages before it wrote (docs/run-folder.md): the
input and fold summary, every model's out-of-fold and holdout AUCs, the stacking outcome, the reference, the AUC
standard errors and the cross-asset gain. Validated against the Metrics schema. Plus the training summary and
timings the flow needs beside it (pure functions of the training outputs)."""

from __future__ import annotations

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, read_json, read_parquet
from macd_ml.features.labels import label_name
from macd_ml.models.evaluation.evaluate import cross_gain, importance_share, model_metrics
from macd_ml.models.evaluation.metrics import Metrics
from macd_ml.models.evaluation.stats import auc_se
from macd_ml.models.learners.reference import reference_scores
from macd_ml.tasks.refs import FoldOutput, MarketRef, RefitOutput, StackResult, TableRef, load_folds, load_labels
from macd_ml.tasks.results import cached_task, result_type

result_type(Metrics)


def summary(
    market: MarketRef, feats: TableRef, labels: ArtifactRef, folds_ref: ArtifactRef, horizons: list[int]
) -> dict:
    folds = load_folds(folds_ref)
    y = load_labels(labels)
    balance = {}
    for h in horizons:
        col = y[label_name(h)]
        defined = col.drop_nulls().cast(pl.Float64).to_numpy()
        up_share = float(defined.mean()) if len(defined) else 0.0
        balance[str(h)] = {"defined": len(defined), "up_share": round(up_share, 4)}
    n_oof = sum(len(f.test) for f in folds.folds)
    return {
        "target": market.target,
        "cross": market.cross,
        "horizons": horizons,
        "n_features": len(feats.names),
        "n_rows": feats.n_rows,
        "n_oof": n_oof,
        "n_test": len(folds.holdout),
        "labels": balance,
        "input": {"data_dir": market.data_dir, "rows": market.rows, "span": market.span, "gaps": market.gaps},
        "folds": [
            {
                "fold": f.index,
                "fit": len(f.fit),
                "early_stop": len(f.early_stop),
                "test": len(f.test),
                "test_first": f.test.first,
                "test_last": f.test.last,
            }
            for f in folds.folds
        ],
        "holdout": {"rows": len(folds.holdout), "first": folds.holdout.first, "last": folds.holdout.last},
    }


@cached_task(name="metrics")
def metrics_task(
    market: MarketRef,
    feats: TableRef,
    labels: ArtifactRef,
    folds: ArtifactRef,
    tables: dict[str, ArtifactRef],
    models: list[str],
    horizons: list[int],
    training: dict,
    refits: list[RefitOutput],
    stack: StackResult,
) -> Metrics:
    """metrics.json (docs/run-folder.md): models.{name}.{h}.{oof_auc,test_auc}, meta.{h}.{oof_auc,val_auc,test_auc},
    n_oof, n_test, plus what the report needs; validated against the Metrics schema."""
    summary_ = summary(market, feats, labels, folds, horizons)
    scores = model_metrics(
        read_parquet(tables[catalog.OOF]),
        read_parquet(tables[catalog.HOLDOUT_PREDICTIONS]),
        models,
        horizons,
        fold_spans=[(f.test.start, f.test.stop) for f in load_folds(folds).folds],
    )
    metrics: dict = {
        **summary_,
        "models": scores,
        "meta": stack.meta,
        "diversity": stack.diversity,
        "training": training,
        "reference": reference_scores(scores, horizons),
        "auc_se": {
            str(h): {"oof": auc_se(summary_["n_oof"], h), "test": auc_se(summary_["n_test"], h)} for h in horizons
        },
    }
    gain = cross_gain(scores, horizons)
    if gain is not None:
        cross_refit = next(r for r in refits if r.model == "lgb_cross")
        imp = read_json(cross_refit.files["lgb_cross_importance.json"])
        metrics["cross_features"] = {"auc_gain": gain, "importance": importance_share(imp)}
    return Metrics.model_validate(metrics)


def per_model(fold_outputs: list[FoldOutput], refits: list[RefitOutput], field: str) -> dict[str, dict]:
    """{model: {"folds": {fold: value}, "refit": value}} for one field of the training outputs."""
    out: dict[str, dict] = {}
    for fo in fold_outputs:
        out.setdefault(fo.model, {"folds": {}})["folds"][str(fo.fold)] = getattr(fo, field)
    for r in refits:
        out.setdefault(r.model, {"folds": {}})["refit"] = getattr(r, field)
    return out


def timings(fold_outputs: list[FoldOutput], refits: list[RefitOutput]) -> dict:
    """Wall-clock fit seconds per task: published beside metrics.json, never part of a cache key."""
    return {"fit_seconds": per_model(fold_outputs, refits, "seconds")}


def training_summary(fold_outputs: list[FoldOutput], refits: list[RefitOutput]) -> dict:
    out = per_model(fold_outputs, refits, "summary")
    for r in refits:
        out[r.model]["collapsed"] = any(r.summary["collapsed"].values()) or any(
            any(f["collapsed"].values()) for f in out[r.model]["folds"].values()
        )
    return out

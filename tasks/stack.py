"""Stacking task: choose and fit what ships per horizon from OOF rows, then report it on the holdout."""

from __future__ import annotations

import numpy as np
import polars as pl
from prefect import get_run_logger, task

from models.evaluate import auc_se
from models.stacking import StackSpec, candidate_predictor, evaluate_holdout, stack_horizon
from tasks.data import CACHED
from tasks.policy import content_key
from tasks.store import ArtifactRef, cache_dir, read_parquet, write_json, write_parquet

STACK_CODE = "stack-1"


@task(name="stack", cache_key_fn=content_key("stack", STACK_CODE), **CACHED)
def stack_task(
    tables: dict[str, ArtifactRef], models: list[str], horizons: list[int], spec: StackSpec, embargo_hours: int,
    collapsed: dict[str, bool], out_dir: str,
) -> dict:
    """Returns {"files": {name: ArtifactRef}, "meta": per-horizon metrics, "diversity": per-horizon analysis}."""
    log = get_run_logger()
    oof = read_parquet(tables["oof.parquet"])
    holdout = read_parquet(tables["holdout_predictions.parquet"])
    meta_json, metrics, div = {}, {}, {}
    shipped_cols = {"timestamp": holdout["timestamp"]}
    for h in horizons:
        # the fitting code is handed the OOF rows only; the holdout appears below, for reporting
        st = stack_horizon(oof, models, h, spec, embargo_hours, collapsed)
        test = {}
        for label in st.candidates:
            test[label] = evaluate_holdout(candidate_predictor(st, label, oof, spec), holdout, h)[0]
        test_auc, p = evaluate_holdout(st.shipped, holdout, h)
        shipped_cols[f"shipped_h{h}"] = p
        n_test = int(holdout[f"y_{h}"].drop_nulls().len())
        se = float(np.hypot(auc_se(st.n_val, h), auc_se(n_test, h)))
        gap = None if st.val_auc is None or test_auc is None else st.val_auc - test_auc
        metrics[str(h)] = {
            "shipped": st.shipped.label,
            "oof_auc": st.oof_auc,
            "val_auc": st.val_auc,
            "test_auc": test_auc,
            "gap_abs": gap,
            "gap_rel": None if gap is None or not st.val_auc else gap / st.val_auc,
            "gap_combined_se": se,
            "candidates": {k: {**v, "test_auc": test[k]} for k, v in st.candidates.items()},
            "c_scores": st.c_scores,
            "weights": dict(zip(st.shipped.models, st.shipped.weights)) if st.shipped.kind == "meta" else None,
            "models": st.shipped.models,
            "dropped": st.dropped,
            "n_train": st.n_train,
            "n_val": st.n_val,
            "n_test": n_test,
            "train_last": st.train_last,
            "holdout_first": holdout["timestamp"][0].isoformat(),
        }
        div[str(h)] = st.diversity
        meta_json[str(h)] = st.shipped.to_json()
        log.info("h=%d ships %s: inner-CV AUC %.3f, holdout %.3f", h, st.shipped.label, st.val_auc or float("nan"),
                 test_auc or float("nan"))
    key = content_key("stack", STACK_CODE)(None, dict(t=tables, m=models, h=horizons, s=spec, e=embargo_hours, c=collapsed))
    d = cache_dir(out_dir, "stack", key)
    files = {
        "meta.json": write_json(d / "meta.json", {"horizons": horizons, "predictors": meta_json,
                                                  "input": "base-model probabilities; meta uses standardised logits"}),
        "stack.json": write_json(d / "stack.json", {"meta": metrics, "diversity": div, "spec": spec.model_dump()}),
        "shipped_holdout.parquet": write_parquet(d / "shipped_holdout.parquet", pl.DataFrame(shipped_cols)),
    }
    return {"files": files, "meta": metrics, "diversity": div}

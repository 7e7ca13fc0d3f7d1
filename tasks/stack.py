"""Stacking task: choose and fit what ships per horizon from OOF rows, then report it on the holdout."""

from __future__ import annotations

from prefect import get_run_logger

from models.stacking import StackSpec, meta_document, stack_all
from tasks.policy import content_key
from tasks.results import cached_task
from tasks.store import ArtifactRef, cache_dir, read_parquet, write_json, write_parquet

STACK_CODE = "stack-1"


@cached_task(name="stack", cache_key_fn=content_key("stack", STACK_CODE))
def stack_task(
    tables: dict[str, ArtifactRef], models: list[str], horizons: list[int], spec: StackSpec, embargo_hours: int,
    collapsed: dict[str, bool], out_dir: str,
) -> dict:
    """Returns {"files": {name: ArtifactRef}, "meta": per-horizon metrics, "diversity": per-horizon analysis}."""
    oof = read_parquet(tables["oof.parquet"])
    holdout = read_parquet(tables["holdout_predictions.parquet"])
    metrics, div, meta_json, shipped = stack_all(oof, holdout, models, horizons, spec, embargo_hours, collapsed)
    log = get_run_logger()
    for h, m in metrics.items():
        log.info("h=%s ships %s: inner-CV AUC %s, holdout %s", h, m["shipped"], m["val_auc"], m["test_auc"])
    key = content_key("stack", STACK_CODE)(None, dict(t=tables, m=models, h=horizons, s=spec, e=embargo_hours, c=collapsed))
    d = cache_dir(out_dir, "stack", key)
    files = {
        "meta.json": write_json(d / "meta.json", meta_document(horizons, meta_json)),
        "stack.json": write_json(d / "stack.json", {"meta": metrics, "diversity": div, "spec": spec.model_dump()}),
        "shipped_holdout.parquet": write_parquet(d / "shipped_holdout.parquet", shipped),
    }
    return {"files": files, "meta": metrics, "diversity": div}

"""Stages after training, run alone against an existing run folder (``macd-ml stack``, ``macd-ml report``).

A published run is immutable, so a stage re-run writes to a new folder (``--out``); it reads the run's own
OOF and holdout tables after checking them against its manifest. (To finish a run that failed in one of
these stages, ``macd-ml resume RUN_ID`` re-runs just that stage inside the flow.)
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from features.errors import ConfigError
from flows.config import validate_config
from models.stacking import meta_document, stack_all
from tasks.report import write_report
from tasks.store import IntegrityError, verify_run, write_json, write_parquet


def _load(run: Path) -> dict:
    run = Path(run)
    if not (run / "manifest.json").is_file():
        raise ConfigError(f"{run}: not a published run folder (no manifest.json)")
    try:
        verify_run(run, signed=False)  # a run read as input (possibly made elsewhere): its checksums must hold
    except IntegrityError as exc:
        raise ConfigError(str(exc)) from None
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    # metrics.json is written with sorted keys; restore the run's model order for tables and plots
    order = config.get("models", {}).get("enabled", list(metrics["models"]))
    metrics["models"] = {m: metrics["models"][m] for m in order if m in metrics["models"]}
    return {
        "metrics": metrics,
        "config": config,
        "folds": json.loads((run / "folds.json").read_text()),
        "oof": pl.read_parquet(run / "oof.parquet"),
        "holdout": pl.read_parquet(run / "holdout_predictions.parquet"),
    }


def _fresh(out: Path, run: Path) -> Path:
    out = Path(out)
    if out.resolve() == Path(run).resolve() or Path(run).resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out}: a published run is immutable; write the stage somewhere else")
    return out


def run_stack(run: Path, out: Path, overrides: list[str] | None = None) -> dict:
    """Re-choose and refit what ships from the run's OOF rows (stacking settings from the run's config, then
    ``overrides`` like ``stacking.nonneg=false``); write meta.json, stack.json, shipped_holdout.parquet."""
    out = _fresh(out, run)
    r = _load(run)
    cfg = dict(r["config"])
    for item in overrides or []:
        key, _, value = item.partition("=")
        if not key.startswith("stacking."):
            raise ConfigError(f"--set {key}: only stacking.* keys apply to this stage")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        cfg.setdefault("stacking", {})[key.split(".", 1)[1]] = parsed
    config = validate_config(cfg)
    m = r["metrics"]
    collapsed = {name: t.get("collapsed", False) for name, t in m.get("training", {}).items()}
    meta, div, predictors, shipped = stack_all(r["oof"], r["holdout"], config.models.enabled, m["horizons"],
                                               config.stacking, r["folds"]["embargo_hours"], collapsed)
    write_json(out / "meta.json", meta_document(m["horizons"], predictors))
    write_json(out / "stack.json", {"meta": meta, "diversity": div, "spec": config.stacking.model_dump(),
                                    "source_run": m["run_id"]})
    write_parquet(out / "shipped_holdout.parquet", shipped)
    return meta


def run_report(run: Path, out: Path) -> Path:
    """Re-render report.md and the plots of a run into ``out``."""
    out = _fresh(out, run)
    r = _load(run)
    run = Path(run)
    importance = {p.name.split("_importance")[0]: json.loads(p.read_text())
                  for p in (run / "models").glob("*/*_importance.json")}
    write_report(out, r["metrics"], r["oof"], r["holdout"], pl.read_parquet(run / "shipped_holdout.parquet"),
                 importance)
    return out / "report.md"

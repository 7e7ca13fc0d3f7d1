"""Stages after training, run alone against an existing run folder (``macd-ml stack``, ``macd-ml report``).

A published run is immutable, so a stage re-run writes into another folder (``--into``); it reads the run's own
OOF and holdout tables after checking them against its manifest. (To finish a run that failed in one of
these stages, ``macd-ml resume RUN_ID`` re-runs just that stage inside the flow.)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from macd_ml.artifacts.store import (
    IntegrityError,
    copy_file,
    read_json,
    read_parquet,
    read_text,
    run_artifacts,
    verify_run,
    write_bytes,
    write_json,
    write_parquet,
)
from macd_ml.features.errors import ConfigError
from macd_ml.flows.config import apply_overrides, validate_config
from macd_ml.models.metrics import Check, Decision, HealthReport, Metrics, Shipped
from macd_ml.models.predictor import predictors_document
from macd_ml.models.reference import REFERENCE
from macd_ml.models.report import render_promotion
from macd_ml.models.stacking import stack_all
from macd_ml.tasks.report import write_report

EXTRA_PLOTS = ("plots/equity.png",)


def _load(run: Path) -> dict:
    run = Path(run)
    if not (run / "manifest.json").is_file():
        raise ConfigError(f"{run}: not a published run folder (no manifest.json)")
    # checksums and the manifest's signature: a run edited after it was written (its manifest rewritten to match,
    # the signature replaced) is refused by every stage command, exit 3 (flows/cli)
    manifest = verify_run(run)
    refs = run_artifacts(run, manifest)
    config = read_json(refs["config.json"])
    try:
        metrics = Metrics.model_validate(read_json(refs["metrics.json"]))
    except ValidationError as exc:
        raise ConfigError(
            f"{run / 'metrics.json'}: does not match the metrics schema ({exc.errors()[0]['msg']})"
        ) from None
    # the run's model order for tables and plots, whatever order the JSON holds them in
    order = [*config.get("models", {}).get("enabled", list(metrics.models)), REFERENCE]
    metrics.models = {m: metrics.models[m] for m in order if m in metrics.models}
    return {
        "metrics": metrics,
        "config": config,
        "folds": read_json(refs["folds.json"]),
        "oof": read_parquet(refs["oof.parquet"]),
        "holdout": read_parquet(refs["holdout_predictions.parquet"]),
        "shipped": read_parquet(refs["shipped_holdout.parquet"]),
        "meta": read_json(refs["meta.json"]),
        "promotion": read_json(refs["promotion.json"]) if "promotion.json" in refs else None,
        # plots other stages drew (the backtest's equity curve): the report links them, a re-render copies them
        "extra_plots": {rel: ref for rel, ref in refs.items() if rel in EXTRA_PLOTS},
        "features": read_parquet(refs["features.parquet"]),
        "feature_names": read_json(refs["features.json"])["names"],
        "importance": {
            rel.split("/")[1]: read_json(ref)
            for rel, ref in refs.items()
            if rel.startswith("models/") and rel.endswith("_importance.json")
        },
    }


def _fresh(out: Path, run: Path) -> Path:
    out = Path(out)
    if out.resolve() == Path(run).resolve() or Path(run).resolve() in out.resolve().parents:
        raise ConfigError(f"--into {out}: a published run is immutable; write the stage somewhere else")
    return out


def run_stack(run: Path, out: Path, overrides: list[str] | None = None) -> dict[str, Shipped]:
    """Re-choose and refit what ships from the run's OOF rows (stacking settings from the run's config, then
    ``overrides`` like ``stacking.nonneg=false``); write meta.json, stack.json, shipped_holdout.parquet."""
    out = _fresh(out, run)
    r = _load(run)
    config = validate_config(apply_overrides(dict(r["config"]), overrides or [], prefix="stacking"))
    m: Metrics = r["metrics"]
    collapsed = {name: t.collapsed for name, t in m.training.items()}
    outcome = stack_all(
        r["oof"],
        r["holdout"],
        # a run from before the reference trained as a base model has no reference columns to stack
        [name for name in config.stack_models() if name in m.models],
        m.horizons,
        config.stacking,
        r["folds"]["embargo_hours"],
        collapsed,
    )
    write_json(out / "meta.json", predictors_document(m.horizons, outcome.predictors))
    stack_doc = {
        "meta": outcome.metrics,
        "diversity": outcome.diversity,
        "spec": config.stacking.model_dump(),
        "source_run": m.run_id,
    }
    write_json(out / "stack.json", stack_doc)
    write_parquet(out / "shipped_holdout.parquet", outcome.shipped)
    if outcome.oof_shipped is not None:
        write_parquet(out / "shipped_oof.parquet", outcome.oof_shipped)
    return outcome.metrics


def run_report(run: Path, out: Path) -> Path:
    """Re-render report.md and the plots of a run into ``out``."""
    out = _fresh(out, run)
    r = _load(run)
    for rel, ref in r["extra_plots"].items():
        copy_file(ref, out / rel)
    plots = bool(r["config"].get("report", {}).get("plots", True))
    refs = write_report(
        out,
        r["metrics"],
        r["oof"],
        r["holdout"],
        r["shipped"],
        r["importance"],
        list(r["extra_plots"]),
        r["meta"],
        plots,
    )
    if r["promotion"] is not None:  # the decision made when the run was published ends its report
        text = read_text(refs["report.md"]) + render_promotion(Decision.model_validate(r["promotion"]))
        write_bytes(out / "report.md", text.encode())
    return out / "report.md"


def run_export(run: Path, out: Path) -> dict:
    """Export a run's models to ONNX again (``onnx/*.onnx`` + ``parity.json`` into ``out``): a failed export is
    redone without retraining. Returns the parity report."""
    from macd_ml.models.export import export_run
    from macd_ml.models.predictor import load_predictors
    from macd_ml.models.registry import load_model

    out = _fresh(out, run)
    r = _load(run)
    m: Metrics = r["metrics"]
    models = {name: load_model(name, Path(run) / "models" / name) for name in m.models}
    exported = export_run(
        models,
        load_predictors(Path(run) / "meta.json"),
        r["features"],
        r["feature_names"],
        m.horizons,
        int(r["config"].get("gap_tolerance_hours", 1)),
        r["holdout"],
        r["shipped"],
    )
    for rel, data in exported.files.items():
        write_bytes(out / rel, data)
    write_json(out / "parity.json", exported.parity)
    return exported.parity


def run_health(run: Path, data_dir: str | None = None, live: bool = True) -> HealthReport:
    """The health gate on a published run folder (every file checked against its manifest first)."""
    from macd_ml.models.health import HealthSpec, evaluate

    run = Path(run)
    try:
        manifest = verify_run(run)  # checksums and the manifest's signature
    except IntegrityError as exc:
        report = HealthReport(
            passed=False, primary_horizon=0, checks=[Check(name="artifacts", passed=False, detail=str(exc))]
        )
        return report
    refs = run_artifacts(run, manifest)
    config = read_json(refs["config.json"])
    metrics = Metrics.model_validate(read_json(refs["metrics.json"]))
    spec = HealthSpec.model_validate(config.get("health", {}))
    collapse = float(config.get("models", {}).get("collapse_std", 1e-3))
    data = data_dir or metrics.input.data_dir
    return evaluate(refs, metrics, config, spec, collapse, data, live=live)

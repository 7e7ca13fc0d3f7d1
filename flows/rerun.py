"""Re-run one stage of a published run (``macd-ml stack``, ``report``, ``export-onnx``, ``health``) with the
stage's own functions and writers (docs/architecture.md, "Stages as plain functions").

A published run is immutable, so a stage re-run writes into another folder (``--into``); it reads the run's own
OOF and holdout tables after checking them against its manifest. (To finish a run that failed in one of
these stages, ``macd-ml resume RUN_ID`` re-runs just that stage inside the flow.)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import (
    IntegrityError,
    copy_file,
    read_json,
    read_parquet,
    read_text,
    run_artifacts,
    verify_run,
    write_bytes,
)
from macd_ml.errors import ConfigError
from macd_ml.flows.config import apply_overrides, validate_config
from macd_ml.models.ensemble.stacking import stack_all
from macd_ml.models.evaluation.metrics import Check, Decision, HealthReport, Metrics, Shipped
from macd_ml.models.evaluation.report import render_promotion
from macd_ml.models.learners.reference import REFERENCE
from macd_ml.tasks.export import write_export
from macd_ml.tasks.report import write_report
from macd_ml.tasks.stack import write_stack

EXTRA_PLOTS = (catalog.EQUITY_PLOT,)


def _load(run: Path) -> dict:
    run = Path(run)
    if not (run / catalog.MANIFEST).is_file():
        raise ConfigError(f"{run}: not a published run folder (no manifest.json)")
    # checksums and the manifest's signature: a run edited after it was written (its manifest rewritten to match,
    # the signature replaced) is refused by every stage command, exit 3 (flows/cli)
    manifest = verify_run(run)
    refs = run_artifacts(run, manifest)
    config = read_json(refs[catalog.CONFIG])
    try:
        metrics = Metrics.model_validate(read_json(refs[catalog.METRICS]))
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
        "folds": read_json(refs[catalog.FOLDS]),
        "oof": read_parquet(refs[catalog.OOF]),
        "holdout": read_parquet(refs[catalog.HOLDOUT_PREDICTIONS]),
        "shipped": read_parquet(refs[catalog.SHIPPED_HOLDOUT]),
        "meta": read_json(refs[catalog.META]),
        "promotion": read_json(refs[catalog.PROMOTION]) if catalog.PROMOTION in refs else None,
        # plots other stages drew (the backtest's equity curve): the report links them, a re-render copies them
        "extra_plots": {rel: ref for rel, ref in refs.items() if rel in EXTRA_PLOTS},
        "features": read_parquet(refs[catalog.FEATURES]),
        "feature_names": read_json(refs[catalog.FEATURES_META])["names"],
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
    write_stack(out, outcome, m.horizons, config.stacking, extra={"source_run": m.run_id})
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
        text = read_text(refs[catalog.REPORT]) + render_promotion(Decision.model_validate(r["promotion"]))
        write_bytes(out / catalog.REPORT, text.encode())
    return out / catalog.REPORT


def run_export(run: Path, out: Path) -> dict:
    """Export a run's models to ONNX again (``onnx/*.onnx`` + ``parity.json`` into ``out``): a failed export is
    redone without retraining. Returns the parity report."""
    from macd_ml.models.ensemble.predictor import load_predictors
    from macd_ml.models.learners.registry import load_model
    from macd_ml.models.release.export import export_run

    out = _fresh(out, run)
    r = _load(run)
    m: Metrics = r["metrics"]
    models = {name: load_model(name, Path(run) / "models" / name) for name in m.models}
    exported = export_run(
        models,
        load_predictors(Path(run) / catalog.META),
        r["features"],
        r["feature_names"],
        m.horizons,
        int(r["config"].get("gap_tolerance_hours", 1)),
        r["holdout"],
        r["shipped"],
    )
    write_export(out, exported.files, exported.parity)
    return exported.parity


def run_health(run: Path, data_dir: str | None = None, live: bool = True) -> HealthReport:
    """The health gate on a published run folder (every file checked against its manifest first)."""
    from macd_ml.models.release.health import HealthSpec, evaluate

    run = Path(run)
    try:
        manifest = verify_run(run)  # checksums and the manifest's signature
    except IntegrityError as exc:
        report = HealthReport(
            passed=False, primary_horizon=0, checks=[Check(name="artifacts", passed=False, detail=str(exc))]
        )
        return report
    refs = run_artifacts(run, manifest)
    config = read_json(refs[catalog.CONFIG])
    metrics = Metrics.model_validate(read_json(refs[catalog.METRICS]))
    spec = HealthSpec.model_validate(config.get("health", {}))
    collapse = float(config.get("models", {}).get("collapse_std", 1e-3))
    data = data_dir or metrics.input.data_dir
    check = None
    if live and data and Path(data).is_dir():  # the run's candles (or newer ones in the same folder)
        from macd_ml.features.ingest import load_market
        from macd_ml.serving.live_check import live_check

        meta = read_json(refs[catalog.FEATURES_META])
        check = live_check(load_market(data, meta["target"], meta["cross"]))
    return evaluate(refs, metrics, config, spec, collapse, check)

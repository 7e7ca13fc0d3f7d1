"""The retraining pipeline as a diagram in code: which stage feeds which (docs/architecture.md, "The flow").

    ingest+validate ─► features ─► labels ─► purged walk-forward folds
        ─► per-model OOF fold tasks (lgb · xgb · lgb_cross · lstm · tft) + full refits scoring the holdout,
           and beside them the fixed reference model (same tasks, folds and holdout; a stack input by default)
        ─► OOF and holdout tables ─► meta-stacking (OOF only) ─► metrics ─► backtest · drift ─► ONNX export
        ─► health gate ─► report ─► champion / challenger ─► publish the run folder ─► promote OUT/current ─► bundle

:func:`run_pipeline` only wires: every stage is a function in ``tasks/`` run through ``s`` (flows/stages_runner.py):
as a cached Prefect task in the flow, or called directly (the bench's direct mode). Tasks pass references
(paths + sha256), never frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import read_bytes, read_text
from macd_ml.errors import PromotionRefused
from macd_ml.features.ingest import panel_symbols
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.stages_runner import Call, Stages
from macd_ml.flows.unchanged import published_config
from macd_ml.models.evaluation.metrics import Decision, metrics_schema
from macd_ml.models.learners.registry import FIT_COST, SEQUENCE_MODELS
from macd_ml.tasks.backtest import backtest_task, drift_task
from macd_ml.tasks.bundle import bundle_task
from macd_ml.tasks.export import export_task
from macd_ml.tasks.features import features_task, folds_task, labels_task
from macd_ml.tasks.health import health_task
from macd_ml.tasks.ingest import ingest_task, synthetic_market_task
from macd_ml.tasks.metrics import metrics_task, timings, training_summary
from macd_ml.tasks.promotion import champion_task
from macd_ml.tasks.publish import promote_task, publish_run_task
from macd_ml.tasks.refs import MarketRef, PanelMember, TrainingData, load_folds
from macd_ml.tasks.report import report_task
from macd_ml.tasks.stack import stack_task
from macd_ml.tasks.train import assemble_task, fit_fold_task, refit_task

log = logging.getLogger(__name__)


def run_pipeline(config: RetrainConfig, out: Path, run_id: str, s: Stages):
    """Run every stage for ``config`` into ``out`` as run ``run_id``; returns the published run (RunRef).
    Raises PromotionRefused when the run is published but may not become current."""
    data_dir = config.data_dir or s.run(synthetic_market_task, config.synthetic, str(out))
    market = s.run(ingest_task, str(data_dir), config.target, config.cross_symbols(), str(out))

    feats = s.run(features_task, market, config.features, config.gap_tolerance_hours, str(out))
    labels = s.run(
        labels_task, market, feats, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, str(out)
    )
    folds = s.run(folds_task, feats, config.horizons, config.folds, str(out))

    inputs = TrainingData(
        features=feats,
        labels=labels,
        folds=folds,
        horizons=config.horizons,
        gap_tolerance_hours=config.gap_tolerance_hours,
        collapse_std=config.models.collapse_std,
    )
    panel = _panel(config, market, s, str(out))
    fold_outputs, refits = _train(config, inputs, panel, str(out), s)
    tables = s.run(assemble_task, fold_outputs, refits, labels, config.horizons, str(out))

    training = training_summary(fold_outputs, refits)
    stack = s.run(
        stack_task,
        tables,
        config.stack_models(),
        config.horizons,
        config.stacking,
        load_folds(folds).embargo_hours,
        {m: t["collapsed"] for m, t in training.items()},
        str(out),
    )
    metrics = s.run(
        metrics_task,
        market,
        feats,
        labels,
        folds,
        tables,
        config.models.trained(),
        config.horizons,
        training,
        refits,
        stack,
    )
    backtest = s.run(
        backtest_task, market, stack.files, config.primary_horizon(), config.backtest, str(out), config.report.plots
    )
    drift = s.run(
        drift_task, feats.data, feats.names, folds, config.drift_window_hours, config.health.max_feature_psi, str(out)
    )
    metrics = metrics.model_copy(update={"backtest": backtest.summary, "drift": drift})
    exported = s.run(
        export_task, feats, refits, tables, stack.files, config.horizons, config.gap_tolerance_hours, str(out)
    )
    artifacts = {
        catalog.FEATURES: feats.data,
        catalog.FEATURES_META: feats.meta,
        catalog.LABELS: labels,
        catalog.FOLDS: folds,
        **tables,
        **stack.files,
        **exported.files,
        **backtest.files,
    }
    for r in refits:
        for fname, ref in r.files.items():
            artifacts[catalog.model_file(r.model, fname)] = ref
    run_config = published_config(config)
    health = s.run(
        health_task, artifacts, metrics, run_config, config.health, config.models.collapse_std, market, str(out)
    )
    metrics = metrics.model_copy(update={"parity": exported.parity, "health": health.report})
    importance = {
        r.model: r.files[catalog.importance_file(r.model)]
        for r in refits
        if catalog.importance_file(r.model) in r.files
    }
    report = s.run(report_task, metrics, tables, stack.files, importance, str(out), backtest.files, config.report.plots)
    artifacts.update({catalog.HEALTH: health.file, **report})

    if health.report.passed:
        decision = s.run(
            champion_task,
            str(out),
            artifacts,
            metrics,
            market.data_dir,
            config.primary_horizon(),
            config.promotion,
            run_id,
        )
    else:
        failed = ", ".join(c.name for c in health.report.failures())
        decision = Decision(
            promote=False,
            reason=f"the health gate refused it ({failed})",
            challenger=run_id,
            horizon=config.primary_horizon(),
            margin_se=config.promotion.margin_se,
        )
    # publication is content-addressed: --force recomputes the stages, and identical results publish no duplicate;
    # the timings and the promotion decision (which depends on the current champion) are not part of that content
    run = s.run(
        publish_run_task,
        str(out),
        run_id,
        artifacts,
        {
            catalog.CONFIG: run_config,
            catalog.METRICS: metrics.model_dump(mode="json"),
            catalog.METRICS_SCHEMA: metrics_schema(),
        },
        timings=timings(fold_outputs, refits),
        promotion=decision.model_dump(mode="json"),
    )
    if run.run_id != run_id:
        log.info(
            "run %s produced exactly the artifacts of run %s, published earlier; nothing new was written",
            run_id,
            run.run_id,
        )
    s.ui_artifacts(
        metrics.model_copy(update={"run_id": run.run_id}),
        read_text(report[catalog.REPORT]),
        decision,
        images={name: read_bytes(ref) for name, ref in {**report, **backtest.files}.items() if name.endswith(".png")},
    )
    if not decision.promote:
        detail = "; ".join(f"{c.name}: {c.detail}" for c in health.report.failures()) or decision.reason
        raise PromotionRefused(f"run {run.run_id} published but not promoted ({run.path}): {detail}")
    s.run(promote_task, str(out), run, decision.champion)
    s.run(bundle_task, run, str(out))
    return run


def _panel(config: RetrainConfig, market: MarketRef, s: Stages, out: str) -> list[PanelMember]:
    """Pooled training's other symbols: each ingested, featurised (the target's cross symbols) and labelled by
    the same cached tasks as the target."""
    if not config.models.pooled:
        return []
    members = []
    for symbol in panel_symbols(market.data_dir, market.target, market.cross):
        m = s.run(ingest_task, market.data_dir, symbol, market.cross, out)
        f = s.run(features_task, m, config.features, config.gap_tolerance_hours, out)
        y = s.run(labels_task, m, f, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, out)
        members.append(PanelMember(symbol=symbol, features=f, labels=y))
    return members


def _train(config: RetrainConfig, inputs: TrainingData, panel: list[PanelMember], out: str, s: Stages):
    """Every (model, fold) fit and every refit at once (``s.fan_out``: the flow's task runner, or a Dask cluster
    with ``scale.runner = "dask"``). Models in ``models.pooled`` also get the panel. Longest first (the costliest
    model's refit, then its latest, largest folds): the pool's FIFO queue then ends on short tasks instead of
    one long one on an idle core."""
    m = config.models
    n_folds = config.folds.n_folds
    jobs = [(name, k) for name in m.trained() for k in [*range(n_folds), None]]  # fold k; None = the refit
    order = sorted(jobs, key=lambda j: (-FIT_COST[j[0]], -(n_folds if j[1] is None else j[1])))
    calls = []
    for name, k in order:
        common: dict[str, Any] = dict(
            params=m.params_for(name), feature_set=m.feature_set(name), inputs=inputs, out_dir=out
        )
        if name in m.pooled:
            common["panel"] = panel
        task, kwargs = (refit_task, common) if k is None else (fit_fold_task, {"fold": k, **common})
        calls.append(Call(task, (name,), kwargs, gpu=name in SEQUENCE_MODELS))
    done = dict(zip(order, s.fan_out(calls)))
    return [done[j] for j in jobs if j[1] is not None], [done[j] for j in jobs if j[1] is None]

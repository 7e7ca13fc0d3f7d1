"""The retraining pipeline as a diagram in code: which stage feeds which (docs/architecture.md, "The flow").

    ingest+validate ─► features ─► labels ─► purged walk-forward folds
        ─► per-model OOF fold tasks (lgb · xgb · lgb_cross · lstm · tft) + full refits scoring the holdout,
           and beside them the fixed reference model (same tasks, folds and holdout; a stack input by default)
        ─► OOF and holdout tables ─► meta-stacking (OOF only) ─► metrics ─► backtest · drift · trade gate · familiarity
        ─► ONNX export
        ─► health gate ─► report ─► champion / challenger ─► publish the run folder ─► bundle ─► promote OUT/current

:func:`run_pipeline` only wires: every stage is a function in ``tasks/`` run through ``s`` (flows/stages_runner.py):
as a cached Prefect task in the flow, or called directly (the bench's direct mode). Tasks pass references
(paths + sha256), never frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, RunRef, read_bytes, read_text
from macd_ml.errors import PromotionRefused
from macd_ml.features.ingest import panel_symbols
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.stages_runner import Call, Stages
from macd_ml.flows.unchanged import published_config
from macd_ml.models.evaluation.metrics import Decision, Metrics, metrics_schema
from macd_ml.models.learners.registry import FIT_COST, SEQUENCE_MODELS
from macd_ml.tasks.backtest import backtest_task, drift_task
from macd_ml.tasks.bundle import bundle_task
from macd_ml.tasks.export import export_task
from macd_ml.tasks.familiarity import familiarity_task
from macd_ml.tasks.features import features_task, folds_task, labels_task
from macd_ml.tasks.gate import gate_task
from macd_ml.tasks.health import HealthResult, health_task
from macd_ml.tasks.ingest import ingest_task, synthetic_market_task
from macd_ml.tasks.metrics import metrics_task, timings, training_summary
from macd_ml.tasks.promotion import champion_task
from macd_ml.tasks.publish import promote_task, publish_run_task
from macd_ml.tasks.refs import (
    FoldOutput,
    MarketRef,
    PanelMember,
    RefitOutput,
    StackResult,
    TableRef,
    TrainingData,
    load_folds,
)
from macd_ml.tasks.report import report_task
from macd_ml.tasks.stack import stack_task
from macd_ml.tasks.train import assemble_task, fit_fold_task, refit_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What training reads: the validated market, the feature table, labels, folds and the pooled panel."""

    market: MarketRef
    features: TableRef
    labels: ArtifactRef
    folds: ArtifactRef
    panel: list[PanelMember]

    def training_data(self, config: RetrainConfig) -> TrainingData:
        return TrainingData(
            features=self.features,
            labels=self.labels,
            folds=self.folds,
            horizons=config.horizons,
            gap_tolerance_hours=config.gap_tolerance_hours,
            collapse_std=config.models.collapse_std,
        )


@dataclass(frozen=True)
class Trained:
    """What the checks and the shipping read: the fits, the OOF and holdout tables, the stack and the metrics."""

    fold_outputs: list[FoldOutput]
    refits: list[RefitOutput]
    tables: dict[str, ArtifactRef]
    stack: StackResult
    metrics: Metrics


@dataclass(frozen=True)
class Checked:
    """A run ready to publish: every artifact, its metrics, the health report, the report, the backtest's files."""

    artifacts: dict[str, ArtifactRef]
    metrics: Metrics
    health: HealthResult
    report: dict[str, ArtifactRef]
    backtest_files: dict[str, ArtifactRef]


def run_pipeline(config: RetrainConfig, out: Path, run_id: str, s: Stages) -> RunRef:
    """Run every stage for ``config`` into ``out`` as run ``run_id``; returns the published run. Raises
    PromotionRefused when the run is published but may not become current."""
    prepared = prepare(config, str(out), s)
    trained = train(config, prepared, str(out), s)
    checked = check(config, prepared, trained, str(out), s)
    return ship(config, prepared, trained, checked, str(out), run_id, s)


def prepare(config: RetrainConfig, out: str, s: Stages) -> Prepared:
    """ingest + validation ─► features ─► labels ─► purged walk-forward folds (and the pooled panel)."""
    data_dir = config.data_dir or s.run(synthetic_market_task, config.synthetic, out)
    market = s.run(ingest_task, str(data_dir), config.target, config.cross_symbols(), out, config.until)
    feats = s.run(features_task, market, config.features, config.gap_tolerance_hours, out)
    labels = s.run(labels_task, market, feats, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, out)
    folds = s.run(folds_task, feats, config.horizons, config.folds, out)
    return Prepared(market, feats, labels, folds, _panel(config, market, s, out))


def train(config: RetrainConfig, p: Prepared, out: str, s: Stages) -> Trained:
    """fold fits + refits ─► OOF and holdout tables ─► meta-stacking (OOF only) ─► metrics."""
    fold_outputs, refits = _fits(config, p.training_data(config), p.panel, out, s)
    tables = s.run(assemble_task, fold_outputs, refits, p.labels, config.horizons, out)
    training = training_summary(fold_outputs, refits)
    collapsed = {m: t["collapsed"] for m, t in training.items()}
    embargo = load_folds(p.folds).embargo_hours
    stack = s.run(stack_task, tables, config.stack_models(), config.horizons, config.stacking, embargo, collapsed, out)
    models, horizons = config.models.trained(), config.horizons
    metrics = s.run(
        metrics_task, p.market, p.features, p.labels, p.folds, tables, models, horizons, training, refits, stack
    )
    return Trained(fold_outputs, refits, tables, stack, metrics)


def check(config: RetrainConfig, p: Prepared, t: Trained, out: str, s: Stages) -> Checked:
    """backtest · drift · trade gate (meta-labels, chosen on OOF trades) ─► ONNX export with parity ─► health gate
    ─► report."""
    h, plots = config.primary_horizon(), config.report.plots
    backtest = s.run(backtest_task, p.market, t.stack.files, h, config.backtest, out, plots)
    psi = config.health.max_feature_psi
    drift = s.run(drift_task, p.features.data, p.features.names, p.folds, config.drift_window_hours, psi, out)
    metrics = t.metrics.model_copy(update={"backtest": backtest.summary, "drift": drift})
    gate_files: dict[str, ArtifactRef] = {}
    if config.gate.enabled:
        embargo = load_folds(p.folds).embargo_hours
        gate = s.run(
            gate_task,
            p.market,
            p.features,
            t.stack.files,
            p.panel,
            config.horizons,
            h,
            config.backtest,
            config.gate,
            embargo,
            out,
        )
        metrics = metrics.model_copy(update={"trade_gate": gate.summary})
        gate_files = gate.files
    familiar = s.run(familiarity_task, p.features, p.folds, config.serving.unfamiliar, out)
    metrics = metrics.model_copy(update={"familiarity": familiar.summary})
    gap = config.gap_tolerance_hours
    exported = s.run(export_task, p.features, t.refits, t.tables, t.stack.files, config.horizons, gap, out)
    artifacts = {
        catalog.FEATURES: p.features.data,
        catalog.FEATURES_META: p.features.meta,
        catalog.LABELS: p.labels,
        catalog.FOLDS: p.folds,
        **t.tables,
        **t.stack.files,
        **exported.files,
        **backtest.files,
        **gate_files,
        **familiar.files,
    }
    for r in t.refits:
        for fname, ref in r.files.items():
            artifacts[catalog.model_file(r.model, fname)] = ref
    run_config = published_config(config)
    health = s.run(
        health_task, artifacts, metrics, run_config, config.health, config.models.collapse_std, p.market, out
    )
    metrics = metrics.model_copy(update={"parity": exported.parity, "health": health.report})
    importance = {
        r.model: r.files[catalog.importance_file(r.model)]
        for r in t.refits
        if catalog.importance_file(r.model) in r.files
    }
    report = s.run(report_task, metrics, t.tables, t.stack.files, importance, out, backtest.files, plots)
    artifacts.update({catalog.HEALTH: health.file, **report})
    return Checked(artifacts, metrics, health, report, backtest.files)


def ship(config: RetrainConfig, p: Prepared, t: Trained, c: Checked, out: str, run_id: str, s: Stages) -> RunRef:
    """champion / challenger ─► publish the run folder ─► UI artifacts ─► bundle ─► promote OUT/current; all of
    it in the run's home (``config.run_home``, else OUT). The bundle is written before ``current`` moves, so
    ``current`` never names a run without its bundle (a failed bundle write leaves it where it was). Last, one
    artifact on the flow run says where the outputs are and what was decided (``s.outputs(...)``)."""
    from macd_ml.artifacts.store import current_run
    from macd_ml.tasks.report import RunOutputs

    h = config.primary_horizon()
    home = str(config.home())
    if c.health.report.passed:
        decision = s.run(champion_task, home, c.artifacts, c.metrics, p.market.data_dir, h, config.promotion, run_id)
    else:
        failed = ", ".join(x.name for x in c.health.report.failures())
        decision = Decision(
            promote=False,
            reason=f"the health gate refused it ({failed})",
            challenger=run_id,
            horizon=h,
            margin_se=config.promotion.margin_se,
        )
    # publication is content-addressed: --force recomputes the stages, and identical results publish no duplicate;
    # the timings and the promotion decision (which depends on the current champion) are not part of that content
    documents = {
        catalog.CONFIG: published_config(config),
        catalog.METRICS: c.metrics.model_dump(mode="json"),
        catalog.METRICS_SCHEMA: metrics_schema(),
    }
    run = s.run(
        publish_run_task,
        home,
        run_id,
        c.artifacts,
        documents,
        timings=timings(t.fold_outputs, t.refits),
        promotion=decision.model_dump(mode="json"),
    )
    if run.run_id != run_id:
        log.info(
            "run %s produced exactly the artifacts of run %s, published earlier; nothing new was written",
            run_id,
            run.run_id,
        )
    images = {name: read_bytes(ref) for name, ref in {**c.report, **c.backtest_files}.items() if name.endswith(".png")}
    s.ui_artifacts(
        c.metrics.model_copy(update={"run_id": run.run_id}),
        read_text(c.report[catalog.REPORT]),
        decision,
        images=images,
        made_by=c.report,
    )

    def outcome(status: str, why: str, bundle: ArtifactRef | None = None) -> RunOutputs:
        return RunOutputs(
            target=config.target,
            run_id=run.run_id,
            status=status,
            why=" ".join(why.split()),
            run_folder=run.path,
            report=str(Path(run.path) / catalog.REPORT),
            bundle=None if bundle is None else str(bundle.path),
            home=home,
            current=current_run(home),
        )

    if not decision.promote:
        detail = "; ".join(f"{x.name}: {x.detail}" for x in c.health.report.failures()) or decision.reason
        s.outputs(outcome("not promoted", detail))
        raise PromotionRefused(f"run {run.run_id} published but not promoted ({run.path}): {detail}", run=run.path)
    bundle: ArtifactRef | None = None
    try:
        bundle = s.run(bundle_task, run, home)
        s.run(promote_task, home, run, decision.champion)
    except PromotionRefused as exc:  # another run was promoted meanwhile: this one is published and bundled
        s.outputs(outcome("not promoted", str(exc).split("): ", 1)[-1], bundle))
        raise
    except Exception as exc:  # current was not moved: it still names the run it named before
        s.outputs(outcome("failed", f"{type(exc).__name__}: {exc}", bundle))
        raise
    s.outputs(outcome("promoted", decision.reason, bundle))
    return run


def _panel(config: RetrainConfig, market: MarketRef, s: Stages, out: str) -> list[PanelMember]:
    """Pooled training's other symbols: each ingested, featurised (the target's cross symbols) and labelled by
    the same cached tasks as the target."""
    if not config.models.pooled and not (config.gate.enabled and config.gate.pooled):
        return []
    members = []
    for symbol in panel_symbols(market.data_dir, market.target, market.cross):
        m = s.run(ingest_task, market.data_dir, symbol, market.cross, out, market.until)
        f = s.run(features_task, m, config.features, config.gap_tolerance_hours, out)
        y = s.run(labels_task, m, f, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, out)
        members.append(PanelMember(symbol=symbol, features=f, labels=y, market=m))
    return members


def _fits(config: RetrainConfig, inputs: TrainingData, panel: list[PanelMember], out: str, s: Stages):
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

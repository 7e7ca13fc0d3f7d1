"""The nightly retraining flow.

    ingest+validate ─► features ─► labels ─► purged walk-forward folds
        ─► per-model OOF fold tasks (lgb · xgb · lgb_cross · lstm · tft) + full refits scoring the holdout,
           and beside them the fixed reference model (same tasks, folds and holdout; a stack input by default)
        ─► OOF and holdout tables ─► meta-stacking (OOF only; meta vs mean vs best single, chosen on an inner
        walk-forward) ─► holdout evaluation, diversity, report ─► publish run folder ─► promote OUT/current

Every stage after ingest is a cached task keyed on the content of its inputs, its config slice and the code
version, so an unchanged re-run reloads everything and a changed parameter recomputes only what depends on it.
Tasks pass references (paths + sha256), never frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from macd_ml.artifacts import catalog
from macd_ml.artifacts.signing import check_key_outside
from macd_ml.artifacts.store import (
    ArtifactRef,
    clean_stale_temp,
    new_run_id,
    read_bytes,
    read_json,
    read_parquet,
    read_text,
    validate_run_id,
)
from macd_ml.errors import PromotionRefused
from macd_ml.features.ingest import panel_symbols
from macd_ml.features.labels import label_name
from macd_ml.flows import logs, scale, stop
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.locations import resolve as resolve_locations
from macd_ml.flows.preflight import preflight
from macd_ml.flows.unchanged import fingerprint, published_config, remember, unchanged_run
from macd_ml.models.evaluation.evaluate import cross_gain, importance_share, model_metrics
from macd_ml.models.evaluation.metrics import Decision, Metrics, metrics_schema
from macd_ml.models.evaluation.stats import auc_se
from macd_ml.models.learners.device import cuda_available, parallel_tasks
from macd_ml.models.learners.reference import reference_scores
from macd_ml.models.learners.registry import FIT_COST, SEQUENCE_MODELS
from macd_ml.tasks.backtest import backtest_task, drift_task
from macd_ml.tasks.bundle import bundle_task
from macd_ml.tasks.export import export_task
from macd_ml.tasks.features import features_task, folds_task, labels_task
from macd_ml.tasks.health import health_task
from macd_ml.tasks.ingest import ingest_task, synthetic_market_task
from macd_ml.tasks.promotion import champion_task
from macd_ml.tasks.publish import promote_task, publish_run_task, record_run
from macd_ml.tasks.refs import (
    MarketRef,
    PanelMember,
    StackResult,
    TableRef,
    TrainingData,
    load_folds,
    load_labels,
)
from macd_ml.tasks.report import publish_ui_artifacts, report_task
from macd_ml.tasks.results import SafeJSONSerializer, result_storage_block
from macd_ml.tasks.stack import stack_task
from macd_ml.tasks.train import assemble_task, fit_fold_task, refit_task


def _run_id() -> str:
    """Stable across retries of the same flow run (so a resumed run finishes its own folder)."""
    fid = flow_run.get_id()
    when = flow_run.get_scheduled_start_time()
    if fid and when:
        return f"{when:%Y%m%dT%H%M%SZ}-{fid[:8]}"
    return new_run_id()


def _cache_options(config: RetrainConfig, out: Path) -> dict:
    """Task results (small JSON references) persist, signed, under ``OUT/cache/results`` or ``result_storage``."""
    location = config.result_storage or str(out / "cache" / "results")
    return {"result_storage": result_storage_block(location), "refresh_cache": config.force or None}


def _summary(market: MarketRef, feats: TableRef, labels: ArtifactRef, folds_ref: ArtifactRef, config: RetrainConfig):
    folds = load_folds(folds_ref)
    y = load_labels(labels)
    balance = {}
    for h in config.horizons:
        col = y[label_name(h)]
        defined = col.drop_nulls().cast(pl.Float64).to_numpy()
        up_share = float(defined.mean()) if len(defined) else 0.0
        balance[str(h)] = {"defined": len(defined), "up_share": round(up_share, 4)}
    n_oof = sum(len(f.test) for f in folds.folds)
    return {
        "target": market.target,
        "cross": market.cross,
        "horizons": config.horizons,
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


def _concurrency_tags(gpu_tasks: bool = True) -> dict[str, list[str]]:
    """The tags of the training tasks, by kind: ``gpu`` (LSTM, TFT) and ``cpu`` (the rest), each only when the API
    holds a concurrency limit for it. With a GPU in this process and ``gpu_tasks`` (a sequence model trains), the
    ``gpu`` limit (1) is created first; without ``gpu_tasks`` no GPU is probed (that imports torch: ~1 s).

    Why not always: Prefect asks the API for concurrency slots at the start of every tagged task (it remembers "no
    limit" for 5 s only), and on the SQLite server two such calls at once are refused as busy (503) and retried
    after about 2 s: 25 s of worker time in a cold run measured on 2 cores, a task start in three. A tag without
    a limit orders nothing, so a CPU run without limits carries none. Create the limit before the run to have
    it enforced (``prefect concurrency-limit create gpu 1``, docs/operations.md, "Scale-out"); an API that cannot
    answer keeps the tags (Prefect then enforces whatever exists)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound

    tags: dict[str, list[str]] = {"gpu": [], "cpu": []}
    if FlowRunContext.get() is None:  # the flow body called as a function (bench --mode direct): no API to ask
        return tags
    with get_client(sync_client=True) as client:
        if gpu_tasks and cuda_available():
            try:
                client.read_concurrency_limit_by_tag("gpu")
            except ObjectNotFound:
                client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
        for tag in tags:
            try:
                client.read_concurrency_limit_by_tag(tag)
                tags[tag] = [tag]
            except ObjectNotFound:
                pass
            except Exception:  # noqa: BLE001 - cannot tell: keep the tag, as before this check existed
                tags[tag] = [tag]
    return tags


def _panel(config: RetrainConfig, market: MarketRef, cached: dict, out: str) -> list[PanelMember]:
    """Pooled training's other symbols: each ingested, featurised (the target's cross symbols) and labelled by
    the same cached tasks as the target."""
    if not config.models.pooled:
        return []
    members = []
    for symbol in panel_symbols(market.data_dir, market.target, market.cross):
        m = ingest_task.with_options(**cached)(market.data_dir, symbol, market.cross, out)
        f = features_task.with_options(**cached)(m, config.features, config.gap_tolerance_hours, out)
        y = labels_task.with_options(**cached)(
            m, f, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, out
        )
        members.append(PanelMember(symbol=symbol, features=f, labels=y))
    return members


def _train(config: RetrainConfig, inputs: TrainingData, panel: list[PanelMember], out: str, cached: dict):
    """Submit every (model, fold) task and every refit at once; the task runner bounds the parallelism: the flow's
    thread pool, or a Dask cluster with ``scale.runner = "dask"`` (flows/scale.py; the same tasks and options).
    Models in ``models.pooled`` also get the panel. Longest first (the costliest model's refit, then its latest,
    largest folds): the pool's FIFO queue then ends on short tasks instead of one long one on an idle core."""
    m = config.models
    n_folds = config.folds.n_folds
    jobs = [(name, k) for name in m.trained() for k in [*range(n_folds), None]]  # fold k; None = the refit
    order = sorted(jobs, key=lambda j: (-FIT_COST[j[0]], -(n_folds if j[1] is None else j[1])))
    futures = {}
    tags = _concurrency_tags(gpu_tasks=any(name in SEQUENCE_MODELS for name in m.trained()))
    with scale.task_runner(config.scale) as runner:
        for name, k in order:
            opts = {**cached, "tags": tags["gpu"] if name in SEQUENCE_MODELS else tags["cpu"]}
            common: dict[str, Any] = dict(
                params=m.params_for(name), feature_set=m.feature_set(name), inputs=inputs, out_dir=out
            )
            if name in m.pooled:
                common["panel"] = panel
            if k is None:
                futures[name, k] = scale.submit(runner, refit_task.with_options(**opts), name, **common)
            else:
                futures[name, k] = scale.submit(runner, fit_fold_task.with_options(**opts), name, fold=k, **common)
        folds = [futures[j].result() for j in jobs if j[1] is not None]
        refits = [futures[j].result() for j in jobs if j[1] is None]
        return folds, refits


def _metrics(config, market, feats, labels, folds, tables, training, refits, stack: StackResult) -> Metrics:
    """metrics.json (docs/run-folder.md): models.{name}.{h}.{oof_auc,test_auc}, meta.{h}.{oof_auc,val_auc,test_auc},
    n_oof, n_test, plus what the report needs; validated against the Metrics schema."""
    summary = _summary(market, feats, labels, folds, config)
    scores = model_metrics(
        read_parquet(tables[catalog.OOF]),
        read_parquet(tables[catalog.HOLDOUT_PREDICTIONS]),
        config.models.trained(),
        config.horizons,
        fold_spans=[(f.test.start, f.test.stop) for f in load_folds(folds).folds],
    )
    metrics: dict = {
        **summary,
        "models": scores,
        "meta": stack.meta,
        "diversity": stack.diversity,
        "training": training,
        "reference": reference_scores(scores, config.horizons),
        "auc_se": {
            str(h): {"oof": auc_se(summary["n_oof"], h), "test": auc_se(summary["n_test"], h)} for h in config.horizons
        },
    }
    gain = cross_gain(scores, config.horizons)
    if gain is not None:
        cross_refit = next(r for r in refits if r.model == "lgb_cross")
        imp = read_json(cross_refit.files["lgb_cross_importance.json"])
        metrics["cross_features"] = {"auc_gain": gain, "importance": importance_share(imp)}
    return Metrics.model_validate(metrics)


def _per_model(fold_outputs, refits, field: str) -> dict[str, dict]:
    """{model: {"folds": {fold: value}, "refit": value}} for one field of the training outputs."""
    out: dict[str, dict] = {}
    for fo in fold_outputs:
        out.setdefault(fo.model, {"folds": {}})["folds"][str(fo.fold)] = getattr(fo, field)
    for r in refits:
        out.setdefault(r.model, {"folds": {}})["refit"] = getattr(r, field)
    return out


def _timings(fold_outputs, refits) -> dict:
    """Wall-clock fit seconds per task: published beside metrics.json, never part of a cache key."""
    return {"fit_seconds": _per_model(fold_outputs, refits, "seconds")}


def _training_summary(fold_outputs, refits) -> dict:
    out = _per_model(fold_outputs, refits, "summary")
    for r in refits:
        out[r.model]["collapsed"] = any(r.summary["collapsed"].values()) or any(
            any(f["collapsed"].values()) for f in out[r.model]["folds"].values()
        )
    return out


@flow(
    name="retrain",
    log_prints=False,  # tasks log through their run logger; print() stays print()
    task_runner=ThreadPoolTaskRunner(max_workers=parallel_tasks()),  # type: ignore[arg-type]
    result_serializer=SafeJSONSerializer(),
    persist_result=False,
)
def retrain(
    config: RetrainConfig = RetrainConfig(),  # noqa: B008 (the UI form)
    run_id: str = "",
    require_data: bool = False,
    skip_unchanged: bool = False,
) -> str:
    """Retrain the ensemble on the candles in ``config.data_dir`` (or a generated market), publish the run
    folder ``OUT/runs/RUN_ID`` and promote it to ``OUT/current``. Returns the run folder's path.

    An unchanged re-run publishes nothing new: it returns the earlier run folder with identical content
    (verified first).

    Args:
        config: what to train on and how; every field is described in the form.
        run_id: leave empty for a new run. To finish a failed run, its id (YYYYMMDDTHHMMSSZ-xxxxxxxx): every
            task that finished comes back Cached, and only what failed, and what depends on it, runs again.
        require_data: fail at once when no candle folder is given (config.data_dir or the Prefect Variable
            macd_ml_data_dir) instead of training on the synthetic market; the nightly deployment sets it.
        skip_unchanged: when the current run is exactly what this config, code and candle folder produce (and
            still verifies), end here with that run instead of looking up every cached task (flows/unchanged.py);
            the nightly deployment sets it. Ignored with config.force.
    """
    stop.inside_flow()  # run by the command: SIGTERM ends it at once (flows/stop.py); by a worker: Prefect's way
    logs.install()
    log = get_run_logger()
    config = resolve_locations(config, require_data)
    out = Path(config.out_dir).resolve()
    run_id = validate_run_id(run_id) if run_id else _run_id()
    check_key_outside(out)
    fp = fingerprint(config)
    if skip_unchanged and not config.force and (same := unchanged_run(out, fp)) is not None:
        log.info("nothing changed since run %s (same config, code and candles; it is current): %s", same.name, same)
        return str(same)
    preflight(config, out)  # everything knowable from the config and the data's shape, before the first write
    for p in clean_stale_temp(out):
        log.info("removed %s, left by a writer that was killed", p)
    _record(log, out, run_id, config)
    cached = _cache_options(config, out)

    data_dir = config.data_dir or synthetic_market_task.with_options(**cached)(config.synthetic, str(out))
    market = ingest_task.with_options(**cached)(str(data_dir), config.target, config.cross_symbols(), str(out))

    feats = features_task.with_options(**cached)(market, config.features, config.gap_tolerance_hours, str(out))
    labels = labels_task.with_options(**cached)(
        market, feats, config.horizons, config.dead_zone_bps, config.gap_tolerance_hours, str(out)
    )
    folds = folds_task.with_options(**cached)(feats, config.horizons, config.folds, str(out))

    inputs = TrainingData(
        features=feats,
        labels=labels,
        folds=folds,
        horizons=config.horizons,
        gap_tolerance_hours=config.gap_tolerance_hours,
        collapse_std=config.models.collapse_std,
    )
    panel = _panel(config, market, cached, str(out))
    fold_outputs, refits = _train(config, inputs, panel, str(out), cached)
    tables = assemble_task.with_options(**cached)(fold_outputs, refits, labels, config.horizons, str(out))

    training = _training_summary(fold_outputs, refits)
    stack = stack_task.with_options(**cached)(
        tables,
        config.stack_models(),
        config.horizons,
        config.stacking,
        load_folds(folds).embargo_hours,
        {m: t["collapsed"] for m, t in training.items()},
        str(out),
    )
    metrics = _metrics(config, market, feats, labels, folds, tables, training, refits, stack)
    backtest = backtest_task.with_options(**cached)(
        market, stack.files, config.primary_horizon(), config.backtest, str(out), config.report.plots
    )
    drift = drift_task.with_options(**cached)(
        feats.data, feats.names, folds, config.drift_window_hours, config.health.max_feature_psi, str(out)
    )
    metrics = metrics.model_copy(update={"backtest": backtest.summary, "drift": drift})
    exported = export_task.with_options(**cached)(
        feats, refits, tables, stack.files, config.horizons, config.gap_tolerance_hours, str(out)
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
            artifacts[f"models/{r.model}/{fname}"] = ref
    run_config = published_config(config)
    health = health_task.with_options(**cached)(
        artifacts, metrics, run_config, config.health, config.models.collapse_std, market, str(out)
    )
    metrics = metrics.model_copy(update={"parity": exported.parity, "health": health.report})
    importance = {
        r.model: r.files[f"{r.model}_importance.json"] for r in refits if f"{r.model}_importance.json" in r.files
    }
    report = report_task.with_options(**cached)(
        metrics, tables, stack.files, importance, str(out), backtest.files, config.report.plots
    )
    artifacts.update({"health.json": health.file, **report})

    if health.report.passed:
        decision = champion_task(
            str(out), artifacts, metrics, market.data_dir, config.primary_horizon(), config.promotion, run_id
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
    run = publish_run_task.with_options(result_storage=cached["result_storage"])(
        str(out),
        run_id,
        artifacts,
        {
            catalog.CONFIG: run_config,
            catalog.METRICS: metrics.model_dump(mode="json"),
            catalog.METRICS_SCHEMA: metrics_schema(),
        },
        timings=_timings(fold_outputs, refits),
        promotion=decision.model_dump(mode="json"),
    )
    if run.run_id != run_id:
        log.info(
            "run %s produced exactly the artifacts of run %s, published earlier; nothing new was written",
            run_id,
            run.run_id,
        )
    publish_ui_artifacts(
        metrics.model_copy(update={"run_id": run.run_id}),
        read_text(report[catalog.REPORT]),
        decision,
        images={name: read_bytes(ref) for name, ref in {**report, **backtest.files}.items() if name.endswith(".png")},
    )
    if not decision.promote:
        detail = "; ".join(f"{c.name}: {c.detail}" for c in health.report.failures()) or decision.reason
        raise PromotionRefused(f"run {run.run_id} published but not promoted ({run.path}): {detail}")
    promote_task(str(out), run, decision.champion)
    bundle_task.with_options(**cached)(run, str(out))
    try:
        remember(out, fp, run.run_id)
    except OSError as exc:  # only a shortcut for the next unchanged run: never fail a promoted run over it
        log.warning("could not record run %s for the nothing-changed shortcut (%s)", run.run_id, exc)
    log.info("run folder: %s", run.path)
    return run.path


def _record(log, out: Path, run_id: str, config: RetrainConfig) -> None:
    """Write the run's config so `macd-ml resume RUN_ID` can finish it, then say how to resume; if the record
    cannot be written, say the command that does work for this run instead."""
    try:
        record_run(
            out, run_id, config.model_copy(update={"out_dir": str(out)}).model_dump(mode="json", exclude={"force"})
        )
    except OSError as exc:
        log.warning(
            "could not record run %s for `macd-ml resume` (%s); to finish it after a failure use: "
            "prefect flow-run retry %s",
            run_id,
            exc,
            flow_run.get_id(),
        )
        return
    log.info("run id %s (resume with: macd-ml resume %s --out %s)", run_id, run_id, out)

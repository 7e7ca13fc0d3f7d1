"""Report task: PNG plots + report.md into the cache (published with the run), and the same content on the
Prefect UI as a markdown artifact and table artifacts; plus the run's outputs artifact, the one the flow run page
shows first.

Where they show: the flow run page's Artifacts tab lists the flow run's own artifacts first ("Flow run"), then
those of its task runs ("Task runs"), each list in the API's default order, by artifact id (random UUIDs: not the
order they were made in). So the outputs artifact is the flow run's only artifact of its own, updated in place
(a Retry of the same flow run rewrites it rather than adding a second one), and the report and its tables belong
to the task run of the report stage.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import polars as pl
from prefect.artifacts import MarkdownArtifact, TableArtifact

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_json, read_parquet, write_bytes
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.evaluation.metrics import Decision, Metrics
from macd_ml.models.evaluation.report import render_promotion, render_report
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.results import cached_task


def write_report(
    folder: Path,
    metrics: Metrics,
    oof: pl.DataFrame,
    holdout: pl.DataFrame,
    shipped: pl.DataFrame,
    importance: dict[str, dict],
    extra_plots: list[str] | None = None,
    predictors: dict | None = None,
    plots: bool = True,
) -> dict[str, ArtifactRef]:
    """Render the plots (unless ``plots`` is off) and report.md into ``folder`` through the store; returns
    relative path -> ref."""
    horizons = metrics.horizons
    meta = metrics.meta
    weights = {h: m.weights for h, m in meta.items() if m.weights}
    refs: dict[str, ArtifactRef] = {}
    with tempfile.TemporaryDirectory(prefix="macd-ml-plots-") as scratch:
        if not plots:
            rendered = {}
        else:
            from macd_ml.models.evaluation.plots import (
                render_plots,  # matplotlib + sklearn: only when a report is drawn
            )

            rendered = render_plots(
                Path(scratch),
                horizons=horizons,
                oof=oof,
                holdout=holdout,
                models=list(metrics.models),
                shipped={str(h): shipped[catalog.shipped_column(h)].to_numpy() for h in horizons},
                shipped_name={h: m.shipped for h, m in meta.items()},
                correlations={h: d.model_dump() for h, d in metrics.diversity.items()},
                importance=importance,
                meta_weights=weights or None,
                shipped_raw=uncalibrated(predictors, holdout),
            )
        # every artifact goes through the store (atomic, retried, clear errors), plots included
        for name, p in rendered.items():
            refs[f"plots/{name}"] = write_bytes(folder / "plots" / name, p.read_bytes())
    text = render_report(metrics, [*refs, *(extra_plots or [])], plots_drawn=plots)
    refs[catalog.REPORT] = write_bytes(folder / catalog.REPORT, text.encode())
    return refs


def uncalibrated(predictors: dict | None, holdout: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per horizon whose shipped predictor is calibrated: its holdout output before the calibration (``meta.json``
    document ``predictors``), for the calibration plot's before / after."""
    out = {}
    for h, doc in (predictors or {}).get("predictors", {}).items():
        pred = Predictor.from_json(doc)
        if pred.calibration.kind != "none":
            out[h] = pred.predict_raw(
                holdout.select([catalog.prediction_column(m, h) for m in pred.models]).to_numpy().astype(float)
            )
    return out


@cached_task(name="report")
def report_task(
    metrics: Metrics,
    tables: dict[str, ArtifactRef],
    stack_files: dict[str, ArtifactRef],
    importance: dict[str, ArtifactRef],
    out_dir: str,
    extra_plots: dict[str, ArtifactRef] | None = None,
    plots: bool = True,
) -> dict[str, ArtifactRef]:
    """``extra_plots``: PNGs drawn by other stages (the backtest's equity curve), linked from the report.
    ``plots``: the run's ``report.plots`` (off: report.md alone)."""
    return write_report(
        cache_dir(out_dir, "report", current_key()),
        metrics,
        read_parquet(tables[catalog.OOF]),
        read_parquet(tables[catalog.HOLDOUT_PREDICTIONS]),
        read_parquet(stack_files[catalog.SHIPPED_HOLDOUT]),
        {name: read_json(ref) for name, ref in importance.items()},
        [name for name in (extra_plots or {}) if name.endswith(".png")],
        read_json(stack_files[catalog.META]),
        plots,
    )


def embed_images(report_md: str, images: dict[str, bytes]) -> str:
    """The report with each ``![...](plots/x.png)`` link replaced by the PNG itself (a data URI): the UI serves
    no files, so a relative link is a broken image there."""
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        report_md = report_md.replace(f"]({name})", f"]({uri})")
    return report_md


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutputs:
    """Where a run's outputs are and what was decided, for its outputs artifact. ``status``: "promoted",
    "not promoted" (``why``: the health gate's refusal, or the champion moved), "failed" (``why``: the error;
    ``current`` did not move) or "nothing changed" (the current run is this run)."""

    target: str
    run_id: str
    status: str
    why: str
    run_folder: str | None
    report: str | None
    bundle: str | None
    home: str
    current: str | None


def outputs_key(target: str) -> str:
    return f"macd-ml-{target.lower()}-outputs"


def render_outputs(o: RunOutputs) -> str:
    """The outputs artifact: one table of paths (each in backticks), then the decision in one line."""

    def where(path: str | None, missing: str) -> str:
        return f"`{path}`" if path else missing

    current = f"`{Path(o.home) / 'current'}` → run {o.current}" if o.current else "none yet"
    bundle_missing = {"not promoted": "not written (not promoted)", "failed": "not written"}.get(o.status, "none")
    rows = [
        ("run folder", where(o.run_folder, "none")),
        ("report", where(o.report, "none")),
        ("bundle", where(o.bundle, bundle_missing)),
        ("current", current),
    ]
    after = {
        "promoted": f"promoted: {o.why}",
        "not promoted": f"not promoted: {o.why}",
        "failed": f"failed before its promotion; `current` did not move: {o.why}. Fix the cause, then Retry this "
        "flow run or start the same retrain again (every finished stage comes back Cached)",
        "nothing changed": f"nothing changed since run {o.current}, which is current: {o.why}",
    }[o.status]
    lines = [
        f"## {o.target} run {o.run_id}: {o.status}",
        "",
        "| output | where |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"**Promotion:** {after}",
        "",
    ]
    return "\n".join(lines)


def publish_outputs(o: RunOutputs) -> None:
    """The run's outputs artifact on its flow run: created, or updated in place when this flow run has one
    (a Retry), so it stays the flow run's only artifact of its own and the first its Artifacts tab shows. Never
    fails the run: a UI that cannot take it costs a warning."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.runtime import flow_run

    markdown, key = render_outputs(o), outputs_key(o.target)
    description = f"{o.target} run {o.run_id}: {o.status}"
    try:
        with get_client(sync_client=True) as client:
            here = flow_run.get_id()
            mine = (
                client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(here)])
                    )
                )
                if here
                else []
            )
            own = [a for a in mine if a.task_run_id is None]
            if own:
                client.update_artifact(own[0].id, ArtifactUpdate(data=markdown, description=description))
                return
        MarkdownArtifact(markdown=markdown, key=key, description=description).create(_sync=True)  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - the run's outputs are on disk either way; the log says where
        log.warning("could not publish the outputs artifact (%s); run folder %s", exc, o.run_folder)


def _task_run_of(result: Any) -> Any:
    """The id of the task run that returned ``result`` in this flow run (Prefect links each task's result to its
    state for its own dependency tracking), else None."""
    from prefect.utilities.engine import get_state_for_result

    try:
        found = get_state_for_result(result) if result is not None else None
    except Exception:  # noqa: BLE001 - a Prefect that tracks results otherwise: the flow run holds them
        return None
    return found[0].state_details.task_run_id if found else None


def publish_ui_artifacts(
    metrics: Metrics,
    report_md: str,
    decision: Decision | None = None,
    images: dict[str, bytes] | None = None,
    *,
    made_by: Any = None,
) -> None:
    """Markdown report (plots embedded) + metrics, health and promotion tables in the Prefect UI, on the task run
    that returned ``made_by`` (the report stage's result; the flow run when none). ``images``: the report's
    relative image paths -> PNG bytes. (The run's outputs artifact: :func:`publish_outputs`.)"""
    key = "macd-ml-" + metrics.target.lower()
    owner = _task_run_of(made_by)

    def markdown(text: str, **kw: Any) -> None:
        MarkdownArtifact(markdown=text, task_run_id=owner, **kw).create(_sync=True)  # type: ignore[call-arg]

    def table(rows: list, **kw: Any) -> None:
        TableArtifact(table=rows, task_run_id=owner, **kw).create(_sync=True)  # type: ignore[call-arg]

    report_md = embed_images(report_md, images or {})
    if decision is not None:
        report_md += render_promotion(decision)
    markdown(report_md, key=f"{key}-report", description=f"Run {metrics.run_id or ''}")
    if metrics.health is not None:
        table(
            [c.model_dump() for c in metrics.health.checks],
            key=f"{key}-health",
            description=f"Health gate: {'passed' if metrics.health.passed else 'REFUSED'}",
        )
    if decision is not None:
        table([decision.model_dump(mode="json")], key=f"{key}-promotion", description="Champion / challenger")
    rows = []
    for name, per_h in metrics.models.items():
        for h, m in per_h.items():
            rows.append({"model": name, "horizon": h, "oof_auc": _r(m.oof_auc), "test_auc": _r(m.test_auc)})
    for h, s in metrics.meta.items():
        rows.append(
            {"model": f"shipped ({s.shipped})", "horizon": h, "oof_auc": _r(s.val_auc), "test_auc": _r(s.test_auc)}
        )
    table(rows, key=f"{key}-auc", description="AUC per model and horizon (shipped: inner-CV AUC)")
    gaps = [
        {
            "horizon": h,
            "shipped": s.shipped,
            "val_auc": _r(s.val_auc),
            "test_auc": _r(s.test_auc),
            "gap_abs": _r(s.gap_abs),
            "gap_3se": _r(3 * s.gap_combined_se),
        }
        for h, s in metrics.meta.items()
    ]
    if gaps:
        table(gaps, key=f"{key}-overfit-gap", description="Validation -> test gap of what ships")


def _r(x):
    return None if x is None else round(float(x), 4)

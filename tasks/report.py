"""Report task: PNG plots + report.md into the cache (published with the run), and the same content on the
Prefect UI as a markdown artifact and table artifacts on the flow run."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact

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


def publish_ui_artifacts(
    metrics: Metrics, report_md: str, decision: Decision | None = None, images: dict[str, bytes] | None = None
) -> None:
    """Markdown report (plots embedded) + metrics, health and promotion tables on the flow run page of the
    Prefect UI. ``images``: the report's relative image paths -> PNG bytes."""
    key = "macd-ml-" + metrics.target.lower()
    report_md = embed_images(report_md, images or {})
    if decision is not None:
        report_md += render_promotion(decision)
    create_markdown_artifact(report_md, key=f"{key}-report", description=f"Run {metrics.run_id or ''}")
    if metrics.health is not None:
        create_table_artifact(
            [c.model_dump() for c in metrics.health.checks],
            key=f"{key}-health",
            description=f"Health gate: {'passed' if metrics.health.passed else 'REFUSED'}",
        )
    if decision is not None:
        create_table_artifact(
            [decision.model_dump(mode="json")], key=f"{key}-promotion", description="Champion / challenger"
        )
    rows = []
    for name, per_h in metrics.models.items():
        for h, m in per_h.items():
            rows.append({"model": name, "horizon": h, "oof_auc": _r(m.oof_auc), "test_auc": _r(m.test_auc)})
    for h, s in metrics.meta.items():
        rows.append(
            {"model": f"shipped ({s.shipped})", "horizon": h, "oof_auc": _r(s.val_auc), "test_auc": _r(s.test_auc)}
        )
    create_table_artifact(rows, key=f"{key}-auc", description="AUC per model and horizon (shipped: inner-CV AUC)")
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
        create_table_artifact(gaps, key=f"{key}-overfit-gap", description="Validation -> test gap of what ships")


def _r(x):
    return None if x is None else round(float(x), 4)

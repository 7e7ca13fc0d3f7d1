"""Stages as Prefect flows, so a failed stage is redone from the UI against an existing run (no retraining):
``export-onnx`` writes the ONNX files and parity again into a new folder; ``health`` runs the gate and fails the
flow run when it refuses. Deployments for both are in prefect.yaml."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from macd_ml.features.errors import PromotionRefused
from macd_ml.flows import logs
from macd_ml.flows.stages import run_export, run_health


@flow(name="export-onnx", log_prints=False)
def export_onnx_flow(run_dir: str, out_dir: str) -> dict:
    """Export the published run ``run_dir`` to ONNX again, into ``out_dir`` (runs are immutable)."""
    logs.install()
    parity = run_export(Path(run_dir), Path(out_dir))
    get_run_logger().info("parity %s; ONNX files in %s", "passed" if parity["passed"] else "FAILED", out_dir)
    return parity


@flow(name="health", log_prints=False)
def health_flow(run_dir: str, data_dir: str | None = None, skip_live_check: bool = False) -> dict:
    """Run the health gate on the published run ``run_dir``; the flow run fails when the gate refuses."""
    logs.install()
    report = run_health(Path(run_dir), data_dir, live=not skip_live_check)
    log = get_run_logger()
    for line in report.table().splitlines():
        log.info(line)
    if not report.passed:
        raise PromotionRefused("health gate refused: " + ", ".join(c.name for c in report.failures()))
    return report.model_dump(mode="json")

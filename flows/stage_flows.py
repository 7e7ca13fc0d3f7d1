"""Stages as Prefect flows, so a stage is redone from the UI against an existing run (no retraining):
``export-onnx`` writes the ONNX files and parity again into a new folder; ``health`` runs the gate and fails the
flow run when it refuses; ``bundle`` packs a run for the bot; ``publish`` puts a bundle where the bot fetches it.
Deployments for each are in prefect.yaml; relative paths are under the worker's home (MACD_ML_HOME)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow, get_run_logger

from macd_ml.errors import PromotionRefused
from macd_ml.flows import logs
from macd_ml.flows.rerun import run_export, run_health


@flow(name="export-onnx", log_prints=False)
def export_onnx_flow(run_dir: str, out_dir: str) -> dict:
    """Export a published run's models to ONNX again (parity on its holdout), into a new folder.

    Args:
        run_dir: the run folder (OUT/runs/RUN_ID, or OUT/current).
        out_dir: a new folder for the ONNX files and parity.json (runs are immutable).
    """
    logs.install()
    parity = run_export(Path(run_dir), Path(out_dir))
    get_run_logger().info("parity %s; ONNX files in %s", "passed" if parity["passed"] else "FAILED", out_dir)
    return parity


@flow(name="health", log_prints=False)
def health_flow(run_dir: str, data_dir: str = "", skip_live_check: bool = False) -> dict:
    """Run the health gate on a published run; the flow run fails when the gate refuses.

    Args:
        run_dir: the run folder (OUT/runs/RUN_ID, or OUT/current).
        data_dir: candle folder for the live check; empty = the folder the run trained on.
        skip_live_check: skip scoring the newest candles through ensemble.onnx in a fresh process.
    """
    logs.install()
    report = run_health(Path(run_dir), data_dir or None, live=not skip_live_check)
    log = get_run_logger()
    for line in report.table().splitlines():
        log.info(line)
    if not report.passed:
        raise PromotionRefused("health gate refused: " + ", ".join(c.name for c in report.failures()))
    return report.model_dump(mode="json")


@flow(name="bundle", log_prints=False)
def bundle_flow(run_dir: str, out_file: str = "") -> dict:
    """Pack a published run for the bot (reproducible tar.gz, verified when opened).

    Args:
        run_dir: the run folder (OUT/runs/RUN_ID, or OUT/current).
        out_file: where to write it; empty = OUT/bundles/RUN_ID.tar.gz beside the run's OUT/runs.
    """
    from macd_ml.serving.bundle import save_bundle

    logs.install()
    ref = save_bundle(Path(run_dir).resolve(), out_file or None)
    get_run_logger().info("bundle %s (%d bytes, sha256 %s)", ref.path, ref.bytes, ref.sha256)
    return {"bundle": ref.path, "bytes": ref.bytes, "sha256": ref.sha256}


@flow(name="publish", log_prints=False)
def publish_flow(bundle_file: str, dest: str, keep: int = 5) -> dict:
    """Publish a bundle where the bot fetches it: written under a temporary name, then LATEST is switched.

    Args:
        bundle_file: the bundle (OUT/bundles/RUN_ID.tar.gz).
        dest: a folder or an fsspec URL (s3://..., gs://...) the bot reads LATEST from.
        keep: how many published bundles to keep.
    """
    from macd_ml.serving.publish import publish

    logs.install()
    data = Path(bundle_file).read_bytes()
    pointer = publish(data, dest, keep=keep)
    get_run_logger().info(
        "%s/LATEST -> %s (run %s, sha256 %s)",
        dest,
        pointer["bundle"],
        pointer["run_id"],
        hashlib.sha256(data).hexdigest()[:12],
    )
    return pointer

"""Export task: every base model, the shipped predictor and ``ensemble.onnx`` to ONNX, with parity on the
holdout (models/release/export.py), into the content-addressed cache; published with the run under ``onnx/``."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, cache_dir, read_parquet, verify, write_bytes, write_json
from macd_ml.models.ensemble.predictor import load_predictors
from macd_ml.models.learners.registry import load_model
from macd_ml.models.release.export import export_run
from macd_ml.tasks.policy import current_key
from macd_ml.tasks.refs import RefitOutput, TableRef
from macd_ml.tasks.results import cached_task, result_type

log = logging.getLogger(__name__)


@result_type
class ExportResult(BaseModel):
    files: dict[str, ArtifactRef]  # onnx/*.onnx and parity.json
    parity: dict


def model_folder(files: dict[str, ArtifactRef]) -> Path:
    """The folder a model's (verified) files live in."""
    folders = {verify(ref).parent for ref in files.values()}
    if len(folders) != 1:
        raise ValueError(f"model files are spread over {len(folders)} folders")
    return folders.pop()


@cached_task(name="export-onnx")
def export_task(
    features: TableRef,
    refits: list[RefitOutput],
    tables: dict[str, ArtifactRef],
    stack_files: dict[str, ArtifactRef],
    horizons: list[int],
    gap_tolerance_hours: int,
    out_dir: str,
) -> ExportResult:
    models = {r.model: load_model(r.model, model_folder(r.files)) for r in refits}
    exported = export_run(
        models,
        load_predictors(verify(stack_files[catalog.META])),
        read_parquet(features.data),
        features.names,
        horizons,
        gap_tolerance_hours,
        read_parquet(tables[catalog.HOLDOUT_PREDICTIONS]),
        read_parquet(stack_files[catalog.SHIPPED_HOLDOUT]),
    )
    files = write_export(cache_dir(out_dir, "onnx", current_key()), exported.files, exported.parity)
    log.info(
        "ONNX export on %s: parity %s (ensemble max |onnx - native| %.2g)",
        exported.parity["provider"],
        "passed" if exported.parity["passed"] else "FAILED",
        exported.parity["ensemble"]["max_abs"],
    )
    return ExportResult(files=files, parity=exported.parity)


def write_export(folder: Path, graphs: dict[str, bytes], parity: dict) -> dict[str, ArtifactRef]:
    """The export stage's files, ``onnx/*.onnx`` and ``parity.json`` (the stage and ``macd-ml export`` alike)."""
    files = {rel: write_bytes(folder / rel, data) for rel, data in graphs.items()}
    files[catalog.PARITY] = write_json(folder / catalog.PARITY, parity)
    return files

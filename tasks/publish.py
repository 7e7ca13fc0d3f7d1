"""Publishing a run: copy cached artifacts into ``OUT/runs/RUN_ID/``, write documents, manifest last."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.serializers import JSONSerializer

from tasks.policy import RETRY_DELAYS, RETRY_JITTER, WRITE_RETRIES, content_key, retry_on_oserror
from tasks.store import (
    MANIFEST, ArtifactRef, copy_file, promote, ref_for, run_dir, verify_run, write_json, write_manifest,
)


class RunAlreadyComplete(RuntimeError):
    """A run folder with a manifest is immutable."""


def _publish_key(context, parameters: dict) -> str:
    """Same content -> same key, whatever the run id: an unchanged re-run reuses the earlier run folder."""
    return content_key("publish")(context, {k: v for k, v in parameters.items() if k != "run_id"})


@task(
    name="publish-run",
    cache_key_fn=_publish_key,
    persist_result=True,
    result_serializer=JSONSerializer(),
    retries=WRITE_RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_on_oserror,
)
def publish_run_task(
    out_dir: str, run_id: str, artifacts: dict[str, ArtifactRef], documents: dict[str, dict]
) -> ArtifactRef:
    """Copy ``artifacts`` (relative path -> cached artifact), write ``documents`` (relative path -> JSON) into the run
    folder, then ``manifest.json``. Files already there from an interrupted attempt are
    overwritten atomically; a folder that already has a manifest is never touched."""
    run = run_dir(out_dir, run_id)
    if (run / MANIFEST).exists():
        verify_run(run)
        return ref_for(run / MANIFEST)
    written: dict[str, ArtifactRef] = {}
    if "metrics.json" in documents:
        documents = {**documents, "metrics.json": {"run_id": run_id, **documents["metrics.json"]}}
    for rel, ref in artifacts.items():
        written[rel] = copy_file(ref, run / rel)
    for rel, doc in documents.items():
        written[rel] = write_json(run / rel, doc)
    manifest = write_manifest(run, written)
    get_run_logger().info("run %s published: %d artifacts in %s", run_id, len(written), run)
    return manifest


def run_record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "cache" / "run-configs" / f"{run_id}.json"


def record_run(out_dir: str | Path, run_id: str, config: dict) -> ArtifactRef:
    """Remember a run's validated config outside the (immutable) run folder, so ``macd-ml resume RUN_ID``
    can finish it later under the same id. (Runs started from the UI resume with Prefect's Retry.)"""
    return write_json(run_record_path(out_dir, run_id), {"run_id": run_id, "config": config})


@task(name="promote", cache_key_fn=content_key("promote"), persist_result=True, result_serializer=JSONSerializer(),
      retries=WRITE_RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=RETRY_JITTER,
      retry_condition_fn=retry_on_oserror)
def promote_task(out_dir: str, manifest: ArtifactRef) -> str:
    """Move ``OUT/current`` to the published run, atomically and under a lock. Reached only when every stage
    finished and metrics.json is written (the health gate plugs in here). Returns the run id."""
    run = Path(manifest.path).parent
    promote(out_dir, run.name)
    get_run_logger().info("promoted %s to %s/current", run.name, out_dir)
    return run.name

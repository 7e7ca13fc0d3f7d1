"""Publishing a run: copy cached artifacts into ``OUT/runs/RUN_ID/``, write documents, manifest last."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.serializers import JSONSerializer

from tasks.policy import RETRY_DELAYS, RETRY_JITTER, WRITE_RETRIES, content_key, retry_on_oserror
from tasks.store import (
    MANIFEST, ArtifactRef, copy_file, ref_for, run_dir, verify_run, write_bytes, write_json, write_manifest,
)


class RunAlreadyComplete(RuntimeError):
    """A run folder with a manifest is immutable."""


@task(
    name="publish-run",
    cache_key_fn=content_key("publish"),
    persist_result=True,
    result_serializer=JSONSerializer(),
    retries=WRITE_RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_on_oserror,
)
def publish_run_task(
    out_dir: str, run_id: str, artifacts: dict[str, ArtifactRef], documents: dict[str, dict],
    texts: dict[str, str] | None = None,
) -> ArtifactRef:
    """Copy ``artifacts`` (relative path -> cached artifact), write ``documents`` (relative path -> JSON) and
    ``texts`` (relative path -> text) into the run folder, then ``manifest.json``. Files already there from an interrupted attempt are
    overwritten atomically; a folder that already has a manifest is never touched."""
    run = run_dir(out_dir, run_id)
    if (run / MANIFEST).exists():
        verify_run(run)
        return ref_for(run / MANIFEST)
    written: dict[str, ArtifactRef] = {}
    for rel, ref in artifacts.items():
        written[rel] = copy_file(ref, run / rel)
    for rel, doc in documents.items():
        written[rel] = write_json(run / rel, doc)
    for rel, text in (texts or {}).items():
        written[rel] = write_bytes(run / rel, text.encode())
    manifest = write_manifest(run, written)
    get_run_logger().info("run %s published: %d artifacts in %s", run_id, len(written), run)
    return manifest


def run_path(out_dir: str, run_id: str) -> Path:
    return run_dir(out_dir, run_id)

"""Publishing a run: copy cached artifacts into ``OUT/runs/RUN_ID/`` (built in a staging folder, signed manifest
last, renamed into place), promote it, and remember each run's config so ``macd-ml resume`` can finish it."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from macd_ml.artifacts import catalog
from macd_ml.artifacts.signing import sign, verify_signature
from macd_ml.artifacts.store import (
    ArtifactRef,
    ChampionMoved,
    IntegrityError,
    RunRef,
    copy_file,
    promote,
    publish_run,
    read_manifest,
    read_text,
    validate_run_id,
    write_bytes,
    write_json,
)
from macd_ml.errors import PromotionRefused
from macd_ml.models.evaluation.metrics import Decision
from macd_ml.models.evaluation.report import render_promotion
from macd_ml.tasks.policy import RETRY_DELAYS, RETRY_JITTER, WRITE_RETRIES, ContentKey, retry_on_oserror
from macd_ml.tasks.results import cached_task

log = logging.getLogger(__name__)


# Content only: not the run id (an unchanged re-run reuses the earlier, identical run folder) and not the
# wall-clock timings (a forced recompute of the same content publishes no duplicate).
@cached_task(name="publish-run", cache_policy=ContentKey(exclude=("run_id", "timings", "promotion")))
def publish_run_task(
    out_dir: str,
    run_id: str,
    artifacts: dict[str, ArtifactRef],
    documents: dict[str, dict],
    timings: dict | None = None,
    promotion: dict | None = None,
) -> RunRef:
    """Copy ``artifacts`` (relative path -> cached artifact) and write ``documents`` (relative path -> JSON) into
    the run folder, manifest last. The folder appears under its final name only when complete; a folder that
    already holds this run id complete is returned untouched (runs are immutable).

    The cache record of this task is a :class:`~macd_ml.artifacts.store.RunRef`: before it is reused, the run
    folder it names is verified, so a damaged or deleted run is published again instead of being served."""
    if catalog.METRICS in documents:
        documents = {**documents, catalog.METRICS: {**documents[catalog.METRICS], "run_id": run_id}}
    if timings is not None:
        documents = {**documents, catalog.TIMINGS: timings}
    if promotion is not None:
        documents = {**documents, catalog.PROMOTION: promotion}

    def fill(folder: Path) -> dict[str, ArtifactRef]:
        written = {rel: copy_file(ref, folder / rel) for rel, ref in artifacts.items() if rel != catalog.REPORT}
        if catalog.REPORT in artifacts:  # the report, with the promotion decision made for this run at the end
            text = read_text(artifacts[catalog.REPORT])
            if promotion is not None:
                text += render_promotion(Decision.model_validate(promotion))
            written[catalog.REPORT] = write_bytes(folder / catalog.REPORT, text.encode())
        written.update({rel: write_json(folder / rel, doc) for rel, doc in documents.items()})
        return written

    ref = publish_run(out_dir, run_id, fill)
    log.info("run %s published: %d artifacts in %s", ref.run_id, len(read_manifest(ref.path)["artifacts"]), ref.path)
    return ref


@task(
    name="promote",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=WRITE_RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_on_oserror,
)
def promote_task(out_dir: str, run: RunRef, champion: str | None) -> str:
    """Move ``OUT/current`` to the published run (verified again, under a lock), if ``current`` is still the
    ``champion`` it was compared with. Never cached: after every successful run ``current`` points at the run it
    returned, even when an earlier run was promoted since; a run that lost that race is refused (exit 3). The same
    retrain started again reuses every stage from the cache, returns this run folder and compares it with the new
    champion."""
    try:
        promote(out_dir, run.run_id, champion=champion)
    except ChampionMoved as exc:
        raise PromotionRefused(
            f"run {run.run_id} published but not promoted ({run.path}): {exc}; to compare it with the new "
            "champion, start the same retrain again (every finished stage comes from the cache)",
            run=run.path,
        ) from None
    log.info("promoted %s to %s/current", run.run_id, out_dir)
    return run.run_id


# --------------------------------------------------------------------------------------------- run records

_RECORD_PURPOSE = "run-record"


def run_record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "cache" / "run-configs" / f"{validate_run_id(run_id)}.json"


def record_run(out_dir: str | Path, run_id: str, config: dict) -> ArtifactRef:
    """Remember a run's validated config (signed) outside the immutable run folder, so ``macd-ml resume RUN_ID``
    can finish any run the flow started: from the CLI, the UI or a schedule."""
    body = {"run_id": run_id, "config": config}
    return write_json(run_record_path(out_dir, run_id), {**body, "signature": _record_signature(run_id, body)})


def _record_signature(run_id: str, body: dict) -> str:
    import json

    return sign(_RECORD_PURPOSE, run_id, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def read_run_record(out_dir: str | Path, run_id: str) -> dict:
    """The config a run was started with; IntegrityError if the record was changed on disk."""
    import json

    path = run_record_path(out_dir, run_id)
    try:
        doc = json.loads(path.read_text())
        body = {"run_id": doc["run_id"], "config": doc["config"]}
        ok = doc["run_id"] == run_id and verify_signature(
            _RECORD_PURPOSE,
            run_id,
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
            doc.get("signature", ""),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: unreadable run record ({exc})") from None
    if not ok:
        raise IntegrityError(f"{path}: run record signature missing or wrong; refusing to resume from it")
    return doc["config"]

"""Nothing changed, nothing paid: recognise a run that would reproduce the promoted one exactly, before
any server, task or training library starts, and answer with that run.

What a run publishes is decided by its config (as published: without where tasks ran or ``--force``), the
project's code (the code version of the flow and every project module it imports: the same derivation as the
task cache keys, never hand-bumped) and the candle files in its data folder. Their digest is the run's
*fingerprint*; it is recorded, signed, when a run is promoted. A later run with the same fingerprint, while that
run is still ``current`` and still verifies against its signed manifest (every file's sha256), has nothing to
do: ``macd-ml retrain`` prints the run and exits 0 without starting Prefect, and the nightly deployment
(``skip_unchanged``) ends its flow run after this one check. Anything else (no record, another champion, a
tampered or missing file, ``--force``, no explicit data folder) runs the flow as before, where every unchanged
task comes back Cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from macd_ml.artifacts.codehash import code_version
from macd_ml.artifacts.signing import sign, verify_signature
from macd_ml.artifacts.store import IntegrityError, current_run, run_dir, sha256_file, verify_run, write_json
from macd_ml.features.ingest import symbol_files
from macd_ml.flows.config import RetrainConfig

RECORDS = ("cache", "unchanged")
PURPOSE = "unchanged-run"
FLOW_MODULE = "macd_ml.flows.retrain"


def published_config(config: RetrainConfig) -> dict[str, Any]:
    """The config as a run publishes it (``config.json``): where the tasks (scale) or children (fan_out) ran and
    --force are not content, so a run that differs only in them publishes nothing new."""
    return config.model_dump(
        mode="json", exclude={"force": True, "scale": True, "fan_out": True, "promotion": {"force"}}
    )


def fingerprint(config: RetrainConfig) -> str | None:
    """Digest of the config, the code and every candle file of the data folder; None when the run has no
    explicit data folder (the synthetic market or a Prefect Variable, resolved inside the flow)."""
    if not config.data_dir:
        return None
    files = symbol_files(Path(config.data_dir))
    body = {
        "config": published_config(config),
        "code": code_version(FLOW_MODULE),
        "candles": {symbol: sha256_file(path) for symbol, path in sorted(files.items())},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _record_path(out_dir: Path | str, fp: str) -> Path:
    return Path(out_dir).joinpath(*RECORDS, f"{fp}.json")


def remember(out_dir: Path | str, fp: str | None, run_id: str) -> None:
    """After a promotion: run ``run_id`` is what this fingerprint produces."""
    if fp is None:
        return
    body = json.dumps({"fingerprint": fp, "run_id": run_id}, sort_keys=True)
    write_json(_record_path(out_dir, fp), {"record": body, "signature": sign(PURPOSE, fp, body.encode())})


def unchanged_run(out_dir: Path | str, fp: str | None) -> Path | None:
    """The current run's folder if it is what ``fp`` produces and verifies; else None (the flow runs)."""
    if fp is None:
        return None
    path = _record_path(out_dir, fp)
    try:
        doc = json.loads(path.read_text())
        body = doc["record"]
        if not verify_signature(PURPOSE, fp, body.encode(), doc["signature"]):
            return None
        run_id = json.loads(body)["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if current_run(out_dir) != run_id:
        return None
    folder = run_dir(out_dir, run_id)
    try:
        verify_run(folder)
    except (IntegrityError, OSError):
        return None
    return folder

"""Signed records of stored frames: a folder holding a parquet and ``record.json``, written last, that names the
parquet's sha256 and carries an HMAC (the cache's key, artifacts/signing.py) over its content. A record that does
not verify, or a parquet that does not match it, is not used (and the reason is logged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from macd_ml.artifacts.signing import sign, verify_signature
from macd_ml.artifacts.store import ArtifactRef, IntegrityError, read_parquet, write_bytes, write_parquet

log = logging.getLogger(__name__)
RECORD = "record.json"


def _record_body(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def load_signed(folder: Path, purpose: str) -> dict | None:
    """The doc of ``folder``'s signed record, or None when absent or failing its signature (logged)."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        signed = json.loads(path.read_bytes())
        doc, signature = signed["doc"], signed["signature"]
        if not verify_signature(purpose, folder.name, _record_body(doc), signature):
            raise IntegrityError(f"{path}: signature does not verify")
        return doc
    except (OSError, ValueError, KeyError, TypeError, IntegrityError) as exc:
        log.warning("stored %s %s not used (%s); computing it again", purpose, folder, exc)
        return None


def save_signed(folder: Path, purpose: str, doc: dict) -> None:
    """Write ``doc`` as ``folder``'s signed record (HMAC over the purpose, the folder's name and the doc)."""
    body = _record_body(doc)
    write_bytes(folder / RECORD, json.dumps({"doc": doc, "signature": sign(purpose, folder.name, body)}).encode())


def load_record(folder: Path, purpose: str) -> tuple[dict, pl.DataFrame] | None:
    """The stored doc and frame of ``folder``, or None when absent or failing its checks (logged)."""
    doc = load_signed(folder, purpose)
    if doc is None:
        return None
    try:
        return doc, read_parquet(ArtifactRef.model_validate(doc["file"]))  # checks the parquet's sha256
    except (OSError, ValueError, KeyError, TypeError, IntegrityError) as exc:
        log.warning("stored %s %s not used (%s); computing it again", purpose, folder, exc)
        return None


def save_record(folder: Path, purpose: str, name: str, frame: pl.DataFrame, doc: dict) -> ArtifactRef:
    """Write ``frame`` as ``folder/name``, then its signed record; returns the parquet's reference."""
    ref = write_parquet(folder / name, frame)
    save_signed(folder, purpose, {**doc, "file": ref.model_dump(mode="json")})
    return ref

"""Publishing bundles where bots fetch them, and rolling back (a folder or any fsspec URL: s3://, gs://, memory://).

Layout under DEST::

    bundles/RUN_ID-SHA12.tar.gz     complete bundles, written under a temporary name and then moved into place
    LATEST                          {"bundle": "bundles/....tar.gz", "sha256": ..., "run_id": ..., "published_at": ...,
                                     "history": [earlier entries, newest first]}

A bot reads ``LATEST`` and then the bundle it names. The pointer is switched in one write of a small file (a
rename on a local disk, a single object PUT on an object store) only after the bundle is complete, so a reader
sees the old bundle or the new one, never a partial one; it can also check the bundle's sha256 against LATEST.
``keep`` bundles are kept (the current one and the newest earlier ones); ``rollback`` moves the pointer back to
the previous entry of the history.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from macd_ml.serving.bundle import BundleError, read_bundle

POINTER = "LATEST"


def _fs(dest: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(dest)
    return fs, root.rstrip("/")


def _write_small(fs, path: str, data: bytes) -> None:
    """One complete small file: temp name beside it, then a rename (local) or a single put (object stores)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        from macd_ml.artifacts.store import write_bytes

        write_bytes(path, data)
    else:
        fs.pipe_file(path, data)


def read_pointer(dest: str) -> dict | None:
    fs, root = _fs(dest)
    path = f"{root}/{POINTER}"
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except ValueError as exc:
        raise BundleError(f"{dest}/{POINTER}: not a pointer file ({exc})") from None


def publish(bundle_bytes: bytes, dest: str, keep: int = 5) -> dict:
    """Put a verified bundle under DEST and point LATEST at it; returns the new pointer."""
    bundle = read_bundle(bundle_bytes, "bundle", signed=True)  # only a bundle that verifies is ever published
    if keep < 1:
        raise ValueError("keep must be at least 1")
    fs, root = _fs(dest)
    fs.makedirs(f"{root}/bundles", exist_ok=True)
    sha = hashlib.sha256(bundle_bytes).hexdigest()
    rel = f"bundles/{bundle.run_id}-{sha[:12]}.tar.gz"
    target = f"{root}/{rel}"
    if not fs.exists(target):
        tmp = f"{root}/bundles/.{uuid.uuid4().hex}.partial"
        fs.pipe_file(tmp, bundle_bytes)
        fs.mv(tmp, target)
    old = read_pointer(dest)
    history = []
    if old is not None:
        history = [{k: v for k, v in old.items() if k != "history"}] + old.get("history", [])
    history = [h for h in history if h.get("bundle") != rel]
    pointer = {
        "bundle": rel,
        "sha256": sha,
        "run_id": bundle.run_id,
        "published_at": datetime.now(timezone.utc).isoformat(),
        "history": history[: max(0, keep - 1)],
    }
    _write_small(fs, f"{root}/{POINTER}", (json.dumps(pointer, indent=2) + "\n").encode())
    _prune(fs, root, pointer)
    return pointer


def rollback(dest: str) -> dict:
    """Point LATEST at the previous bundle; the one rolled back from is recorded under ``rolled_back_from`` (and is
    pruned by the next publish unless it is published again)."""
    fs, root = _fs(dest)
    old = read_pointer(dest)
    if old is None or not old.get("history"):
        raise BundleError(f"{dest}: no earlier bundle to roll back to")
    previous, *rest = old["history"]
    if not fs.exists(f"{root}/{previous['bundle']}"):
        raise BundleError(f"{dest}: the previous bundle {previous['bundle']} is gone")
    pointer = {
        **previous,
        "rolled_back_at": datetime.now(timezone.utc).isoformat(),
        "history": rest,
        "rolled_back_from": {k: v for k, v in old.items() if k != "history"},
    }
    _write_small(fs, f"{root}/{POINTER}", (json.dumps(pointer, indent=2) + "\n").encode())
    return pointer


def fetch_latest(dest: str) -> bytes:
    """What a bot does: read LATEST, then the bundle it names, and check its sha256.

    A publish between the two reads can prune the bundle the old pointer named; then the pointer has moved, and
    reading it again gives the new bundle."""
    fs, root = _fs(dest)
    for attempt in range(3):
        pointer = read_pointer(dest)
        if pointer is None:
            raise BundleError(f"{dest}: nothing published yet")
        try:
            data = fs.cat_file(f"{root}/{pointer['bundle']}")
        except FileNotFoundError:
            if attempt == 2 or read_pointer(dest) == pointer:
                raise BundleError(f"{dest}: LATEST names {pointer['bundle']}, which is missing") from None
            continue
        if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
            raise BundleError(f"{dest}/{pointer['bundle']}: does not match the sha256 in {POINTER}")
        return data
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _prune(fs, root: str, pointer: dict) -> None:
    keep = {pointer["bundle"], *(h["bundle"] for h in pointer.get("history", []))}
    for path in fs.ls(f"{root}/bundles", detail=False):
        name = "bundles/" + Path(path).name
        if name.endswith(".tar.gz") and name not in keep:
            fs.rm(path)

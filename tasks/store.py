"""The one place that writes artifacts (DESIGN.md §3, §5).

- Every file is written to a temp file *in its destination folder*, fsynced, then ``os.replace``d, so a reader
  sees the old file or the new one, never half of one; on failure the temp file is removed.
- Runs are immutable: ``OUT/runs/RUN_ID/`` is written once and ``manifest.json`` (path, bytes, sha256 of every
  artifact) is written last. Loading through :func:`verify` checks the sha256.
- Training outputs live first in a content-addressed cache (``OUT/cache/STAGE/KEY/``), keyed like the Prefect
  cache, and are then copied into the run folder, so a failed run-folder write never costs a recompute.
- A write that fails with an OSError raises :class:`ArtifactWriteError` (still an OSError, so task retries
  apply) whose message names the path, its owner and mode, and what to do.

No pickle anywhere: JSON, parquet, and the models' own text/JSON/safetensors formats.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import io
import json
import os
import pwd
import random
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

MANIFEST = "manifest.json"


class ArtifactRef(BaseModel):
    """A reference to one written file: what tasks pass around instead of the data itself."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    bytes: int


class IntegrityError(RuntimeError):
    """An artifact's bytes do not match the sha256 recorded for it."""


class ArtifactWriteError(OSError):
    """A write failed; the message says where, who owns it and how to fix it."""


# --------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ref_for(path: Path | str) -> ArtifactRef:
    p = Path(path)
    return ArtifactRef(path=str(p.resolve()), sha256=sha256_file(p), bytes=p.stat().st_size)


def verify(ref: ArtifactRef) -> Path:
    """Return the path if its content still matches the recorded sha256, else raise IntegrityError."""
    p = Path(ref.path)
    if not p.is_file():
        raise IntegrityError(f"{p}: artifact is missing")
    actual = sha256_file(p)
    if actual != ref.sha256:
        raise IntegrityError(f"{p}: sha256 mismatch (expected {ref.sha256[:12]}…, found {actual[:12]}…); refusing to load")
    return p


# --------------------------------------------------------------------------------------------- writing


def _describe(path: Path) -> str:
    """Owner and mode of the path, or of its nearest existing parent, for error messages."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = p.stat()
    except OSError:
        return f"{p} (cannot stat)"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{p} is owned by {owner}:{group} with mode {stat.filemode(st.st_mode)}"


def _write_error(dest: Path, exc: OSError) -> ArtifactWriteError:
    whoami = pwd.getpwuid(os.geteuid()).pw_name if hasattr(os, "geteuid") else "this user"
    if exc.errno in (errno.EACCES, errno.EPERM):
        fix = f"give {whoami} write access to that folder (chown/chmod), or point --out somewhere writable"
    elif exc.errno == errno.EROFS:
        fix = "the file system is read-only; point --out at a writable folder"
    elif exc.errno == errno.ENOSPC:
        fix = "the disk is full; free space, then resume the run"
    else:
        fix = "fix the cause, then resume the run (finished work is cached)"
    err = ArtifactWriteError(
        exc.errno or errno.EIO,
        f"cannot write {dest}: {exc.strerror or exc}; {_describe(dest)}; {fix}",
    )
    return err


WRITE_ATTEMPTS = 3
# Called as hook(dest, attempt, error) after a failed attempt, before the back-off sleep (fault-injection tests
# use it to lift a real permission block between attempts).
RETRY_HOOKS: list[Callable[[Path, int, OSError], None]] = []


def _backoff(attempt: int) -> float:
    """Exponential back-off with jitter; ``MACD_ML_WRITE_RETRY_BASE`` seconds (default 0.5) for the first."""
    base = float(os.environ.get("MACD_ML_WRITE_RETRY_BASE", "0.5"))
    return base * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def atomic_write(dest: Path | str, writer: Callable[[Path], None], attempts: int = WRITE_ATTEMPTS) -> ArtifactRef:
    """Write ``dest`` atomically: ``writer(tmp)`` fills a temp file beside it, then fsync + os.replace.

    An OSError is retried here (``attempts`` in all, exponential back-off with jitter) so that a task whose
    result is already computed - a trained model - does not recompute it for a transient write failure. The
    last failure raises ArtifactWriteError (an OSError: Prefect's task retries then apply)."""
    dest = Path(dest)
    for attempt in range(1, attempts + 1):
        try:
            return _atomic_write_once(dest, writer)
        except ArtifactWriteError as err:
            if attempt == attempts:
                raise
            for hook in list(RETRY_HOOKS):
                hook(dest, attempt, err)
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def _atomic_write_once(dest: Path, writer: Callable[[Path], None]) -> ArtifactRef:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, ArtifactWriteError):
            raise
        raise _write_error(dest, exc) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return ref_for(dest)


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(dest: Path | str, data: bytes) -> ArtifactRef:
    return atomic_write(dest, lambda tmp: tmp.write_bytes(data))


def write_json(dest: Path | str, obj: Any) -> ArtifactRef:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_bytes(dest, text.encode())


def write_parquet(dest: Path | str, df: pl.DataFrame) -> ArtifactRef:
    """Serialise in memory, then write the bytes: polars reports a full disk as a ComputeError, not an
    OSError, so letting it write the file would bypass the retries and the clear message."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return write_bytes(dest, buf.getvalue())


def copy_file(src: ArtifactRef, dest: Path | str) -> ArtifactRef:
    """Copy a verified artifact to ``dest`` atomically; the copy's sha256 must equal the source's."""
    verify(src)
    ref = atomic_write(dest, lambda tmp: shutil.copyfile(src.path, tmp))
    if ref.sha256 != src.sha256:
        raise IntegrityError(f"{dest}: copy does not match its source {src.path}")
    return ref


def read_json(ref_or_path: ArtifactRef | Path | str) -> Any:
    p = verify(ref_or_path) if isinstance(ref_or_path, ArtifactRef) else Path(ref_or_path)
    return json.loads(p.read_text())


def read_text(ref: ArtifactRef) -> str:
    return verify(ref).read_text()


def read_parquet(ref: ArtifactRef) -> pl.DataFrame:
    return pl.read_parquet(verify(ref))


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------- layout


def new_run_id(suffix: str | None = None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{(suffix or uuid.uuid4().hex)[:8]}"


def cache_dir(out_dir: Path | str, stage: str, key: str) -> Path:
    return Path(out_dir) / "cache" / stage / key[:32]


def run_dir(out_dir: Path | str, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def write_manifest(run_path: Path, artifacts: dict[str, ArtifactRef], extra: dict | None = None) -> ArtifactRef:
    """Write ``manifest.json`` last: every artifact with relative path, bytes and sha256."""
    entries = []
    for rel, ref in sorted(artifacts.items()):
        p = run_path / rel
        if Path(ref.path).resolve() != p.resolve():
            raise ValueError(f"manifest entry {rel} points outside the run folder: {ref.path}")
        entries.append({"path": rel, "bytes": ref.bytes, "sha256": ref.sha256})
    body = {"run_id": run_path.name, "written_at": datetime.now(timezone.utc).isoformat(), "artifacts": entries}
    body.update(extra or {})
    return write_json(run_path / MANIFEST, body)


def verify_run(run_path: Path | str) -> dict:
    """Check every artifact listed in a run's manifest; return the manifest."""
    run_path = Path(run_path)
    manifest = json.loads((run_path / MANIFEST).read_text())
    for e in manifest["artifacts"]:
        verify(ArtifactRef(path=str(run_path / e["path"]), sha256=e["sha256"], bytes=e["bytes"]))
    return manifest


# --------------------------------------------------------------------------------------------- promotion

CURRENT = "current"


def promote(out_dir: Path | str, run_id: str) -> Path:
    """Point ``OUT/current`` at ``runs/RUN_ID`` atomically, one promotion at a time.

    Under an exclusive lock on ``OUT/.promote.lock`` the run is verified against its manifest, a new symlink
    is created beside ``current`` and renamed over it (``rename`` is atomic), so a reader always sees the old
    run or the new one. Earlier runs are never touched."""
    import fcntl

    out = Path(out_dir)
    run = run_dir(out, run_id)
    verify_run(run)  # complete and intact, or IntegrityError
    lock_path = out / ".promote.lock"
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise _write_error(lock_path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        link = out / CURRENT
        tmp = out / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(Path("runs") / run_id, tmp)
            os.replace(tmp, link)
            _fsync_dir(out)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _write_error(link, exc) from exc
        return link
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def current_run(out_dir: Path | str) -> str | None:
    link = Path(out_dir) / CURRENT
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

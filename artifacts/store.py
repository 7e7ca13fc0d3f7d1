"""The one place that writes artifacts (docs/run-folder.md; "Caching, failures and re-running what failed").

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
import re
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from macd_ml.artifacts import catalog

MANIFEST = catalog.MANIFEST


class ArtifactRef(BaseModel):
    """A reference to one written file: what tasks pass around instead of the data itself."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    bytes: int

    def verify_integrity(self) -> None:
        """Called on every reference in a cached task result before the cache is trusted."""
        verify(self)


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
        raise IntegrityError(
            f"{p}: sha256 mismatch (expected {ref.sha256[:12]}…, found {actual[:12]}…); refusing to load"
        )
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
    if exc.errno == errno.EACCES:
        fix = f"give {whoami} write access to that folder (chown/chmod), or point --out somewhere writable"
    elif exc.errno == errno.EPERM:
        fix = (
            "not permitted whatever the permissions: the file or folder is probably immutable or append-only "
            "(check with lsattr, clear with chattr -i / chattr -a), or the file system forbids the operation"
        )
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


def atomic_write(dest: Path | str, writer: Callable[[Path], object], attempts: int = WRITE_ATTEMPTS) -> ArtifactRef:
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


def _atomic_write_once(dest: Path, writer: Callable[[Path], object]) -> ArtifactRef:
    tmp = dest.with_name(temp_name(dest.name))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        _failpoint(dest)
    except OSError as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, ArtifactWriteError):
            raise
        raise _write_error(dest, exc) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return ref_for(dest)


FAILPOINT_ENV = "MACD_ML_FAILPOINT"
_failpoint_count = 0


def _failpoint(dest: Path) -> None:
    """Fault injection for tests (like etcd's failpoints): ``MACD_ML_FAILPOINT=kill-after-writes:GLOB:N``
    SIGKILLs this process right after its N-th completed write to a path matching GLOB, to test what a killed
    writer leaves behind. Unset (always, outside tests) it costs one environment lookup."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    import fnmatch
    import signal

    global _failpoint_count
    kind, pattern, n = spec.split(":", 2)
    if kind == "kill-after-writes" and fnmatch.fnmatch(str(dest), pattern):
        _failpoint_count += 1
        if _failpoint_count >= int(n):
            os.kill(os.getpid(), signal.SIGKILL)


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


def read_bytes(ref: ArtifactRef) -> bytes:
    return verify(ref).read_bytes()


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


# --------------------------------------------------------------------------------------------- temp files


# The writer of a temp file is its host and pid: on an OUT shared between machines (NFS, a Dask worker on another
# host), a pid says nothing about a process elsewhere. A short hash of the host name keeps file names plain.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(name: str) -> str:
    """``.NAME.HOST-PID.RANDOM.tmp``: the writer's host and pid let a later run remove what a killed writer left
    behind without touching the temp files of a run that is still going, on this machine or another."""
    return f".{name}.{HOST}-{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


_TEMP_RE = re.compile(r"^\..+\.(?:([0-9a-f]{8})-)?(\d+)\.[0-9a-f]{8}\.tmp$")
_STAGING_RE = re.compile(r"^\.staging-\d{8}T\d{6}Z-[0-9a-f]{8}-(?:([0-9a-f]{8})-)?(\d+)-[0-9a-f]{8}$")
# a temp file of another host (or of an older writer's name without a pid) is stale only after this long unchanged
LEGACY_TEMP_AGE_S = 3600


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp(out_dir: Path | str) -> list[Path]:
    """Remove temp files and half-built run folders whose writer is gone (killed mid-write). Returns them."""
    out = Path(out_dir)
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    now = time.time()
    for p in out.rglob(".*"):
        m = _TEMP_RE.match(p.name) or _STAGING_RE.match(p.name)
        try:
            if m and m.group(1) in (None, HOST):  # written on this host (or before names carried one)
                stale = not _pid_alive(int(m.group(2)))
            elif m or (p.name.endswith(".tmp") and p.is_file()):  # another host's writer, or a name without a pid
                stale = now - p.stat().st_mtime > LEGACY_TEMP_AGE_S
            else:
                continue
            if stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
        except OSError:
            continue  # not ours to fix now; the next run tries again
    return removed


# --------------------------------------------------------------------------------------------- layout

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def new_run_id(suffix: str | None = None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{(suffix or uuid.uuid4().hex)[:8]}"


def validate_run_id(run_id: str) -> str:
    """Run ids name folders under ``OUT/runs``: only the project's own format (``20250101T003000Z-1a2b3c4d``)
    is accepted, so a run id can never point outside that folder."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        from macd_ml.errors import ConfigError

        raise ConfigError(f"run id {run_id!r} is not a macd-ml run id (expected YYYYMMDDTHHMMSSZ-xxxxxxxx)")
    return run_id


def cache_dir(out_dir: Path | str, stage: str, key: str) -> Path:
    return Path(out_dir) / "cache" / stage / key[:32]


def run_dir(out_dir: Path | str, run_id: str) -> Path:
    return Path(out_dir) / "runs" / validate_run_id(run_id)


# --------------------------------------------------------------------------------------------- manifests

_MANIFEST_PURPOSE = "run-manifest"


def _manifest_body(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def manifest_document(run_id: str, artifacts: dict[str, ArtifactRef], extra: dict | None = None) -> dict:
    """Every artifact with relative path, bytes and sha256, signed (HMAC, key outside OUT)."""
    entries = [{"path": rel, "bytes": ref.bytes, "sha256": ref.sha256} for rel, ref in sorted(artifacts.items())]
    body = {"run_id": run_id, "written_at": datetime.now(timezone.utc).isoformat(), "artifacts": entries}
    body.update(extra or {})
    return sign_manifest(body)


def sign_manifest(manifest: dict) -> dict:
    """The manifest with this installation's signature for its run id (over everything but the signature)."""
    from macd_ml.artifacts import signing

    return {**manifest, "signature": signing.sign(_MANIFEST_PURPOSE, manifest["run_id"], _manifest_body(manifest))}


def manifest_signature_ok(manifest: dict) -> bool:
    """Does the manifest carry this installation's signature for its run id?"""
    from macd_ml.artifacts import signing

    sig, run_id = manifest.get("signature"), manifest.get("run_id")
    return (
        isinstance(sig, str)
        and isinstance(run_id, str)
        and signing.verify_signature(_MANIFEST_PURPOSE, run_id, _manifest_body(manifest), sig)
    )


def write_manifest(
    run_path: Path, artifacts: dict[str, ArtifactRef], extra: dict | None = None, run_id: str | None = None
) -> ArtifactRef:
    """Write ``manifest.json`` last. ``run_id`` defaults to the folder's name (a staging folder passes it)."""
    for rel, ref in artifacts.items():
        if Path(ref.path).resolve() != (run_path / rel).resolve():
            raise ValueError(f"manifest entry {rel} points outside the run folder: {ref.path}")
        _check_relative(rel)
    return write_json(run_path / MANIFEST, manifest_document(run_id or run_path.name, artifacts, extra))


def _check_relative(rel: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise IntegrityError(f"manifest entry {rel!r} is not a plain relative path")


def read_manifest(run_path: Path | str) -> dict:
    path = Path(run_path) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing; a run folder without a manifest is not a complete run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: unreadable or not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise IntegrityError(f"{path}: not a run manifest (no artifact list)")
    return manifest


def verify_run(run_path: Path | str, signed: bool = True) -> dict:
    """Check a run folder against its manifest: every listed artifact exists with its sha256, and (``signed``)
    the manifest carries this installation's signature for this run id, so a manifest rewritten together with
    the files it lists is refused too. Returns the manifest; raises IntegrityError naming what is wrong.

    ``signed=False`` is for reading a run folder made elsewhere (a copy from another machine) as input."""
    run_path = Path(run_path)
    manifest = read_manifest(run_path)
    run_id = manifest.get("run_id", "")
    if signed:
        if run_id != run_path.resolve().name:
            raise IntegrityError(
                f"{run_path / MANIFEST}: written for run {run_id!r}, found in folder {run_path.name!r}"
            )
        if not manifest_signature_ok(manifest):
            raise IntegrityError(
                f"{run_path / MANIFEST}: signature missing or wrong (the manifest was changed, or the "
                "run was made with another signing key)"
            )
    for e in manifest["artifacts"]:
        try:
            _check_relative(e["path"])
            ref = ArtifactRef(path=str(run_path / e["path"]), sha256=e["sha256"], bytes=e["bytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{run_path / MANIFEST}: malformed entry {e!r} ({exc})") from None
        verify(ref)
    return manifest


def run_artifacts(run_path: Path | str, manifest: dict) -> dict[str, ArtifactRef]:
    """Relative path -> reference (with its sha256) for every artifact a verified manifest lists."""
    run_path = Path(run_path)
    return {
        e["path"]: ArtifactRef(path=str(run_path / e["path"]), sha256=e["sha256"], bytes=e["bytes"])
        for e in manifest["artifacts"]
    }


class RunRef(BaseModel):
    """A published run folder: what the publish task returns (and what its cache record must still match)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    path: str
    manifest_sha256: str

    def verify_integrity(self) -> None:
        verify(ArtifactRef(path=str(Path(self.path) / MANIFEST), sha256=self.manifest_sha256, bytes=0))
        verify_run(self.path)


def publish_run(out_dir: Path | str, run_id: str, fill: Callable[[Path], dict[str, ArtifactRef]]) -> RunRef:
    """Build ``OUT/runs/RUN_ID`` so that a half-written folder can never be mistaken for a run.

    ``fill(folder)`` writes every artifact into a staging sibling (``runs/.staging-RUN_ID-PID-xxxx``) and returns
    relative path -> ref; the signed manifest is written last and the folder is renamed into place in one step.
    A complete, intact folder already at that id is returned as it is (runs are immutable); a damaged one is
    moved to ``runs/.quarantine/`` (kept for inspection, never served) and the run is built again."""
    final = run_dir(out_dir, run_id)
    runs = final.parent
    if final.exists():
        try:
            verify_run(final)
            return run_ref(final)
        except IntegrityError as exc:
            _quarantine(final, str(exc))
    staging = runs / f".staging-{run_id}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise _write_error(staging, exc) from None
        artifacts = fill(staging)
        write_manifest(staging, artifacts, run_id=run_id)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if final.exists():  # another process published the same run id first
                verify_run(final)
                return run_ref(final)
            raise _write_error(final, exc) from None
        _fsync_dir(runs)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return run_ref(final)


def run_ref(run_path: Path) -> RunRef:
    return RunRef(run_id=run_path.name, path=str(run_path.resolve()), manifest_sha256=sha256_file(run_path / MANIFEST))


def _quarantine(folder: Path, why: str) -> Path:
    dest = (
        folder.parent
        / ".quarantine"
        / f"{folder.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"
    )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, dest)
    except OSError as exc:
        raise _write_error(folder, exc) from None
    import logging

    logging.getLogger("prefect.macd_ml.store").warning("%s is damaged (%s); moved to %s and rebuilt", folder, why, dest)
    return dest


# --------------------------------------------------------------------------------------------- promotion

CURRENT = "current"
# ``promote(..., champion=ANY_CHAMPION)``: move ``current`` whatever it points at now (no run id is "*")
ANY_CHAMPION = "*"
# Called as hook(out_dir, run_id) inside the promotion lock, after the champion check and just before the swap:
# tests hold one promotion there while another starts (the lock must make the second wait and then see the first).
PROMOTE_HOOKS: list[Callable[[Path, str], None]] = []


class ChampionMoved(RuntimeError):
    """``current`` no longer names the run a promotion was decided against (another run was promoted since)."""


def promote(out_dir: Path | str, run_id: str, champion: str | None = ANY_CHAMPION) -> Path:
    """Point ``OUT/current`` at ``runs/RUN_ID`` atomically, one promotion at a time.

    Under an exclusive lock on ``OUT/.promote.lock`` the run is verified against its signed manifest, a new
    symlink is created beside ``current`` and renamed over it (``rename`` is atomic), so a reader always sees
    the old run or the new one. Earlier runs are never touched.

    ``champion``: the run the champion/challenger decision compared this one with (None: there was none). If
    ``current`` names another run by the time the lock is held, nothing moves and :class:`ChampionMoved` says
    which: two runs compared with the same champion at once never both win, the later one silently replacing the
    earlier without being compared with it. ``ANY_CHAMPION`` (the default) skips the check."""
    import fcntl

    out = Path(out_dir)
    run = run_dir(out, run_id)
    verify_run(run)  # complete and intact, or IntegrityError
    lock_path = out / ".promote.lock"
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise _write_error(lock_path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if champion != ANY_CHAMPION:
            now = current_champion(out)
            if now not in (champion, run_id):
                raise ChampionMoved(
                    f"{out / CURRENT} moved to run {now} while run {run_id} was being compared with "
                    f"{'run ' + champion if champion else 'no champion'}"
                )
        for hook in list(PROMOTE_HOOKS):
            hook(out, run_id)
        link = out / CURRENT
        tmp = out / temp_name(CURRENT)
        try:
            os.symlink(Path("runs") / run_id, tmp)
            os.replace(tmp, link)
            _fsync_dir(out)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _write_error(link, exc) from None
        return link
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def current_champion(out_dir: Path | str) -> str | None:
    """The run ``OUT/current`` points at, if it is a run folder (the champion a challenger is compared with)."""
    link = Path(out_dir) / CURRENT
    return current_run(out_dir) if link.is_symlink() and link.resolve().is_dir() else None


def current_run(out_dir: Path | str) -> str | None:
    link = Path(out_dir) / CURRENT
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

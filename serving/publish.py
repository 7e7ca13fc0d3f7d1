"""Where bots fetch bundles: a repository of The Update Framework (python-tuf) in DEST, a folder or any fsspec URL
(docs/bot-contract.md, "Trust: what a bot accepts").

Layout under DEST::

    metadata/N.root.json        the trusted keys (the publishing key for all four roles), one file per version
    metadata/N.targets.json     every kept bundle (length, sha256, run id) and the pointer ``LATEST``: a target whose
                                ``custom`` names the bundle, its run and the history (newest first)
    metadata/N.snapshot.json    the targets version;  metadata/timestamp.json: the snapshot version, written last
    bundles/RUN_ID-SHA12.tar.gz complete bundles, each signed inside (``bundle.sig``)
    .publish.lock               publishers take it in turn (a lease object on object stores)

Every publish, rollback and refresh writes new versions of targets, snapshot and timestamp, each signed and
expiring (``expires_days``), and ``timestamp.json`` last, in one write: a bot sees the old state or the new one.
A bot (:func:`fetch_latest`) follows TUF's client workflow with python-tuf's ``Updater``: it keeps the metadata it
has seen in a state folder, so a pointer older than the one it saw is refused (rollback), as is metadata past its
expiry (freeze) or a targets file of another snapshot (mix-and-match); then it downloads the bundle ``LATEST``
names, checks length and sha256 against the signed metadata, and the bundle's own signature.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from macd_ml.serving.bundle import BundleError, read_bundle
from macd_ml.serving.contract import CONTRACT_VERSION
from macd_ml.serving.trust import Trust, TrustError, publish_signer

POINTER = "LATEST"
METADATA = "metadata"
BUNDLES = "bundles"
LOCK = ".publish.lock"
BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}-[0-9a-f]{12}\.tar\.gz$")
ROOT_EXPIRES_DAYS = 365
KEEP_METADATA_VERSIONS = 10  # older targets/snapshot files are deleted (a bot mid-read needs the previous few)
_memory_locks: dict[str, threading.Lock] = {}

if TYPE_CHECKING:
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
    from tuf.ngclient.fetcher import FetcherInterface


def _fs(dest: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(dest)
    return fs, root.rstrip("/")


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------------------------------- the publisher's side


def _check_inside(fs, root: str) -> None:
    """Publish never writes or deletes outside DEST: on a local DEST its ``bundles`` and ``metadata`` folders must
    be real folders inside it (a symlink to elsewhere is refused, with nothing written)."""
    if not _is_local(fs):
        return
    base = Path(root).resolve()
    for sub in (BUNDLES, METADATA, LOCK):
        p = Path(root) / sub
        if p.is_symlink():
            raise BundleError(f"{p}: a symlink; publish writes only inside {root} (make it a real folder)")
        if p.exists() and base not in p.resolve().parents:
            raise BundleError(f"{p}: resolves outside {root}; refusing to write there")


@contextlib.contextmanager
def _publish_lock(fs, root: str, wait_s: float = 120.0) -> Iterator[None]:
    """One publisher at a time: ``flock`` on a local DEST, a process lock on ``memory://``, and on object stores a
    lease object (written, then read back after a pause: the second writer sees the first's lease and waits)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if _is_local(fs):
        fs.makedirs(root, exist_ok=True)
        fd = os.open(f"{root}/{LOCK}", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return
    if "memory" in protocols:
        lock = _memory_locks.setdefault(root, threading.Lock())
        with lock:
            yield
        return
    path, me = f"{root}/{LOCK}", uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lease = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            lease = None
        if lease is None or lease.get("until", 0) < time.time():
            fs.pipe_file(path, json.dumps({"owner": me, "until": time.time() + wait_s}).encode())
            time.sleep(1.0)
            if json.loads(fs.cat_file(path)).get("owner") == me:
                break
        if time.monotonic() > deadline:
            raise BundleError(f"{path}: another publish holds the lease; try again later")
        time.sleep(0.5)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


class _Repo:
    """The repository's current metadata, verified with its own root, plus what a commit needs."""

    def __init__(self, fs, root: str, dest: str):
        from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

        self.fs, self.root, self.dest = fs, root, dest
        self.root_md: Metadata[Root] | None = None
        self.timestamp: Metadata[Timestamp] | None = None
        self.snapshot: Metadata[Snapshot] | None = None
        self.targets: Metadata[Targets] | None = None
        md = f"{root}/{METADATA}"
        self.roots: dict[int, bytes] = {}
        if fs.exists(md):
            for p in fs.ls(md, detail=False):
                m = re.fullmatch(r"(\d+)\.root\.json", Path(p).name)
                if m:
                    self.roots[int(m.group(1))] = fs.cat_file(p)
        if not self.roots:
            return
        try:
            self.root_md = Metadata[Root].from_bytes(self.roots[max(self.roots)])
            self.timestamp = Metadata[Timestamp].from_bytes(fs.cat_file(f"{md}/timestamp.json"))
            self._verify("timestamp", self.timestamp)
            snap_v = self.timestamp.signed.snapshot_meta.version
            self.snapshot = Metadata[Snapshot].from_bytes(fs.cat_file(f"{md}/{snap_v}.snapshot.json"))
            self._verify("snapshot", self.snapshot)
            tgt_v = self.snapshot.signed.meta["targets.json"].version
            self.targets = Metadata[Targets].from_bytes(fs.cat_file(f"{md}/{tgt_v}.targets.json"))
            self._verify("targets", self.targets)
        except TrustError:
            raise
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise TrustError(
                f"{dest}/{METADATA}: the repository's metadata is incomplete or unreadable ({exc})"
            ) from None

    def _verify(self, role: str, md) -> None:
        from tuf.api.exceptions import UnsignedMetadataError

        assert self.root_md is not None
        try:
            self.root_md.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            raise TrustError(f"{self.dest}/{METADATA}: {role} metadata is not signed by the repository's key") from None

    def pointer(self) -> dict | None:
        if self.targets is None or POINTER not in self.targets.signed.targets:
            return None
        return dict(self.targets.signed.targets[POINTER].custom or {})


def _write(fs, path: str, data: bytes) -> None:
    """One complete file: temp name beside it, then a rename (local) or a single put (object stores)."""
    if _is_local(fs):
        from macd_ml.artifacts.store import write_bytes

        write_bytes(path, data)
    else:
        fs.pipe_file(path, data)


def _commit(dest: str, change: Callable[[_Repo, dict], dict], expires_days: float, now: datetime | None) -> dict:
    """Under the lock: load and verify the repository (creating its root on first use), let ``change`` edit the
    targets (``{path: TargetFile}``) and return the new pointer, then write targets, snapshot and, last,
    timestamp, each one version up and signed; prune what no longer is named."""
    from tuf.api.metadata import Metadata, MetaFile, Role, Root, Snapshot, Targets, Timestamp

    if not expires_days > 0:
        from macd_ml.errors import ConfigError

        raise ConfigError(f"--expires-days {expires_days}: must be a positive number of days")
    fs, root = _fs(dest)
    _check_inside(fs, root)
    signer = publish_signer(create=True)
    now = now or _now()
    expires = now + timedelta(days=expires_days)
    md = f"{root}/{METADATA}"
    with _publish_lock(fs, root):
        repo = _Repo(fs, root, dest)
        fs.makedirs(md, exist_ok=True)
        fs.makedirs(f"{root}/{BUNDLES}", exist_ok=True)
        key = signer.public_key
        if repo.root_md is None:
            roles = {name: Role([key.keyid], 1) for name in ("root", "targets", "snapshot", "timestamp")}
            root_md = Metadata(Root(1, None, now + timedelta(days=ROOT_EXPIRES_DAYS), {key.keyid: key}, roles, True))
            root_md.sign(signer)
            _write(fs, f"{md}/1.root.json", root_md.to_bytes())
            repo.root_md = root_md
        elif key.keyid not in repo.root_md.signed.roles["targets"].keyids:
            raise TrustError(
                f"{dest}: its metadata trusts another publishing key (not {key.keyid[:12]} from "
                f"{os.environ.get('MACD_ML_PUBLISH_KEY_FILE', 'the default key file')}); rotate keys as "
                'docs/operations.md ("Keys and trust") says, or publish to a new DEST'
            )
        old_targets = dict(repo.targets.signed.targets) if repo.targets else {}
        targets = dict(old_targets)
        pointer = change(repo, targets)
        t_version = (repo.targets.signed.version if repo.targets else 0) + 1
        s_version = (repo.snapshot.signed.version if repo.snapshot else 0) + 1
        ts_version = (repo.timestamp.signed.version if repo.timestamp else 0) + 1
        t_md = Metadata(Targets(t_version, None, expires, targets))
        t_md.sign(signer)
        t_bytes = t_md.to_bytes()
        s_md = Metadata(Snapshot(s_version, None, expires, {"targets.json": MetaFile(t_version)}))
        s_md.sign(signer)
        s_bytes = s_md.to_bytes()
        ts_md = Metadata(Timestamp(ts_version, None, expires, MetaFile(s_version)))
        ts_md.sign(signer)
        _write(fs, f"{md}/{t_version}.targets.json", t_bytes)
        _write(fs, f"{md}/{s_version}.snapshot.json", s_bytes)
        _write(fs, f"{md}/timestamp.json", ts_md.to_bytes())  # the commit
        _prune(fs, root, old_targets, targets, t_version, s_version)
    return pointer


def _prune(fs, root: str, old: dict, new: dict, t_version: int, s_version: int) -> None:
    """Delete bundles the new targets no longer name, only those an earlier version listed (publish wrote them)
    with the name format publish uses and the same bytes; and metadata versions older than the newest few."""
    named = {t.path for p, t in new.items() if p != POINTER}
    for path, target in old.items():
        if path == POINTER or path in named or not BUNDLE_NAME.match(path):
            continue
        full = f"{root}/{BUNDLES}/{path}"
        with contextlib.suppress(FileNotFoundError):
            if fs.size(full) == target.length:
                fs.rm(full)
    for p in fs.ls(f"{root}/{METADATA}", detail=False):
        m = re.fullmatch(r"(\d+)\.(targets|snapshot)\.json", Path(p).name)
        newest = t_version if m and m.group(2) == "targets" else s_version
        if m and int(m.group(1)) <= newest - KEEP_METADATA_VERSIONS:
            fs.rm(p)


def _target(path: str, data_len: int, sha: str, custom: dict):
    from tuf.api.metadata import TargetFile

    return TargetFile(data_len, {"sha256": sha}, path, {"custom": custom})


def _entry(pointer: dict) -> dict:
    return {k: v for k, v in pointer.items() if k not in ("history", "rolled_back_from", "rolled_back_at")}


def publish(
    bundle_bytes: bytes,
    dest: str,
    keep: int = 5,
    expires_days: float = 7.0,
    trust: Trust | None = None,
    now: datetime | None = None,
) -> dict:
    """Put a bundle signed by a trusted key under DEST and point ``LATEST`` at it; returns the new pointer."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    bundle = read_bundle(bundle_bytes, "bundle", trust=trust or Trust.resolve(allow_unsigned=False))
    sha = hashlib.sha256(bundle_bytes).hexdigest()
    name = f"{bundle.run_id}-{sha[:12]}.tar.gz"
    if not BUNDLE_NAME.match(name):
        raise BundleError(f"bundle: run id {bundle.run_id!r} does not make a bundle file name")
    fs, root = _fs(dest)
    _check_inside(fs, root)

    def change(repo: _Repo, targets: dict) -> dict:
        target = f"{root}/{BUNDLES}/{name}"
        if not (fs.exists(target) and _sha_of(fs, target) == sha):  # a file there is trusted only by its sha256
            fs.makedirs(f"{root}/{BUNDLES}", exist_ok=True)
            tmp = f"{root}/{BUNDLES}/.{uuid.uuid4().hex}.partial"
            fs.pipe_file(tmp, bundle_bytes)
            fs.mv(tmp, target)
        old = repo.pointer()
        history = [] if old is None else [_entry(old), *old.get("history", [])]
        history = [h for h in history if h.get("bundle") != name][: keep - 1]
        published = (now or _now()).isoformat()
        pointer = {
            "bundle": name,
            "sha256": sha,
            "run_id": bundle.run_id,
            "published_at": published,
            "history": history,
        }
        targets[name] = _target(name, len(bundle_bytes), sha, {"run_id": bundle.run_id, "published_at": published})
        _set_pointer(targets, pointer)
        return pointer

    return _commit(dest, change, expires_days, now)


def _set_pointer(targets: dict, pointer: dict) -> None:
    """``LATEST`` carries the length and sha256 of the bundle it names, and the contract version
    (docs/schemas/publish-pointer.v3.schema.json); bundles no entry names leave targets."""
    pointer["contract_version"] = CONTRACT_VERSION
    current = targets[pointer["bundle"]]
    named = {pointer["bundle"], *(h["bundle"] for h in pointer.get("history", []))}
    for path in [p for p in targets if p != POINTER and p not in named]:
        del targets[path]
    targets[POINTER] = _target(POINTER, current.length, current.hashes["sha256"], pointer)


def _sha_of(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rollback(dest: str, expires_days: float = 7.0, trust: Trust | None = None, now: datetime | None = None) -> dict:
    """Point ``LATEST`` at the previous bundle of the history, after checking that bundle: a name of publish's
    format, present, with the length and sha256 the signed metadata holds, and a valid signature inside."""
    fs, root = _fs(dest)

    def change(repo: _Repo, targets: dict) -> dict:
        old = repo.pointer()
        if old is None or not old.get("history"):
            raise BundleError(f"{dest}: no earlier bundle to roll back to")
        previous, *rest = old["history"]
        name = previous.get("bundle", "")
        if not BUNDLE_NAME.match(name) or name not in targets:
            raise BundleError(f"{dest}: the previous entry names {name!r}, not a bundle this repository published")
        path = f"{root}/{BUNDLES}/{name}"
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise BundleError(f"{dest}: the previous bundle {name} is gone; nothing rolled back") from None
        if len(data) != targets[name].length or hashlib.sha256(data).hexdigest() != targets[name].hashes["sha256"]:
            raise BundleError(f"{path}: does not match its sha256 in the signed metadata; nothing rolled back")
        read_bundle(data, path, trust=trust or Trust.resolve(allow_unsigned=False))
        pointer = {
            **_entry(previous),
            "rolled_back_at": (now or _now()).isoformat(),
            "rolled_back_from": _entry(old),
            "history": rest,
        }
        _set_pointer(targets, pointer)
        return pointer

    return _commit(dest, change, expires_days, now)


def refresh(dest: str, expires_days: float = 7.0, now: datetime | None = None) -> dict:
    """Sign the same pointer again with a new expiry (a publisher with nothing new to publish runs this on a
    schedule, so that bots do not see a freeze)."""

    def change(repo: _Repo, targets: dict) -> dict:
        pointer = repo.pointer()
        if pointer is None:
            raise BundleError(f"{dest}: nothing published yet")
        _set_pointer(targets, pointer)  # the same bundle; a pointer written before contract_version gains it
        return pointer

    return _commit(dest, change, expires_days, now)


def read_pointer(dest: str) -> dict | None:
    """The current pointer (what ``LATEST`` names), verified against the repository's own root."""
    fs, root = _fs(dest)
    return _Repo(fs, root, dest).pointer()


# ------------------------------------------------------------------------------------------------- the bot's side


def _fetcher() -> FetcherInterface:
    """python-tuf's fetcher interface over fsspec, so that a bot reads DEST as a folder, s3://, gs://, memory://
    or http(s):// alike. A missing file is a 404, which ends the client's search for newer roots."""
    from tuf.api.exceptions import DownloadHTTPError
    from tuf.ngclient.fetcher import FetcherInterface

    class Fetcher(FetcherInterface):
        def _fetch(self, url: str) -> Iterator[bytes]:
            fs, path = _fs(url)
            try:
                with fs.open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        yield block
            except FileNotFoundError:
                raise DownloadHTTPError(f"{url}: not found", 404) from None

    return Fetcher()


def default_state_dir(dest: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "macd-ml" / "bot" / hashlib.sha256(dest.encode()).hexdigest()[:16]


def _bootstrap_root(fs, root: str, dest: str, trust: Trust) -> bytes:
    """The newest root version signed by a trusted key (the bot's first contact with DEST)."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata

    keys = {k.keyid for k in trust.require_keys(dest)}
    versions = []
    with contextlib.suppress(FileNotFoundError):
        for p in fs.ls(f"{root}/{METADATA}", detail=False):
            m = re.fullmatch(r"(\d+)\.root\.json", Path(p).name)
            if m:
                versions.append((int(m.group(1)), p))
    if not versions:
        raise BundleError(f"{dest}: nothing published yet (no {METADATA}/1.root.json)")
    for _, p in sorted(versions, reverse=True):
        data = fs.cat_file(p)
        try:
            md = Metadata.from_bytes(data)
            if not set(md.signed.roles["root"].keyids) <= keys:
                continue
            md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        except (ValueError, KeyError, UnsignedMetadataError):
            continue
        return data
    raise TrustError(f"{dest}: no root metadata signed by a trusted key ({trust.source or 'no key'}); refusing it")


def fetch_latest(
    dest: str, state_dir: Path | str | None = None, trust: Trust | None = None, now: datetime | None = None
) -> bytes:
    """What a bot does: TUF's update workflow against DEST, then the bundle ``LATEST`` names, verified by the
    signed metadata and by its own signature. ``state_dir`` keeps what this bot has seen (default under
    ``~/.cache/macd-ml/bot``); deleting it forgets the rollback baseline."""
    from tuf.api import exceptions as tuf_errors
    from tuf.ngclient import Updater, UpdaterConfig

    trust = trust or Trust.resolve()
    fs, root = _fs(dest)
    state = Path(state_dir) if state_dir is not None else default_state_dir(dest)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    bootstrap = None if (state / "root.json").exists() else _bootstrap_root(fs, root, dest, trust)
    base = dest.rstrip("/")
    try:
        updater = Updater(
            metadata_dir=str(state),
            metadata_base_url=f"{base}/{METADATA}/",
            target_base_url=f"{base}/{BUNDLES}/",
            fetcher=_fetcher(),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=bootstrap,
        )
        if now is not None:  # replays and tests judge expiry at a given time
            updater._trusted_set.reference_time = now  # noqa: SLF001 - python-tuf has no public knob for it
        updater.refresh()
        info = updater.get_targetinfo(POINTER)
        if info is None:
            raise BundleError(f"{dest}: nothing published yet")
        name = (info.custom or {}).get("bundle", "")
        target = updater.get_targetinfo(name) if BUNDLE_NAME.match(str(name)) else None
        if target is None:
            raise TrustError(f"{dest}: LATEST names {name!r}, which the signed targets do not list")
        data = b"".join(_fetcher().fetch(f"{base}/{BUNDLES}/{name}"))
        target.verify_length_and_hashes(data)
    except tuf_errors.BadVersionNumberError as exc:
        raise TrustError(f"{dest}: rollback refused: {exc} (this bot has seen newer metadata, in {state})") from None
    except tuf_errors.ExpiredMetadataError as exc:
        raise TrustError(
            f"{dest}: freeze refused: {exc} (the publisher has not signed since; `macd-ml publish --refresh`)"
        ) from None
    except tuf_errors.LengthOrHashMismatchError as exc:
        raise TrustError(f"{dest}: {name}: does not match the signed metadata ({exc})") from None
    except tuf_errors.DownloadHTTPError as exc:
        raise BundleError(f"{dest}: {exc}") from None
    except tuf_errors.RepositoryError as exc:
        raise TrustError(f"{dest}: metadata refused: {type(exc).__name__}: {exc}") from None
    read_bundle(data, f"{dest}/{BUNDLES}/{name}", trust=trust)
    return data

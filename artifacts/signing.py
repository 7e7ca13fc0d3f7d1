"""Integrity a writable output folder alone cannot forge (docs/operations.md, "Caching, failures and
re-running what failed").

Cache records and run manifests live under ``OUT``; anyone who can write there could plant a record that
Prefect would decode, or rewrite a manifest together with the files it lists. Both are signed with an
HMAC-SHA256 keyed by a secret that lives *outside* ``OUT``:

- ``MACD_ML_KEY_FILE`` if set, else ``$XDG_CONFIG_HOME/macd-ml/signing.key`` (``~/.config/macd-ml/...``);
- created on first use with 32 random bytes and mode 0600 (``O_CREAT | O_EXCL``, so two processes starting
  at once agree on one key); a key file readable by group/others or owned by someone else is refused;
- a key inside the output folder is refused too (it would protect nothing).

Losing the key costs nothing but time: every record becomes a cache miss and is recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from pathlib import Path

from macd_ml.errors import ConfigError

KEY_ENV = "MACD_ML_KEY_FILE"
_KEY_BYTES = 32
_lock = threading.Lock()
_cache: dict[str, bytes] = {}


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (base / "macd-ml" / "signing.key").resolve()


def _create(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place: the file appears whole or not at all, so two
    processes starting at once on a fresh machine both read the one key that won (never a half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_hex(_KEY_BYTES).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and refuses to replace a key someone else made first: use theirs
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


MAX_KEY_FILE = 64 * 1024


def read_key_file(path: Path, what: str, secret: bool, env: str, error: type[Exception] = ConfigError) -> bytes:
    """A key file's bytes, for this HMAC key and the publishing key alike: a regular file (never a FIFO that would
    hang the read or a device that never ends it), at most 64 KiB, and for a ``secret`` one owned by this user
    and unreadable by others. Raises ``error`` naming the file and what to do (``env``: where to point instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc}); set {env}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: the {what} is not a regular file; point {env} at a key file")
        if secret and st.st_mode & 0o077:
            raise error(
                f"{path}: the {what} is readable by others (mode {stat.filemode(st.st_mode)}); "
                f"run 'chmod 600 {path}' or delete it to have a new one made"
            )
        if secret and hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise error(f"{path}: the {what} belongs to uid {st.st_uid}, not to this user; point {env} at your own")
        if st.st_size > MAX_KEY_FILE:
            raise error(f"{path}: the {what} is {st.st_size} bytes; a key file is well under 64 KiB")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_KEY_FILE + 1)
    finally:
        os.close(fd)


def signing_key() -> bytes:
    """The secret, created on first use. Raises ConfigError (exit 2) if it exists but is unsafe or unreadable."""
    path = key_path()
    with _lock:
        if str(path) in _cache:
            return _cache[str(path)]
        if not os.path.lexists(path):
            try:
                _create(path)
            except OSError as exc:
                raise ConfigError(
                    f"{path}: cannot create the signing key ({exc.strerror or exc}); "
                    f"set {KEY_ENV} to a writable location outside the output folder"
                ) from None
        raw = read_key_file(path, "signing key", secret=True, env=KEY_ENV).strip()
        if len(raw) < 32:
            raise ConfigError(f"{path}: signing key is too short ({len(raw)} bytes); delete it to have a new one made")
        _cache[str(path)] = raw
        return raw


def check_key_outside(out_dir: Path | str) -> None:
    """A key stored under the folder it protects protects nothing."""
    out = Path(out_dir).resolve()
    path = key_path()
    if out == path or out in path.parents:
        raise ConfigError(f"{path}: the signing key must live outside the output folder {out} (set {KEY_ENV})")


def sign(purpose: str, name: str, content: bytes) -> str:
    """HMAC-SHA256 over purpose, name and content: a record signed for one key/path does not verify for another."""
    mac = hmac.new(signing_key(), digestmod=hashlib.sha256)
    for part in (purpose.encode(), name.encode(), content):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


def verify_signature(purpose: str, name: str, content: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(purpose, name, content), signature)

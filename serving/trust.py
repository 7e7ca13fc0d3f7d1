"""Trust from the pipeline to the bot without a shared secret (docs/bot-contract.md, "Trust: what a bot accepts").

The training side holds an Ed25519 private key; a bot holds only its public key. Two things are signed with it:

- every bundle: ``bundle.sig`` inside the archive is a DSSE envelope (the signature format of in-toto and
  Sigstore, from ``securesystemslib``) whose payload is the bundle's index, ``bundle.json``, which lists every
  other member with its sha256. Verifying the envelope and the index verifies every byte of the bundle;
- the pointer bots follow: The Update Framework's metadata in ``DEST/metadata`` (``serving/publish.py``).

Keys:

- private: ``MACD_ML_PUBLISH_KEY_FILE`` if set, else ``$XDG_CONFIG_HOME/macd-ml/publish-ed25519.pem`` (PKCS#8
  PEM, mode 0600). Created on first use by the commands that sign (the flow's bundle stage, ``bundle``,
  ``publish``, ``rollback``), never by one that only verifies; refused when it is readable by others, owned by
  someone else, not a regular file, or inside the output folder;
- public: written beside it as ``publish-ed25519.pub.json`` (securesystemslib's key format: key type, scheme,
  public bytes in hex). ``macd-ml keys`` prints both paths;
- trusted (what verifies): ``MACD_ML_TRUSTED_KEYS`` (a file holding one public key, or ``{"keys": [...]}`` for
  several, e.g. during a key rotation), else the public key of this machine's private key when it has one.

An unsigned or wrongly signed bundle is refused. ``--allow-unsigned`` (or ``MACD_ML_ALLOW_UNSIGNED=1``) skips the
signature for local experiments, with a warning on every load.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from macd_ml.artifacts import signing
from macd_ml.errors import BundleError

KEY_ENV = "MACD_ML_PUBLISH_KEY_FILE"
TRUSTED_ENV = "MACD_ML_TRUSTED_KEYS"
UNSIGNED_ENV = "MACD_ML_ALLOW_UNSIGNED"
PAYLOAD_TYPE = "application/vnd.macd-ml.bundle-index+json"
SIGNATURE = "bundle.sig"
_lock = threading.Lock()


class TrustError(BundleError):
    """A signature, a key or signed metadata that must not be trusted (exit 3), or a key that cannot be used."""


def private_key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser().absolute()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (base / "macd-ml" / "publish-ed25519.pem").absolute()


def public_key_path(private: Path | None = None) -> Path:
    p = private or private_key_path()
    return p.with_name(p.name.removesuffix(".pem") + ".pub.json")


def read_key_file(path: Path, what: str, secret: bool) -> bytes:
    """The checks of the cache's HMAC key file (artifacts/signing.py), refusing with a TrustError (exit 3)."""
    return signing.read_key_file(path, what, secret, KEY_ENV if secret else TRUSTED_ENV, TrustError)


def _create(path: Path) -> None:
    from securesystemslib.signer import CryptoSigner

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = CryptoSigner.generate_ed25519()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first: use theirs
    try:
        os.write(fd, signer.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_signer(create: bool = True, out_dir: Path | str | None = None):
    """The private key as a securesystemslib ``CryptoSigner``; created on first use when ``create``. Writes the
    public key beside it (``publish-ed25519.pub.json``) when that file is missing."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    path = private_key_path()
    if out_dir is not None:
        out = Path(out_dir).resolve()
        if out == path.resolve() or out in path.resolve().parents:
            raise TrustError(f"{path}: the publishing key must live outside the output folder {out} (set {KEY_ENV})")
    with _lock:
        if not os.path.lexists(path):
            if not create:
                raise TrustError(f"{path}: no publishing key here (set {KEY_ENV}, or run `macd-ml keys --create`)")
            try:
                _create(path)
            except OSError as exc:
                raise TrustError(
                    f"{path}: cannot create the publishing key ({exc.strerror or exc}); set {KEY_ENV} to a "
                    "writable location outside the output folder"
                ) from None
        raw = read_key_file(path, "publishing key", secret=True)
        try:
            signer = CryptoSigner(load_pem_private_key(raw, password=None))
        except (ValueError, TypeError) as exc:
            raise TrustError(f"{path}: not an Ed25519 private key in PEM ({exc})") from None
        if signer.public_key.keytype != "ed25519":
            raise TrustError(f"{path}: a {signer.public_key.keytype} key; the publishing key is Ed25519")
        pub = public_key_path(path)
        if not pub.exists():
            from macd_ml.artifacts.store import write_bytes

            write_bytes(pub, (json.dumps(key_document(signer.public_key), indent=2) + "\n").encode())
        return signer


def key_document(key) -> dict:
    """A public key as a file bots can hold: securesystemslib's key dict plus its key id."""
    return {"keyid": key.keyid, **key.to_dict()}


def parse_public_keys(raw: bytes, source: str) -> list:
    """One key dict, or ``{"keys": [key dicts]}``: each an Ed25519 public key."""
    from securesystemslib.signer import Key, SSlibKey

    try:
        doc = json.loads(raw)
        docs = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
        keys = []
        for d in docs:
            d = dict(d)
            keyid = d.pop("keyid", None)
            key = Key.from_dict(keyid or "", d)
            key = SSlibKey(_keyid(key), key.keytype, key.scheme, key.keyval)
            if keyid and keyid != key.keyid:
                raise ValueError(f"keyid {keyid} is not the key's ({key.keyid})")
            if key.keytype != "ed25519":
                raise ValueError(f"a {key.keytype} key; bundles are signed with Ed25519")
            keys.append(key)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrustError(f"{source}: not a public key file ({exc})") from None
    if not keys:
        raise TrustError(f"{source}: holds no public key")
    return keys


def _keyid(key) -> str:
    """The key id TUF uses: sha256 of the key's canonical JSON (without the id)."""
    import hashlib

    from securesystemslib.formats import encode_canonical

    return hashlib.sha256((encode_canonical(key.to_dict()) or "").encode()).hexdigest()


@dataclass(frozen=True)
class Trust:
    """What a reader of bundles trusts: public keys, or nothing with ``allow_unsigned`` (loudly)."""

    keys: list = field(default_factory=list)
    allow_unsigned: bool = False
    source: str = ""

    @classmethod
    def resolve(cls, trusted_keys: Path | str | None = None, allow_unsigned: bool | None = None) -> Trust:
        """``trusted_keys`` (a file), else ``MACD_ML_TRUSTED_KEYS``, else this machine's own public key. An
        explicit ``allow_unsigned``, else ``MACD_ML_ALLOW_UNSIGNED=1``."""
        if allow_unsigned is None:
            allow_unsigned = os.environ.get(UNSIGNED_ENV, "") not in ("", "0", "false", "no")
        path = trusted_keys or os.environ.get(TRUSTED_ENV)
        if path:
            p = Path(path).expanduser()
            return cls(
                parse_public_keys(read_key_file(p, "trusted keys file", secret=False), str(p)), allow_unsigned, str(p)
            )
        own = public_key_path()
        if own.is_file():
            return cls(
                parse_public_keys(read_key_file(own, "public key", secret=False), str(own)), allow_unsigned, str(own)
            )
        return cls([], allow_unsigned, "")

    def require_keys(self, what: str) -> list:
        if not self.keys:
            raise TrustError(
                f"{what}: no public key to verify it with: set {TRUSTED_ENV}=FILE (a copy of the publisher's "
                f"publish-ed25519.pub.json) or pass --trusted-keys FILE; --allow-unsigned skips the check for local "
                "experiments"
            )
        return self.keys


def sign_index(index: bytes, signer) -> bytes:
    """``bundle.sig``: a DSSE envelope over the bundle index, signed with ``signer``. Ed25519 signatures are
    deterministic, so the same run and key give the same bundle bytes."""
    from securesystemslib.dsse import Envelope

    env = Envelope(payload=index, payload_type=PAYLOAD_TYPE, signatures={})
    env.sign(signer)
    return (json.dumps(env.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def verify_index(envelope: bytes | None, index: bytes, trust: Trust, source: str) -> str | None:
    """The key id that signed the bundle index; ``None`` when unsigned bundles are allowed and this one is not
    (or not validly) signed, after a warning. Raises TrustError otherwise."""
    if trust.allow_unsigned:
        try:
            return verify_index(envelope, index, Trust(trust.keys, False, trust.source), source)
        except TrustError as exc:
            print(f"WARNING: {exc}; loading it anyway (--allow-unsigned / {UNSIGNED_ENV})", file=sys.stderr)
            return None
    keys = trust.require_keys(source)
    if envelope is None:
        raise TrustError(f"{source}: the bundle is not signed (no {SIGNATURE}); refusing it")
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    try:
        env = Envelope.from_dict(json.loads(envelope))
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{source}: {SIGNATURE} is not a signature envelope ({exc}); refusing the bundle") from None
    if env.payload_type != PAYLOAD_TYPE or env.payload != index:
        raise TrustError(f"{source}: {SIGNATURE} signs another index than this bundle's; refusing it")
    try:
        accepted = env.verify(keys, 1)
    except VerificationError:
        ids = ", ".join(k.keyid[:12] for k in keys)
        raise TrustError(
            f"{source}: not signed by a trusted key (trusted: {ids} from {trust.source or 'nowhere'}); refusing it"
        ) from None
    return next(iter(accepted))

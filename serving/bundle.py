"""Bundles: what reaches the bot. A reproducible ``tar.gz`` of a verified run, and a reader that refuses anything
it cannot verify.

Members (paths inside the archive, under ``bundle/``): ``ensemble.onnx``, every model's ONNX (``onnx/``) and
native files (``models/``), ``meta.json`` (the shipped predictors), ``features.json`` (feature names, spec,
fingerprint), ``manifest.json`` (the run's), ``metrics.json``, ``health.json``, ``report.md``, the holdout
predictions the shadow report compares against, ``bundle.json``: every other member with its bytes and sha256,
the run id and the sha256 of the run's manifest, and ``bundle.sig``: the publishing key's Ed25519 signature over
``bundle.json`` (``serving/trust.py``), which a bot verifies with the public key alone.

Reproducible: entries sorted, mtime 0, owner root/root (uid/gid 0), mode 0644, gzip without a name or time, and
Ed25519 signatures are deterministic, so the same run and key always give the same bytes. Opening checks the
signature and every member against ``bundle.json`` in memory before anything is used; it refuses links, absolute
paths, ``..``, duplicates and members ``bundle.json`` does not list, and bounds what it reads before reading it
(``MAX_BUNDLE_BYTES`` compressed, ``MAX_MEMBER_BYTES`` per member, ``MAX_TOTAL_BYTES`` in all, ``MAX_MEMBERS``):
a small archive that unpacks to gigabytes is refused at its first oversized header.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import manifest_signature_ok, read_manifest, verify_run
from macd_ml.errors import BundleError  # (re-exported: macd_ml.serving.bundle.BundleError)

ROOT = "bundle"
INDEX = catalog.BUNDLE_INDEX
SIGNATURE = "bundle.sig"
FORMAT = 2
# Far above a real bundle (a few MB: ONNX graphs, GBDT text, small torch weights), far below what hurts a bot.
MAX_BUNDLE_BYTES = 512 * 2**20
MAX_MEMBER_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 1024 * 2**20
MAX_MEMBERS = 4096
# what the bot needs, and what the shadow report compares against; everything else in a run stays home
FILES = (
    catalog.MANIFEST,
    catalog.METRICS,
    catalog.HEALTH,
    catalog.REPORT,
    catalog.META,
    catalog.FEATURES_META,
    catalog.TRADE_GATE,
    catalog.TRAINING_PROFILE,
    catalog.TRAINING_REFERENCE,
    catalog.CONFIG,
    catalog.SHIPPED_HOLDOUT,
    catalog.HOLDOUT_PREDICTIONS,
    catalog.PARITY,
)
FOLDERS = ("onnx/", "models/")


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle: member path (relative, e.g. ``onnx/ensemble.onnx``) -> bytes, and its index."""

    members: dict[str, bytes]
    index: dict
    sha256: str

    @property
    def run_id(self) -> str:
        return self.index["run_id"]

    def json(self, name: str) -> dict:
        return json.loads(self.members[name])

    def frame(self, name: str):
        """A parquet member as a polars frame (its bytes were verified when the bundle was opened)."""
        import polars as pl

        return pl.read_parquet(io.BytesIO(self.members[name]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_members(run_dir: Path | str) -> dict[str, bytes]:
    """The files of a verified run that go into its bundle (the run must verify against its signed manifest)."""
    run = Path(run_dir)
    manifest = verify_run(run)
    listed = [e["path"] for e in manifest["artifacts"]]
    chosen = [p for p in listed if p in FILES or p.startswith(FOLDERS)]
    missing = [
        f for f in (catalog.ENSEMBLE_ONNX, catalog.META, catalog.FEATURES_META, catalog.METRICS) if f not in chosen
    ]
    if missing:
        raise BundleError(f"{run}: the run lacks {', '.join(missing)} (made before the export stage?)")
    members = {p: (run / p).read_bytes() for p in chosen}
    members[catalog.MANIFEST] = (run / catalog.MANIFEST).read_bytes()
    return members


def default_bundle_path(run_dir: Path | str) -> Path:
    """``OUT/bundles/RUN_ID.tar.gz`` for the run folder ``OUT/runs/RUN_ID``."""
    run = Path(run_dir).resolve()
    return run.parent.parent / "bundles" / f"{run.name}.tar.gz"


def save_bundle(run_dir: Path | str, dest: Path | str | None = None):
    """Build the run's bundle and write it atomically (the store's write, with its retries) to ``dest``, default
    :func:`default_bundle_path`; returns the written file's ArtifactRef (path, bytes, sha256)."""
    from macd_ml.artifacts.store import write_bytes

    return write_bytes(dest or default_bundle_path(run_dir), build_bundle(run_dir))


def build_bundle(run_dir: Path | str, signer=None) -> bytes:
    """The bundle of a run, as bytes, signed with ``signer`` (default: this machine's publishing key, created on
    first use outside the run's output folder): the same run and key always give the same bytes."""
    from macd_ml.serving.trust import publish_signer, sign_index

    run = Path(run_dir)
    signer = signer or publish_signer(create=True, out_dir=run.resolve().parent.parent)
    members = bundle_members(run)
    manifest = read_manifest(run)
    index = {
        "format": FORMAT,
        "run_id": manifest["run_id"],
        "manifest_sha256": _sha(members[catalog.MANIFEST]),
        "members": [{"path": p, "bytes": len(d), "sha256": _sha(d)} for p, d in sorted(members.items())],
    }
    members[INDEX] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    members[SIGNATURE] = sign_index(members[INDEX], signer)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(members):
            data = members[path]
            info = tarfile.TarInfo(f"{ROOT}/{path}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != ROOT or len(p.parts) < 2:
        raise BundleError(f"member {name!r} escapes the bundle folder; refusing the bundle")
    return str(PurePosixPath(*p.parts[1:]))


def read_bundle(data: bytes, source: str = "bundle", signed: bool = False, trust=None) -> Bundle:
    """Open a bundle from its bytes: within the size bounds, every member a plain file inside ``bundle/``,
    ``bundle.sig`` a valid signature of ``bundle.json`` by a key ``trust`` holds (default
    ``Trust.resolve()``: ``MACD_ML_TRUSTED_KEYS``, else this machine's own public key), every member matching
    ``bundle.json`` and the run's manifest. ``signed``: the manifest must also carry this installation's HMAC
    signature (the training machine's own check of a run it made). Nothing is written to disk."""
    from macd_ml.serving.trust import Trust, verify_index

    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{source}: {len(data)} bytes, more than a bundle may be ({MAX_BUNDLE_BYTES}); refusing it")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{source}: not a readable tar.gz ({exc})") from None
    members: dict[str, bytes] = {}
    total = 0
    with tar:
        try:
            for info in tar:
                name = _safe_name(info.name)
                if not info.isfile():
                    raise BundleError(f"{source}: member {info.name!r} is a link or special file; refusing the bundle")
                if name in members:
                    raise BundleError(f"{source}: member {info.name!r} appears twice; refusing the bundle")
                total += info.size
                if len(members) >= MAX_MEMBERS or info.size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise BundleError(
                        f"{source}: member {info.name!r} declares {info.size} bytes ({total} so far, member "
                        f"{len(members) + 1}); more than a bundle may hold (bounds in serving/bundle.py); refusing it"
                    )
                fh = tar.extractfile(info)
                members[name] = fh.read() if fh else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{source}: damaged archive ({exc})") from None
    if INDEX not in members:
        raise BundleError(f"{source}: no {INDEX}; not a macd-ml bundle")
    raw_index = members.pop(INDEX)
    verify_index(members.pop(SIGNATURE, None), raw_index, trust or Trust.resolve(), source)
    try:
        index = json.loads(raw_index)
        listed = {e["path"]: e for e in index["members"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: {INDEX} is unreadable ({exc})") from None
    extra = sorted(set(members) - set(listed))
    if extra:
        raise BundleError(f"{source}: {extra[0]} is not listed in {INDEX}; refusing the bundle")
    for path, entry in sorted(listed.items()):
        if path not in members:
            raise BundleError(f"{source}: {path} is missing")
        if _sha(members[path]) != entry["sha256"] or len(members[path]) != entry["bytes"]:
            raise BundleError(f"{source}: {path} does not match its sha256 in {INDEX}; refusing the bundle")
    if _sha(members[catalog.MANIFEST]) != index.get("manifest_sha256"):
        raise BundleError(f"{source}: manifest.json does not match the bundle index")
    _check_against_manifest(members, index, source, signed)
    return Bundle(members=members, index=index, sha256=_sha(data))


def _check_against_manifest(members: dict[str, bytes], index: dict, source: str, signed: bool) -> None:
    """Every member is one of the run's artifacts with the manifest's sha256, for the run the index names."""
    try:
        manifest = json.loads(members[catalog.MANIFEST])
        in_run = {e["path"]: e["sha256"] for e in manifest["artifacts"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: manifest.json is unreadable ({exc})") from None
    if manifest.get("run_id") != index.get("run_id"):
        raise BundleError(
            f"{source}: {INDEX} names run {index.get('run_id')!r}, the manifest {manifest.get('run_id')!r}"
        )
    for path, data in sorted(members.items()):
        if path != catalog.MANIFEST and in_run.get(path) != _sha(data):
            raise BundleError(f"{source}: {path} is not the run's artifact (not in its manifest, or another sha256)")
    if signed and not manifest_signature_ok(manifest):
        raise BundleError(
            f"{source}: manifest.json is not signed by this installation's key (changed, or trained elsewhere)"
        )


def open_bundle(path: Path | str, trust=None) -> Bundle:
    """Read and open a bundle file (see :func:`read_bundle`); a file larger than a bundle may be is refused
    before it is read."""
    p = Path(path)
    if not p.is_file():
        from macd_ml.errors import ConfigError

        raise ConfigError(f"{p}: no such bundle file")
    try:
        size = p.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{p}: {size} bytes, more than a bundle may be ({MAX_BUNDLE_BYTES}); refusing it")
        data = p.read_bytes()
    except OSError as exc:
        raise BundleError(f"{p}: cannot read the bundle ({exc.strerror or exc})") from None
    return read_bundle(data, str(p), trust=trust)

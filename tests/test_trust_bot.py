"""Trust all the way to the bot, on small signed bundles (no flow run): Ed25519-signed bundles a bot verifies with
the public key alone, the TUF pointer (rollback, freeze, mix-and-match), serialised publishes, a DEST that points
elsewhere, a partial file under a bundle's name, rollback to a damaged or foreign bundle, and the key files."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from macd_ml.serving.bundle import BundleError, build_bundle, read_bundle
from macd_ml.serving.publish import fetch_latest, publish, read_pointer, refresh, rollback
from macd_ml.serving.trust import Trust, TrustError, key_document, public_key_path, publish_signer
from tests.cliutil import cli, spawn
from tests.trustutil import small_bundle, small_run


@pytest.fixture()
def bundles(tmp_path) -> list[bytes]:
    return [small_bundle(tmp_path, n) for n in range(4)]


@pytest.fixture()
def other_key(tmp_path, monkeypatch):
    """Switch this process to another publishing key (as another publisher or an attacker would hold)."""

    def switch(name: str = "other") -> Path:
        path = tmp_path / f"{name}-keys" / "publish-ed25519.pem"
        monkeypatch.setenv("MACD_ML_PUBLISH_KEY_FILE", str(path))
        publish_signer(create=True)
        return public_key_path(path)

    return switch


def _repack(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for p, d in sorted(members.items()):
            info = tarfile.TarInfo(f"bundle/{p}")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    return raw.getvalue()


def _members(bundle: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        return {m.name.removeprefix("bundle/"): tar.extractfile(m).read() for m in tar}


# ----------------------------------------------------------------------------------------- signed bundles


def test_a_bundle_is_signed_and_a_bot_verifies_it_with_the_public_key_alone(bundles, tmp_path, monkeypatch):
    run = small_run(tmp_path / "again", "20260101T000009Z-00000009")
    assert build_bundle(run) == build_bundle(run), "the same run and key give the same bytes (deterministic signature)"
    own_public = public_key_path()
    bot_keys = tmp_path / "bot" / "trusted.json"
    bot_keys.parent.mkdir()
    shutil.copy(own_public, bot_keys)  # all a bot holds: no private key, no HMAC key
    monkeypatch.setenv("MACD_ML_TRUSTED_KEYS", str(bot_keys))
    monkeypatch.setenv("MACD_ML_PUBLISH_KEY_FILE", str(tmp_path / "nowhere" / "publish-ed25519.pem"))
    monkeypatch.setenv("MACD_ML_KEY_FILE", str(tmp_path / "nowhere" / "signing.key"))
    b = read_bundle(bundles[0])
    assert "bundle.sig" not in b.members and b.run_id.startswith("20260101")
    assert not (tmp_path / "nowhere").exists(), "verifying created no key"


def test_unsigned_and_wrongly_signed_bundles_are_refused(bundles, tmp_path, other_key, monkeypatch):
    members = _members(bundles[0])
    unsigned = _repack({p: d for p, d in members.items() if p != "bundle.sig"})
    with pytest.raises(TrustError, match="not signed"):
        read_bundle(unsigned)
    forged_sig = json.loads(members["bundle.sig"])
    raw = bytearray(base64.b64decode(forged_sig["signatures"][0]["sig"]))
    raw[0] ^= 1  # one bit of the signature
    forged_sig["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(TrustError, match="not signed by a trusted key"):
        read_bundle(_repack({**members, "bundle.sig": json.dumps(forged_sig).encode()}))
    # a genuine signature, of another bundle's index
    swapped = {**members, "bundle.sig": _members(bundles[1])["bundle.sig"]}
    with pytest.raises(TrustError, match="signs another index"):
        read_bundle(_repack(swapped))
    # a bundle signed by another key: refused by this machine, whose trusted key is its own
    own_public = public_key_path()
    other_key()
    foreign = small_bundle(tmp_path / "foreign", 7)
    monkeypatch.setenv("MACD_ML_TRUSTED_KEYS", str(own_public))
    with pytest.raises(TrustError, match="not signed by a trusted key"):
        read_bundle(foreign)
    # and through the bot's commands: exit 3 and one line naming the refusal
    (tmp_path / "u.tar.gz").write_bytes(unsigned)
    u = str(tmp_path / "u.tar.gz")
    for argv in (
        ["predict", "--bundle", u, "--data", str(tmp_path)],
        ["shadow", "--bundle", u, "--data", str(tmp_path), "--log", str(tmp_path / "s.jsonl")],
        ["shadow-report", "--logs", str(tmp_path), "--bundle", u],
        ["backtest", u, "--data", str(tmp_path)],
        ["publish", u, "--to", str(tmp_path / "dest")],
    ):
        code, _, err = cli(*argv)
        assert code == 3 and "not signed" in err, (argv, err)
    assert not (tmp_path / "dest" / "bundles").exists() or not list((tmp_path / "dest" / "bundles").iterdir())


def test_the_opt_out_is_explicit_and_loud(bundles, capsys):
    members = _members(bundles[0])
    unsigned = _repack({p: d for p, d in members.items() if p != "bundle.sig"})
    b = read_bundle(unsigned, trust=Trust.resolve(allow_unsigned=True))
    assert b.run_id
    assert "WARNING" in capsys.readouterr().err
    read_bundle(unsigned, trust=Trust([], allow_unsigned=True))  # no key at all: still loud
    assert "WARNING" in capsys.readouterr().err
    with pytest.raises(TrustError):
        read_bundle(unsigned, trust=Trust.resolve(allow_unsigned=False))


def test_without_any_trusted_key_a_bot_is_told_what_to_set(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("MACD_ML_PUBLISH_KEY_FILE", str(tmp_path / "none" / "publish-ed25519.pem"))
    monkeypatch.setenv("MACD_ML_KEY_FILE", str(tmp_path / "none" / "signing.key"))
    monkeypatch.delenv("MACD_ML_TRUSTED_KEYS", raising=False)
    with pytest.raises(TrustError, match="MACD_ML_TRUSTED_KEYS"):
        read_bundle(bundles[0])
    # a refused publish makes no key of either kind: keys are made only by a command that signs
    (tmp_path / "b.tar.gz").write_bytes(bundles[0])
    code, _, err = cli("publish", str(tmp_path / "b.tar.gz"), "--to", str(tmp_path / "dest"))
    assert code == 3 and "MACD_ML_TRUSTED_KEYS" in err, err
    assert not (tmp_path / "none").exists()


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _bomb(members: dict[str, bytes], name: str, size: int, truncated: bool = False) -> bytes:
    """The members, then one member of ``size`` zero bytes: a small archive that unpacks to ``size`` bytes (or,
    ``truncated``, only its header: a member that declares ``size`` and holds nothing)."""
    raw = io.BytesIO()
    gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)
    with tarfile.open(fileobj=gz, mode="w") as tar:
        for p, d in sorted(members.items()):
            info = tarfile.TarInfo(f"bundle/{p}")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
        info = tarfile.TarInfo(f"bundle/{name}")
        info.size = size
        if truncated:
            gz.write(info.tobuf(tarfile.PAX_FORMAT))
        else:
            tar.addfile(info, io.BufferedReader(_Zeros(size)))
    gz.close()
    return raw.getvalue()


@pytest.mark.parametrize("case", ["300 MiB of zeros", "declares 100 GiB", "too many members"])
def test_a_bundle_that_unpacks_to_too_much_is_refused_before_it_is_read(case, bundles, tmp_path):
    members = _members(bundles[0])
    if case == "300 MiB of zeros":
        bad = _bomb(members, "onnx/zeros.onnx", 300 * 2**20)
        assert len(bad) < 2 * 2**20, "a small file"
    elif case == "declares 100 GiB":
        bad = _bomb(members, "onnx/huge.onnx", 100 * 2**30, truncated=True)
    else:
        many = {**members, **{f"onnx/m{i}.onnx": b"" for i in range(5000)}}
        bad = _repack(many)
    with pytest.raises(BundleError, match="more than a bundle may hold"):
        read_bundle(bad)
    (tmp_path / "bad.tar.gz").write_bytes(bad)
    code, _, err = cli("predict", "--bundle", str(tmp_path / "bad.tar.gz"), "--data", str(tmp_path))
    assert code == 3 and "more than a bundle may hold" in err, err


def test_a_missing_bundle_file_is_bad_input(tmp_path):
    code, _, err = cli("predict", "--bundle", str(tmp_path / "nope.tar.gz"), "--data", str(tmp_path))
    assert code == 2 and "nope.tar.gz" in err, err


# ----------------------------------------------------------------------------------------- the signed pointer


def test_publish_fetch_and_rollback_through_signed_metadata(bundles, tmp_path):
    dest, state = str(tmp_path / "dest"), tmp_path / "bot-state"
    for b in bundles[:3]:
        publish(b, dest, keep=2)
    assert fetch_latest(dest, state) == bundles[2]
    assert read_pointer(dest)["sha256"] == hashlib.sha256(bundles[2]).hexdigest()
    kept = sorted(p.name for p in (tmp_path / "dest" / "bundles").glob("*.tar.gz"))
    assert len(kept) == 2, kept
    back = rollback(dest)
    assert fetch_latest(dest, state) == bundles[1], "a rollback is a new, signed version: the bot follows it"
    assert back["rolled_back_from"]["sha256"] == hashlib.sha256(bundles[2]).hexdigest()
    with pytest.raises(BundleError, match="no earlier bundle"):
        rollback(dest)


def test_a_bot_refuses_a_pointer_older_than_one_it_has_seen(bundles, tmp_path):
    dest, state = tmp_path / "dest", tmp_path / "bot-state"
    publish(bundles[0], str(dest))
    snapshot_of_v1 = tmp_path / "dest-v1"
    shutil.copytree(dest, snapshot_of_v1)
    publish(bundles[1], str(dest))
    assert fetch_latest(str(dest), state) == bundles[1]
    # an attacker (or a restored backup) puts the older, validly signed metadata back
    shutil.rmtree(dest)
    shutil.copytree(snapshot_of_v1, dest)
    with pytest.raises(TrustError, match=r"^.*rollback refused"):
        fetch_latest(str(dest), state)
    code, _, err = cli("fetch", "--from", str(dest), "--to", str(tmp_path / "b.tar.gz"), "--state", str(state))
    assert code == 3 and "rollback refused" in err and len(err.strip().splitlines()) == 1, err


def test_a_bot_refuses_metadata_past_its_expiry(bundles, tmp_path):
    dest, state = str(tmp_path / "dest"), tmp_path / "bot-state"
    signed_at = datetime.now(timezone.utc) - timedelta(days=10)
    publish(bundles[0], dest, expires_days=7, now=signed_at)  # nobody signed for 10 days: frozen
    with pytest.raises(TrustError, match="freeze refused"):
        fetch_latest(dest, state)
    refresh(dest, expires_days=7)
    assert fetch_latest(dest, state) == bundles[0], "re-signing the same pointer ends the freeze"


def test_metadata_signed_by_another_key_is_refused_by_the_bot_and_by_publish(bundles, tmp_path, other_key, monkeypatch):
    dest, state = str(tmp_path / "dest"), tmp_path / "bot-state"
    own_public = public_key_path()
    publish(bundles[0], dest)
    fetch_latest(dest, state)
    # someone with another key rewrites DEST from scratch
    other_public = other_key()
    monkeypatch.setenv("MACD_ML_TRUSTED_KEYS", str(other_public))
    forged = small_bundle(tmp_path / "forged", 8)
    shutil.rmtree(tmp_path / "dest")
    publish(forged, dest, trust=Trust.resolve())
    monkeypatch.setenv("MACD_ML_TRUSTED_KEYS", str(own_public))
    with pytest.raises(TrustError):
        fetch_latest(dest, state)  # the bot trusts the root it has seen; the new one is not signed by its key
    with pytest.raises(TrustError, match="no root metadata signed by a trusted key"):
        fetch_latest(dest, tmp_path / "new-bot")  # a new bot, holding only the real public key


def test_edited_metadata_is_refused(bundles, tmp_path):
    dest, state = tmp_path / "dest", tmp_path / "bot-state"
    publish(bundles[0], str(dest))
    publish(bundles[1], str(dest))
    (t,) = sorted((dest / "metadata").glob("2.targets.json"))
    doc = json.loads(t.read_text())
    doc["signed"]["targets"]["LATEST"]["custom"]["bundle"] = doc["signed"]["targets"]["LATEST"]["custom"]["history"][0][
        "bundle"
    ]
    t.write_text(json.dumps(doc))
    with pytest.raises(TrustError):
        fetch_latest(str(dest), state)
    with pytest.raises(TrustError, match="not signed"):
        publish(bundles[2], str(dest))  # publish verifies the repository before it adds to it


# ----------------------------------------------------------------------------------------- publish races, DEST


@pytest.mark.parametrize("where", ["folder", "memory"])
def test_concurrent_publishes_never_leave_the_pointer_on_a_pruned_bundle(bundles, tmp_path, where):
    dest = str(tmp_path / "dest") if where == "folder" else f"memory://macd-ml-race-{tmp_path.name}"
    errors: list[Exception] = []

    def go(b):
        try:
            publish(b, dest, keep=1)
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(b,)) for b in bundles * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert fetch_latest(dest, tmp_path / "bot") in bundles
    pointer = read_pointer(dest)
    import fsspec

    fs, root = fsspec.core.url_to_fs(dest)
    for entry in [pointer, *pointer["history"]]:
        assert fs.exists(f"{root.rstrip('/')}/bundles/{entry['bundle']}"), entry


def test_a_publisher_that_read_the_repository_holds_the_others_until_it_has_written(bundles, tmp_path, monkeypatch):
    """Deterministic form of the race: publisher A has read the repository and is held there; publisher B starts.
    With publishers serialised, B reads only after A has written (its read comes too late to release A, who waits
    out its hold), and both publishes count. Without it, both read version 1 and one overwrites the other: a lost
    bundle, a pointer history missing it, and metadata one version short."""
    from macd_ml.serving import publish as pub

    dest = str(tmp_path / "dest")
    publish(bundles[0], dest, keep=3)
    real, loads, both = pub._Repo, [], threading.Event()

    def held(*args, **kwargs):
        repo = real(*args, **kwargs)
        loads.append(repo)
        if len(loads) == 2:
            both.set()
        both.wait(2.0)
        return repo

    monkeypatch.setattr(pub, "_Repo", held)
    threads = [threading.Thread(target=publish, args=(b, dest), kwargs={"keep": 3}) for b in bundles[1:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(pub, "_Repo", real)
    pointer = read_pointer(dest)
    named = {pointer["bundle"], *(h["bundle"] for h in pointer["history"])}
    shas = {hashlib.sha256(b).hexdigest()[:12] for b in bundles[:3]}
    assert {n.rsplit("-", 1)[1].removesuffix(".tar.gz") for n in named} == shas, named
    assert json.loads((tmp_path / "dest" / "metadata" / "timestamp.json").read_text())["signed"]["version"] == 3
    for name in named:
        assert (tmp_path / "dest" / "bundles" / name).is_file(), name


@pytest.mark.heavy  # six CLI processes
def test_publish_in_two_processes_at_once(bundles, tmp_path):
    """Two CLI publishes of different bundles into one folder, three times: the pointer always names a bundle
    that is there and verifies."""
    files = []
    for i, b in enumerate(bundles[:2]):
        files.append(tmp_path / f"b{i}.tar.gz")
        files[-1].write_bytes(b)
    dest = tmp_path / "dest"
    for _ in range(3):
        procs = [spawn("publish", f, "--to", dest, "--keep", "1") for f in files]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert fetch_latest(str(dest), tmp_path / "bot") in bundles[:2]


def test_publish_never_writes_or_deletes_outside_dest(bundles, tmp_path):
    dest, elsewhere = tmp_path / "dest", tmp_path / "users-backups"
    elsewhere.mkdir()
    (elsewhere / "backup-2024.tar.gz").write_bytes(b"precious")
    dest.mkdir()
    (dest / "bundles").symlink_to(elsewhere)
    with pytest.raises(BundleError, match="symlink"):
        publish(bundles[0], str(dest))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["backup-2024.tar.gz"]
    # a file publish did not write, with a bundle-like name, is never pruned
    (dest / "bundles").unlink()
    (dest / "bundles").mkdir()
    stranger = dest / "bundles" / "20200101T000000Z-00000000-0123456789ab.tar.gz"
    stranger.write_bytes(b"not ours")
    for b in bundles:
        publish(b, str(dest), keep=1)
    assert stranger.read_bytes() == b"not ours"


def test_a_partial_file_under_a_bundles_name_is_rewritten_not_trusted(bundles, tmp_path):
    dest = tmp_path / "dest"
    publish(bundles[0], str(dest))
    sha = hashlib.sha256(bundles[1]).hexdigest()
    name = f"{read_bundle(bundles[1]).run_id}-{sha[:12]}.tar.gz"
    (dest / "bundles" / name).write_bytes(bundles[1][: len(bundles[1]) // 2])  # a publish killed mid-write
    publish(bundles[1], str(dest))
    assert (dest / "bundles" / name).read_bytes() == bundles[1]
    assert fetch_latest(str(dest), tmp_path / "bot") == bundles[1]


def test_rollback_accepts_only_names_of_its_own_format_that_it_published(bundles, tmp_path):
    """A history entry naming a path outside DEST (as a buggy or forged signer could write one) is refused
    before anything is read or moved."""
    from macd_ml.serving import publish as pub

    dest = tmp_path / "dest"
    publish(bundles[0], str(dest))
    publish(bundles[1], str(dest))
    before = read_pointer(str(dest))

    def plant(repo, targets):
        pointer = {**repo.pointer(), "history": [{"bundle": "../../../../etc/passwd", "run_id": "x"}]}
        targets["LATEST"] = pub._target("LATEST", 1, "0" * 64, pointer)
        return pointer

    pub._commit(str(dest), plant, 7.0, None)  # signed with the real key: only the name is wrong
    code, _, err = cli("rollback", "--to", str(dest))
    assert code == 3 and "not a bundle this repository published" in err, err
    assert read_pointer(str(dest))["bundle"] == before["bundle"]


def test_rollback_refuses_a_damaged_previous_bundle(bundles, tmp_path):
    dest = tmp_path / "dest"
    publish(bundles[0], str(dest))
    publish(bundles[1], str(dest))
    before = read_pointer(str(dest))
    previous = dest / "bundles" / before["history"][0]["bundle"]
    previous.write_bytes(previous.read_bytes()[:-10] + b"0123456789")
    code, _, err = cli("rollback", "--to", str(dest))
    assert code == 3 and "does not match its sha256" in err, err
    assert read_pointer(str(dest)) == before, "nothing moved"


def test_the_public_key_file_is_what_a_bot_copies(tmp_path):
    signer = publish_signer()
    doc = json.loads(public_key_path().read_text())
    assert doc == key_document(signer.public_key) and "private" not in json.dumps(doc)
    assert os.stat(os.environ["MACD_ML_PUBLISH_KEY_FILE"]).st_mode & 0o077 == 0
    code, stdout, _ = cli("keys")
    assert code == 0 and str(public_key_path()) in stdout and signer.public_key.keyid in stdout


@pytest.mark.parametrize("kind", ["fifo", "device", "others-readable"])
def test_unusable_key_files_are_refused_at_once(kind, tmp_path, monkeypatch):
    path = tmp_path / "publish-ed25519.pem"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        shutil.copy(os.environ["MACD_ML_PUBLISH_KEY_FILE"], path)
        path.chmod(0o644)
    monkeypatch.setenv("MACD_ML_PUBLISH_KEY_FILE", str(path))
    with pytest.raises(TrustError) as info:
        publish_signer()
    msg = str(info.value)
    assert ("not a regular file" in msg) if kind != "others-readable" else ("chmod 600" in msg), msg
    assert "/dev/zero" not in msg or "chmod" not in msg


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_the_cache_signing_key_must_be_a_regular_file_too(kind, tmp_path, monkeypatch):
    path = tmp_path / "signing.key"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    monkeypatch.setenv("MACD_ML_KEY_FILE", str(path))
    code, _, err = cli("retrain", "--out", str(tmp_path / "out"), "--set", "horizons=[5]")
    assert code == 2 and "not a regular file" in err and "chmod" not in err, err


def test_the_lease_serialises_publishers_on_an_object_store(bundles, tmp_path):
    """Object stores have no flock: publishers take a lease object in turn (a memory filesystem under another
    protocol name stands in for s3:// or gs://)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class ObjectStore(MemoryFileSystem):
        protocol = ("macdmlobj",)
        store: dict = {}
        pseudo_dirs = [""]

    fsspec.register_implementation("macdmlobj", ObjectStore, clobber=True)
    dest = f"macdmlobj://bucket/{tmp_path.name}"
    errors: list[Exception] = []

    def go(b):
        try:
            publish(b, dest, keep=1)
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(b,)) for b in bundles[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert fetch_latest(dest, tmp_path / "bot") in bundles[:3]
    pointer = read_pointer(dest)
    assert pointer["history"] == [] and len(ObjectStore.store) > 0
    fs, root = fsspec.core.url_to_fs(dest)
    assert fs.exists(f"{root}/bundles/{pointer['bundle']}") and not fs.exists(f"{root}/.publish.lock")
    assert json.loads(fs.cat_file(f"{root}/metadata/timestamp.json"))["signed"]["version"] == 3

"""Trust nothing on disk, part 1: forged cache records never run code, nothing pickled is left behind, result
writes that cannot happen fail the run, identical content publishes no duplicate.

Every test here failed on the code before its fix."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from macd_ml.artifacts import signing, store
from macd_ml.tasks import results
from tests.flowutil import flow_logs, forget_unchanged, latest_flow_run_id, task_states
from tests.test_faults import _chattr_works, immutable
from tests.trustutil import FAST, _flip, _holds_pickle, _records, _retrain, _spawn_cli

# --------------------------------------------------------------------------------------------- 1. forged records


def _pickle_record(key: str, marker: Path) -> bytes:
    # protocol-0 pickle of os.system("touch MARKER"), written by hand: the test needs no pickle module
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    record = {
        "metadata": {
            "storage_key": key,
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None},
            "prefect_version": "3.9.1",
            "storage_block_id": None,
        },
        "result": base64.b64encode(payload).decode(),
    }
    return json.dumps(record).encode()


def _decoder_record(key: str, marker: Path) -> bytes:
    # JSON serializer whose object_decoder is subprocess.run: the dict's keys become argv ("touch", MARKER)
    record = {
        "metadata": {
            "storage_key": key,
            "expiration": None,
            "serializer": {
                "type": "json",
                "jsonlib": "json",
                "object_encoder": None,
                "object_decoder": "subprocess.run",
                "dumps_kwargs": {},
                "loads_kwargs": {},
            },
            "prefect_version": "3.9.1",
            "storage_block_id": None,
        },
        "result": json.dumps({"touch": 0, str(marker): 0}),
    }
    return json.dumps(record).encode()


@pytest.mark.usefixtures("prefect_server")
def test_forged_cache_records_never_run_and_the_run_still_succeeds(market, tmp_path):
    """Every record replaced by a forgery, the two kinds taking turns (one rerun meets both): a pickle payload, and
    JSON that names ``subprocess.run`` as its object decoder."""
    out = tmp_path / "out"
    code, _, err = _retrain(market, out)
    assert code == 0, err
    marker = tmp_path / "owned"
    records = sorted(_records(out))
    assert len(records) >= 2
    forges = (_pickle_record, _decoder_record)
    for i, p in enumerate(records):
        p.write_bytes(forges[i % 2](p.name, marker))
    # a forged record that copies a genuine signature header is refused too (the signature binds the key)
    victim = next(p for p in records if p.name.startswith("features-"))
    header = b"macd-ml-signed-v1 " + signing.sign(results.PURPOSE, "other-key", b"x").encode() + b"\n"
    victim.write_bytes(header + _pickle_record(victim.name, marker))

    forget_unchanged(out)  # the flow must run and meet the forged records
    code, _, err = _retrain(market, out)
    assert code == 0, err
    assert not marker.exists(), "a forged cache record executed code"
    states = task_states(latest_flow_run_id())
    assert states["features"] == "Completed", states
    logs = "\n".join(flow_logs(latest_flow_run_id()))
    assert f"cache record {victim}" in logs and "not used" in logs
    # the stages log with the standard library, and their lines reach the run's log (the UI) all the same
    assert re.search(r"features: \d+ rows x \d+ features", logs), logs[-2000:]
    decoder_victim = next(p for i, p in enumerate(records) if i % 2 == 1 and p != victim)
    assert f"cache record {decoder_victim}" in logs, "a record naming another decoder is refused and named too"


def test_signed_record_naming_another_serializer_is_refused(tmp_path):
    """Even a correctly signed record (say, written under an older configuration) is decoded only with ours."""
    storage = results.SignedResultStorage(basepath=str(tmp_path))
    marker = tmp_path / "owned"
    storage.write_path("features-x", _pickle_record("features-x", marker))
    with pytest.raises(results.StaleRecord, match="serializer"):
        storage.read_path("features-x")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_signed_storage_round_trip_and_tamper(where, tmp_path):
    """Local folders and fsspec URLs (memory:// stands in for s3:// or gs://) are signed alike."""
    import fsspec

    base = str(tmp_path / "r") if where == "local" else f"memory://macd-ml-{tmp_path.name}"
    storage = results.SignedResultStorage(basepath=base)
    ref = store.write_json(tmp_path / "a.json", {"a": 1})
    body = {
        "metadata": {"serializer": {"type": "macd-ml-json"}},
        "result": results.SafeJSONSerializer().dumps({"x": ref}).decode(),
    }
    raw = json.dumps(body).encode()
    storage.write_path("k1", raw)
    assert storage.read_path("k1") == raw
    target = str(tmp_path / "r" / "k1") if where == "local" else f"{base}/k1"
    fs, path = fsspec.core.url_to_fs(target)
    fs.pipe_file(path, fs.cat_file(path).replace(b"a.json", b"b.json"))
    with pytest.raises(results.StaleRecord, match="signature"):
        storage.read_path("k1")
    storage.write_path("k2", raw)
    _flip(tmp_path / "a.json", 2)  # the artifact the record refers to changes
    with pytest.raises(results.StaleRecord, match="damaged"):
        storage.read_path("k2")
    with pytest.raises(ValueError, match="outside|escapes"):
        storage.write_path("../k3", raw)


def test_safe_serializer_decodes_only_allow_listed_types():
    s = results.SafeJSONSerializer()
    ref = store.ArtifactRef(path="/x", sha256="a" * 64, bytes=1)
    assert s.loads(s.dumps({"r": ref})) == {"r": ref}
    with pytest.raises(ValueError, match="not allowed"):
        s.loads(b'{"__model__": "subprocess.Popen", "data": {"args": ["true"]}}')
    err = s.loads(b'{"__error__": "os.system", "message": "touch /tmp/x"}')
    assert isinstance(err, results.UnknownResultError), "an unknown error type is never looked up by name"


# --------------------------------------------------------------------------------------------- 2. no pickles


@pytest.mark.usefixtures("prefect_server")
def test_no_pickle_on_disk_after_a_failed_run(market, tmp_path):
    out, home = tmp_path / "out", tmp_path / "prefect-home"
    # every model flagged collapsed: the stack task fails, so failed task and flow states are persisted
    proc = _spawn_cli(
        ["retrain", "--data", str(market), "--out", str(out), *FAST, "--set", "models.collapse_std=1"],
        home,
        tmp_path / "run.log",
    )
    assert proc.wait(300) == 3, (tmp_path / "run.log").read_text()[-3000:]
    files = [p for root in (out, home) for p in root.rglob("*") if p.is_file() and ".db" not in p.name]
    assert any(p.parent.name == "results" for p in files), "failed results were persisted somewhere we scan"
    pickled = [str(p) for p in files if _holds_pickle(p)]
    assert pickled == []


# --------------------------------------------------------------------------------------------- 8. result writes


@pytest.mark.usefixtures("prefect_server")
def test_unwritable_result_cache_fails_the_run_clearly(market, tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr for an immutable folder")
    out = tmp_path / "out"
    (out / "cache" / "results").mkdir(parents=True)
    with immutable(out / "cache" / "results"):
        code, _, err = _retrain(market, out)
    assert code == 1, err
    line = next(ln for ln in err.splitlines() if ln.startswith("macd-ml: run"))
    assert str(out / "cache" / "results") in line and "immutable" in line and "chattr" in line, err
    assert store.current_run(out) is None


@pytest.mark.usefixtures("prefect_server")
def test_forced_recompute_of_unchanged_content_publishes_no_duplicate(market, tmp_path):
    out = tmp_path / "out"
    assert _retrain(market, out)[0] == 0
    first = store.current_run(out)
    code, stdout, err = _retrain(market, out, "--force")
    assert code == 0, err
    states = task_states(latest_flow_run_id())
    assert states["lgb-fold0"] == "Completed", "force recomputed the stages"
    assert [p.name for p in (out / "runs").iterdir()] == [first] and first in stdout


def test_a_new_signing_key_appears_whole_so_two_first_runs_share_it(tmp_path, monkeypatch):
    """Two commands starting at once on a fresh machine both create the key: the file must never be seen half
    written (the second once read 0 bytes and refused: 'signing key is too short'), and both must use one key."""
    import os
    import threading

    from macd_ml.artifacts import signing

    path = tmp_path / "cfg" / "signing.key"
    seen_while_writing = []
    write = os.write

    def slow_write(fd, data):  # the moment a reader could look: the key's own path must not exist yet
        seen_while_writing.append(path.exists())
        return write(fd, data)

    monkeypatch.setattr(signing.os, "write", slow_write)
    threads = [threading.Thread(target=signing._create, args=(path,)) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert seen_while_writing and not any(seen_while_writing[:1])
    keys = {path.read_bytes()}
    assert len(keys) == 1 and len(path.read_bytes().strip()) >= 32
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) == "0o600"

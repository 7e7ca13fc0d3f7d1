"""Trust nothing on disk (issue 8): forged cache records never run code, nothing pickled is left behind, run ids
stay inside OUT/runs, what is served or promoted is verified, damaged cache entries are recomputed, killed writers
leave nothing that looks finished, unwritable result caches fail loudly, the temporary server dies with its
command, and bad input is found before anything is written.

Every test here failed on the code before the fix (see the closing note of issue 8)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from features.synth import synth_market, write_market
from tasks import results, signing, store
from tasks.store import IntegrityError, verify_run
from tests.flowutil import flow_logs, latest_flow_run_id, run_cli, task_states
from tests.test_faults import IS_ROOT, _chattr_works, immutable

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "folds.n_folds=3", "--set", 'models.enabled=["lgb"]']


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trust-market")
    write_market(synth_market(hours=3_000, seed=5, gaps=1), d)
    return d


def _retrain(market: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(["retrain", "--data", str(market), "--out", str(out), *FAST, *extra])


def _records(out: Path) -> list[Path]:
    return sorted(p for p in (out / "cache" / "results").iterdir() if p.is_file() and not p.name.startswith("."))


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------- 1. forged records


def _pickle_record(key: str, marker: Path) -> bytes:
    # protocol-0 pickle of os.system("touch MARKER"), written by hand: the test needs no pickle module
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    record = {"metadata": {"storage_key": key, "expiration": None,
                           "serializer": {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None},
                           "prefect_version": "3.9.1", "storage_block_id": None},
              "result": base64.b64encode(payload).decode()}
    return json.dumps(record).encode()


def _decoder_record(key: str, marker: Path) -> bytes:
    # JSON serializer whose object_decoder is subprocess.run: the dict's keys become argv ("touch", MARKER)
    record = {"metadata": {"storage_key": key, "expiration": None,
                           "serializer": {"type": "json", "jsonlib": "json", "object_encoder": None,
                                          "object_decoder": "subprocess.run", "dumps_kwargs": {}, "loads_kwargs": {}},
                           "prefect_version": "3.9.1", "storage_block_id": None},
              "result": json.dumps({"touch": 0, str(marker): 0})}
    return json.dumps(record).encode()


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("forge", [_pickle_record, _decoder_record], ids=["pickle", "json-object-decoder"])
def test_forged_cache_records_never_run_and_the_run_still_succeeds(forge, market, tmp_path):
    out = tmp_path / "out"
    code, _, err = _retrain(market, out)
    assert code == 0, err
    marker = tmp_path / "owned"
    records = _records(out)
    assert records
    victim = next(p for p in records if p.name.startswith("features-"))
    for p in records:
        p.write_bytes(forge(p.name, marker))
    # a forged record that copies a genuine signature header is refused too (the signature binds the key)
    header = b"macd-ml-signed-v1 " + signing.sign(results.PURPOSE, "other-key", b"x").encode() + b"\n"
    victim.write_bytes(header + forge(victim.name, marker))

    code, _, err = _retrain(market, out)
    assert code == 0, err
    assert not marker.exists(), "a forged cache record executed code"
    states = task_states(latest_flow_run_id())
    assert states["features"] == "Completed", states
    logs = "\n".join(flow_logs(latest_flow_run_id()))
    assert f"cache record {victim}" in logs and "not used" in logs


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
    body = {"metadata": {"serializer": {"type": "macd-ml-json"}},
            "result": results.SafeJSONSerializer().dumps({"x": ref}).decode()}
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


_B64_PICKLE = re.compile(rb"gA[SNJU][A-Za-z0-9+/]{12,}={0,2}")


def _holds_pickle(path: Path) -> bool:
    data = path.read_bytes()
    if re.match(rb"\x80[\x02-\x05]", data):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False  # a binary format of ours (parquet, safetensors, PNG): a pickle in it would start it
    if b"picklelib" in data or b'"type": "pickle"' in data or b'"type":"pickle"' in data:
        return True
    for m in _B64_PICKLE.finditer(data):
        try:
            if re.match(rb"\x80[\x02-\x05]", base64.b64decode(m.group(0) + b"=" * (-len(m.group(0)) % 4))):
                return True
        except ValueError:
            continue
    return False


def _spawn_cli(args: list[str], home: Path, log: Path, **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home), **env_extra}
    env.pop("PREFECT_API_URL", None)
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_no_pickle_on_disk_after_a_failed_run(market, tmp_path):
    out, home = tmp_path / "out", tmp_path / "prefect-home"
    # every model flagged collapsed: the stack task fails, so failed task and flow states are persisted
    proc = _spawn_cli(["retrain", "--data", str(market), "--out", str(out), *FAST, "--set", "models.collapse_std=1"],
                      home, tmp_path / "run.log")
    assert proc.wait(300) == 3, (tmp_path / "run.log").read_text()[-3000:]
    files = [p for root in (out, home) for p in root.rglob("*") if p.is_file() and ".db" not in p.name]
    assert any(p.parent.name == "results" for p in files), "failed results were persisted somewhere we scan"
    pickled = [str(p) for p in files if _holds_pickle(p)]
    assert pickled == []


# --------------------------------------------------------------------------------------------- 3. run ids


def test_run_id_that_escapes_runs_is_refused(tmp_path, small_market_dir):
    out = tmp_path / "o"
    # a record planted where the traversal would look for it: OUT/cache/run-configs/../../elsewhere.json
    rec = out / "elsewhere.json"
    (out / "cache" / "run-configs").mkdir(parents=True)
    rec.write_text(json.dumps({"run_id": "../../elsewhere", "config": {"data_dir": str(small_market_dir),
                                                                       "out_dir": str(out)}}))
    code, _, err = run_cli(["resume", "../../elsewhere", "--out", str(out)])
    assert code == 2 and "not a macd-ml run id" in err, err
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(Exception, match="not a macd-ml run id"):
        store.run_dir(out, "../x")


# --------------------------------------------------------------------------------------------- 4-6. served = verified


@pytest.mark.usefixtures("prefect_server")
def test_rerunning_an_earlier_config_moves_current_back(market, tmp_path):
    out = tmp_path / "out"
    assert _retrain(market, out)[0] == 0
    a = store.current_run(out)
    assert _retrain(market, out, "--set", "models.lgb.num_leaves=7")[0] == 0
    b = store.current_run(out)
    assert a != b
    code, stdout, _ = _retrain(market, out)
    assert code == 0 and a in stdout
    assert store.current_run(out) == a, "current points at the run the command returned"


@pytest.mark.usefixtures("prefect_server")
def test_tampered_run_is_not_served_and_a_rerun_rebuilds_it(market, tmp_path):
    out = tmp_path / "out"
    assert _retrain(market, out)[0] == 0
    x = store.current_run(out)
    model = out / "runs" / x / "models" / "lgb" / "lgb_h5.txt"
    _flip(model)
    with pytest.raises(IntegrityError, match="lgb_h5.txt"):
        store.load_run_model(out / "runs" / x, "lgb")

    code, stdout, err = _retrain(market, out)
    assert code == 0, err
    y = store.current_run(out)
    assert y != x and x not in stdout, "the damaged run was served"
    verify_run(out / "runs" / y)
    assert store.load_run_model(out / "runs" / y, "lgb").horizons == [5, 12, 24]

    code, _, err = run_cli(["resume", x, "--out", str(out)])
    assert "already complete" not in err and code == 0, err
    assert "sha256 mismatch" in err


def test_rewritten_manifest_is_refused(tmp_path):
    """Changing a file *and* its manifest entry (a writable folder alone) fails the manifest's signature."""
    rid = "20250101T000000Z-00000abc"
    run = store.publish_run(tmp_path, rid, lambda d: {"a.json": store.write_json(d / "a.json", {"v": 1})}).path
    (Path(run) / "a.json").write_text('{"v": 2}')
    manifest = json.loads((Path(run) / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = store.sha256_file(Path(run) / "a.json")
    manifest["artifacts"][0]["bytes"] = (Path(run) / "a.json").stat().st_size
    (Path(run) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="signature"):
        verify_run(run)
    verify_run(run, signed=False)  # as input from elsewhere, only the checksums count
    with pytest.raises(IntegrityError):
        store.promote(tmp_path, rid)


@pytest.mark.usefixtures("prefect_server")
def test_corrupted_cache_artifact_is_a_cache_miss(market, tmp_path):
    out = tmp_path / "out"
    assert _retrain(market, out)[0] == 0
    (feat,) = (out / "cache" / "features").glob("*/features.parquet")
    _flip(feat)
    code, _, err = _retrain(market, out, "--set", "models.lgb.num_leaves=7")
    assert code == 0, err
    fr = latest_flow_run_id()
    states = task_states(fr)
    assert states["features"] == "Completed" and states["ingest"] == "Cached", states
    assert "\n".join(flow_logs(fr)).count(str(feat)) >= 1, "the log names the damaged file"
    code, _, err = _retrain(market, out, "--set", "models.lgb.num_leaves=7")  # and it stays repaired
    assert code == 0 and task_states(latest_flow_run_id())["features"] == "Cached", err


# --------------------------------------------------------------------------------------------- 7. killed publish


@pytest.mark.usefixtures("prefect_server")
def test_run_killed_while_its_folder_is_written_is_never_mistaken_for_a_run(market, tmp_path):
    out, home = tmp_path / "out", tmp_path / "home"
    proc = _spawn_cli(["retrain", "--data", str(market), "--out", str(out), *FAST], home, tmp_path / "k.log",
                      MACD_ML_FAILPOINT=f"kill-after-writes:{out}/runs/*:4")
    assert proc.wait(300) == -signal.SIGKILL, (tmp_path / "k.log").read_text()[-2000:]
    (record,) = (out / "cache" / "run-configs").glob("*.json")
    run_id = record.stem
    assert not (out / "runs" / run_id).exists(), "a half-written folder carries the run's name"
    assert list((out / "runs").glob(".staging-*")), "the killed writer left its staging folder"
    assert store.current_run(out) is None

    code, stdout, err = run_cli(["resume", run_id, "--out", str(out)])
    assert code == 0 and run_id in stdout, err
    verify_run(out / "runs" / run_id)
    assert store.current_run(out) == run_id
    assert not list((out / "runs").glob(".staging-*")) and not list(out.rglob("*.tmp"))


def test_half_written_legacy_folder_is_quarantined_and_rebuilt(tmp_path):
    rid = "20250101T000000Z-0000beef"
    half = tmp_path / "runs" / rid
    half.mkdir(parents=True)
    for i in range(4):
        (half / f"f{i}.json").write_text("{}")
    ref = store.publish_run(tmp_path, rid, lambda d: {"a.json": store.write_json(d / "a.json", {"v": 1})})
    verify_run(ref.path)
    (kept,) = (tmp_path / "runs" / ".quarantine").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == [f"f{i}.json" for i in range(4)], "nothing is deleted"


def test_stale_temp_files_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / "cache" / f".model.txt.{dead_pid}.0123abcd.tmp"
    live = tmp_path / "cache" / f".model.txt.{os.getpid()}.0123abcd.tmp"
    staging = tmp_path / "runs" / f".staging-20250101T000000Z-00000001-{dead_pid}-0123abcd"
    for p in (stale, live):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    staging.mkdir(parents=True)
    removed = store.clean_stale_temp(tmp_path)
    assert set(removed) == {stale, staging}
    assert live.exists()


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


# --------------------------------------------------------------------------------------------- 9. orphaned server


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the server process")
def test_temporary_server_dies_when_the_command_is_killed(market, tmp_path):
    out = tmp_path / "out"
    proc = _spawn_cli(["retrain", "--data", str(market), "--out", str(out), "--set", "folds.n_folds=3",
                       "--set", 'models.enabled=["lstm"]', "--set", "models.lstm.max_epochs=50",
                       "--set", "models.lstm.patience=50"], tmp_path / "home", tmp_path / "s.log")
    deadline = time.time() + 120
    server = []
    while time.time() < deadline and not server:
        server = [k for k in _children(proc.pid) if b"flows.local_api" in Path(f"/proc/{k}/cmdline").read_bytes()]
        time.sleep(0.2)
    assert server, "no server child found:\n" + (tmp_path / "s.log").read_text()[-2000:]
    while time.time() < deadline and not (out / "cache" / "run-configs").exists():
        time.sleep(0.2)  # the server answered and the flow started
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    gone_by = time.time() + 15
    while time.time() < gone_by and _alive(server[0]):
        time.sleep(0.2)
    try:
        assert not _alive(server[0]), "the temporary Prefect server outlived its command"
    finally:
        if _alive(server[0]):
            os.kill(server[0], signal.SIGKILL)


# --------------------------------------------------------------------------------------------- 10-11. bad input early


def test_price_that_overflows_float32_is_bad_input(small_market_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(small_market_dir, data)
    eth = data / "ETHUSDT_1h.csv"
    lines = eth.read_text().splitlines()
    cols = lines[100].split(",")
    cols[4] = cols[2] = "1e308"  # close and high
    lines[100] = ",".join(cols)
    eth.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["retrain", "--data", str(data), "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "ETHUSDT_1h.csv, row 100" in err and "float32" in err, err
    assert not (tmp_path / "o").exists()


def test_non_finite_feature_is_named_with_its_timestamp():
    import polars as pl

    from features.build import check_model_range
    from features.errors import DataError

    ts = pl.datetime_range(pl.datetime(2024, 1, 1, time_zone="UTC"), pl.datetime(2024, 1, 1, 3, time_zone="UTC"),
                           "1h", eager=True)
    frame = pl.DataFrame({"timestamp": ts, "ret_1": [0.0, 0.1, float("inf"), 0.2], "vol": [1.0, 1e39, 1.0, 1.0]})
    with pytest.raises(DataError, match=r"'vol' is 1e\+39 at 2024-01-01T01:00:00"):
        check_model_range(frame, ["ret_1", "vol"], "ETHUSDT_1h.csv")


@pytest.mark.parametrize("setting", ["horizons=[true]", "folds.n_folds=true", "dead_zone_bps=false"])
def test_booleans_are_not_numbers(setting, small_market_dir, tmp_path):
    code, _, err = run_cli(["retrain", "--data", str(small_market_dir), "--out", str(tmp_path / "o"),
                            "--set", setting])
    assert code == 2 and "boolean" in err and setting.split("=")[0] in err, err
    assert not (tmp_path / "o").exists()


def _trimmed(src: Path, dst: Path, hours: int) -> Path:
    dst.mkdir()
    for f in src.glob("*.csv"):
        lines = f.read_text().splitlines()
        (dst / f.name).write_text("\n".join(lines[: hours + 1]) + "\n")
    return dst


@pytest.mark.parametrize("hours,extra,expect", [
    (200, [], "no feature rows"),
    (300, [], "too few"),
    (1000, [], "labelled fitting rows"),
    (3000, ["--set", "horizons=[10000]"], "'horizons': h=10000"),
])
def test_knowable_problems_end_before_the_first_write(hours, extra, expect, market, tmp_path):
    data = _trimmed(market, tmp_path / "d", hours)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--data", str(data), "--out",
                           str(tmp_path / "o"), *FAST, *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PREFECT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expect in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "o").exists() and not (tmp_path / "home").exists(), "nothing written, no server started"


@pytest.mark.usefixtures("prefect_server")
def test_nothing_to_ship_ends_with_exit_3_and_no_resume_advice(market, tmp_path):
    code, _, err = _retrain(market, tmp_path / "o", "--set", "models.collapse_std=1")
    assert code == 3, err
    ours = [ln for ln in err.splitlines() if ln.startswith("macd-ml:")]  # (Prefect's log lines aside)
    assert len(ours) == 1 and "nothing can ship" in ours[0] and "resume" not in ours[0], err


# --------------------------------------------------------------------------------------------- 12. resume any run


def _ui_run_with_blocked_folder(market: Path, out: Path, blocked: str):
    """Call the flow directly, as a UI or scheduled run does, with OUT/BLOCKED immutable; return (state, log)."""
    if not _chattr_works(out.parent):
        pytest.skip("needs root and chattr for a real permission failure")
    from flows.config import RetrainConfig
    from flows.retrain import retrain

    (out / blocked).mkdir(parents=True)
    cfg = RetrainConfig.model_validate({"data_dir": str(market), "out_dir": str(out), "folds": {"n_folds": 3},
                                        "models": {"enabled": ["lgb"]}})
    with immutable(out / blocked):
        state = retrain(cfg, return_state=True)
    return state, "\n".join(flow_logs(state.state_details.flow_run_id))


@pytest.mark.usefixtures("prefect_server")
def test_resume_finishes_a_run_started_outside_the_cli(market, tmp_path):
    """A UI or scheduled run calls the flow directly; the log's `macd-ml resume RUN_ID` must work for it."""
    out = tmp_path / "out"
    state, logs = _ui_run_with_blocked_folder(market, out, "cache/report")
    assert state.is_failed()
    run_id = re.search(r"resume with: macd-ml resume (\S+) --out", logs).group(1)
    code, stdout, err = run_cli(["resume", run_id, "--out", str(out)])
    assert code == 0 and run_id in stdout, err
    states = task_states(latest_flow_run_id())
    assert {k for k, v in states.items() if v != "Cached"} == {"report", "publish-run", "promote"}, states


@pytest.mark.usefixtures("prefect_server")
def test_unrecorded_run_names_the_command_that_works(market, tmp_path):
    state, logs = _ui_run_with_blocked_folder(market, tmp_path / "out", "cache/run-configs")
    assert f"prefect flow-run retry {state.state_details.flow_run_id}" in logs
    assert "resume with: macd-ml resume" not in logs


# --------------------------------------------------------------------------------------------- 13. messages


def test_non_utf8_config_names_the_file(tmp_path, small_market_dir):
    cfg = tmp_path / "c.json"
    cfg.write_bytes(b'{"horizons": [5],\n "target": "ETH\xff"}')
    code, _, err = run_cli(["retrain", "--data", str(small_market_dir), "--config", str(cfg), "--out", str(tmp_path)])
    assert code == 2 and str(cfg) in err and "UTF-8" in err and "line 2" in err, err


def test_non_utf8_csv_names_the_row(tmp_path):
    from features.errors import DataError
    from features.ingest import read_candles

    f = tmp_path / "ETHUSDT.csv"
    f.write_bytes(b"timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\n"
                  b"2024-01-01 01:00:00,1,2,0.5,1.5,1\xff0\n")
    with pytest.raises(DataError, match=r"ETHUSDT.csv, row 2: not utf-8"):
        read_candles(f)


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unreadable_data_folder_is_bad_input(tmp_path, small_market_dir):
    base = Path(tempfile_dir := os.path.join("/tmp", f"macd-unreadable-{os.getpid()}"))
    try:
        data = base / "data"
        shutil.copytree(small_market_dir, data)
        base.chmod(0o755)
        data.chmod(0o700)  # root's; nobody cannot list it
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "flows.cli",
             "features", "--data", str(data), "--out", "/tmp/never.parquet"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp", "MACD_ML_KEY_FILE": "/tmp/nokey"})
        assert proc.returncode == 2 and str(data) in proc.stderr and "Permission denied" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(tempfile_dir, ignore_errors=True)


def test_corrupt_manifest_is_named(tmp_path):
    run = tmp_path / "runs" / "20250101T000000Z-00000001"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"artifacts": [')
    code, _, err = run_cli(["report", str(run), "--out", str(tmp_path / "r")])
    assert code == 2 and str(run / "manifest.json") in err and "not valid JSON" in err, err


def test_write_error_hints_tell_immutable_from_permissions(tmp_path):
    import errno

    eperm = store._write_error(tmp_path / "x", OSError(errno.EPERM, "Operation not permitted"))
    eacces = store._write_error(tmp_path / "x", OSError(errno.EACCES, "Permission denied"))
    erofs = store._write_error(tmp_path / "x", OSError(errno.EROFS, "Read-only file system"))
    assert "chattr" in str(eperm) and "chown" not in str(eperm)
    assert "write access" in str(eacces) and "chattr" not in str(eacces)
    assert "read-only" in str(erofs)


@pytest.mark.usefixtures("prefect_server")
def test_a_failed_write_logs_one_traceback_and_one_console_line(market, tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr for a real permission failure")
    out = tmp_path / "out"
    (out / "cache" / "report").mkdir(parents=True)
    with immutable(out / "cache" / "report"):
        code, _, err = _retrain(market, out)
    assert code == 1
    logs = flow_logs(latest_flow_run_id())
    assert sum(m.count("Traceback (most recent call last)") for m in logs) == 1, "\n".join(logs)[-4000:]
    failed = [ln for ln in err.splitlines() if ln.startswith("macd-ml:")]
    assert len(failed) == 2 and "cannot write" in failed[0] and "resume" in failed[1], err  # what, then what to do

    # the console of a real process: no traceback at all
    home = tmp_path / "home"
    with immutable(out / "cache" / "report"):
        proc = _spawn_cli(["retrain", "--data", str(market), "--out", str(out), *FAST, "--set",
                           "models.lgb.num_leaves=9"], home, tmp_path / "c.log")
        assert proc.wait(300) == 1
    console = (tmp_path / "c.log").read_text()
    assert "Traceback" not in console and "macd-ml: run" in console, console[-3000:]

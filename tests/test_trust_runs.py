"""Trust nothing on disk, part 2: run ids stay inside OUT/runs, what is served or promoted is verified, killed
writers leave nothing that looks finished, the temporary server dies with its command.

Every test here failed on the code before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from macd_ml.artifacts import store
from macd_ml.artifacts.store import IntegrityError, verify_run
from macd_ml.models.learners.registry import load_run_model
from tests.cliutil import cli
from tests.flowutil import flow_logs, forget_unchanged, latest_flow_run_id, task_states
from tests.trustutil import FAST, _flip, _retrain, _spawn_cli

# --------------------------------------------------------------------------------------------- 3. run ids


def test_run_id_that_escapes_runs_is_refused(tmp_path, small_market_dir):
    out = tmp_path / "o"
    # a record planted where the traversal would look for it: OUT/cache/run-configs/../../elsewhere.json
    rec = out / "elsewhere.json"
    (out / "cache" / "run-configs").mkdir(parents=True)
    rec.write_text(
        json.dumps({"run_id": "../../elsewhere", "config": {"data_dir": str(small_market_dir), "out_dir": str(out)}})
    )
    code, _, err = cli("resume", "../../elsewhere", "--out", str(out))
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
    assert _retrain(market, out, "--set", "models.lgb.num_leaves=5")[0] == 0
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
        load_run_model(out / "runs" / x, "lgb")

    code, stdout, err = _retrain(market, out)
    assert code == 0, err
    y = store.current_run(out)
    assert y != x and x not in stdout, "the damaged run was served"
    verify_run(out / "runs" / y)
    assert load_run_model(out / "runs" / y, "lgb").horizons == [5, 12, 24]

    code, _, err = cli("resume", x, "--out", str(out))
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
    code, _, err = _retrain(market, out, "--set", "models.lgb.num_leaves=5")
    assert code == 0, err
    fr = latest_flow_run_id()
    states = task_states(fr)
    assert states["features"] == "Completed" and states["ingest"] == "Cached", states
    assert "\n".join(flow_logs(fr)).count(str(feat)) >= 1, "the log names the damaged file"
    forget_unchanged(out)  # the flow must run and look its cache up
    code, _, err = _retrain(market, out, "--set", "models.lgb.num_leaves=5")  # and it stays repaired
    assert code == 0 and task_states(latest_flow_run_id())["features"] == "Cached", err


# --------------------------------------------------------------------------------------------- 7. killed publish


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a CLI process killed while it writes
def test_run_killed_while_its_folder_is_written_is_never_mistaken_for_a_run(market, tmp_path):
    out, home = tmp_path / "out", tmp_path / "home"
    proc = _spawn_cli(
        ["retrain", "--data", str(market), "--out", str(out), *FAST],
        home,
        tmp_path / "k.log",
        MACD_ML_FAILPOINT=f"kill-after-writes:{out}/runs/*:4",
    )
    assert proc.wait(300) == -signal.SIGKILL, (tmp_path / "k.log").read_text()[-2000:]
    (record,) = (out / "cache" / "run-configs").glob("*.json")
    run_id = record.stem
    assert not (out / "runs" / run_id).exists(), "a half-written folder carries the run's name"
    assert list((out / "runs").glob(".staging-*")), "the killed writer left its staging folder"
    assert store.current_run(out) is None

    code, stdout, err = cli("resume", run_id, "--out", str(out))
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


def test_a_temp_file_of_another_host_is_judged_by_its_age_not_by_a_local_pid(tmp_path):
    """On a shared OUT a Dask worker on another host writes with its own pids: a pid that is dead here says nothing
    about it. Its temp file is kept while fresh, removed once untouched for an hour."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other = "0" * 8 if store.HOST != "0" * 8 else "1" * 8
    fresh = tmp_path / "cache" / f".model.txt.{other}-{int(dead.stdout)}.0123abcd.tmp"
    old = tmp_path / "cache" / f".oof.parquet.{other}-{int(dead.stdout)}.0123abcd.tmp"
    ours = tmp_path / "cache" / f".meta.json.{store.HOST}-{int(dead.stdout)}.0123abcd.tmp"
    staging = tmp_path / "runs" / f".staging-20250101T000000Z-00000001-{other}-{int(dead.stdout)}-0123abcd"
    for p in (fresh, old, ours):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    staging.mkdir(parents=True)
    hour_ago = time.time() - store.LEGACY_TEMP_AGE_S - 60
    os.utime(old, (hour_ago, hour_ago))
    removed = store.clean_stale_temp(tmp_path)
    assert set(removed) == {old, ours}, removed
    assert fresh.exists() and staging.exists()
    assert store.temp_name("x.json").startswith(f".x.json.{store.HOST}-{os.getpid()}.")


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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the server process")
@pytest.mark.heavy  # a CLI process with its own server, killed
def test_temporary_server_dies_when_the_command_is_killed(market, tmp_path):
    out = tmp_path / "out"
    proc = _spawn_cli(
        [
            "retrain",
            "--data",
            str(market),
            "--out",
            str(out),
            "--set",
            "folds.n_folds=3",
            "--set",
            'models.enabled=["lstm"]',
            "--set",
            "models.lstm.max_epochs=50",
            "--set",
            "models.lstm.patience=50",
        ],
        tmp_path / "home",
        tmp_path / "s.log",
        shared_api=False,  # this test is about the temporary server
    )
    deadline = time.time() + 120
    server = []
    while time.time() < deadline and not server:
        server = [
            k for k in _children(proc.pid) if b"macd_ml.flows.local_api" in Path(f"/proc/{k}/cmdline").read_bytes()
        ]
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

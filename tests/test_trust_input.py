"""Trust nothing on disk, part 3: bad input found before anything is written, resume for every run, messages.

Every test here failed on the code before its fix."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from macd_ml.artifacts import store
from tests.cliutil import cli
from tests.flowutil import ALWAYS_RUN, flow_logs, latest_flow_run_id, lenient, task_states
from tests.test_faults import IS_ROOT, _chattr_works, immutable
from tests.trustutil import FAST, ROOT, _retrain, _spawn_cli

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
    code, _, err = cli("retrain", "--data", str(data), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "ETHUSDT_1h.csv, row 100" in err and "float32" in err, err
    assert not (tmp_path / "o").exists()


def test_non_finite_feature_is_named_with_its_timestamp():
    import polars as pl

    from macd_ml.errors import DataError
    from macd_ml.features.build import check_model_range

    ts = pl.datetime_range(
        pl.datetime(2024, 1, 1, time_zone="UTC"), pl.datetime(2024, 1, 1, 3, time_zone="UTC"), "1h", eager=True
    )
    frame = pl.DataFrame({"timestamp": ts, "ret_1": [0.0, 0.1, float("inf"), 0.2], "vol": [1.0, 1e39, 1.0, 1.0]})
    with pytest.raises(DataError, match=r"'vol' is 1e\+39 at 2024-01-01T01:00:00"):
        check_model_range(frame, ["ret_1", "vol"], "ETHUSDT_1h.csv")


@pytest.mark.parametrize("setting", ["horizons=[true]", "folds.n_folds=true", "dead_zone_bps=false"])
def test_booleans_are_not_numbers(setting, small_market_dir, tmp_path):
    code, _, err = cli("retrain", "--data", str(small_market_dir), "--out", str(tmp_path / "o"), "--set", setting)
    assert code == 2 and "boolean" in err and setting.split("=")[0] in err, err
    assert not (tmp_path / "o").exists()


def _trimmed(src: Path, dst: Path, hours: int) -> Path:
    dst.mkdir()
    for f in src.glob("*.csv"):
        lines = f.read_text().splitlines()
        (dst / f.name).write_text("\n".join(lines[: hours + 1]) + "\n")
    return dst


@pytest.mark.parametrize(
    "hours,extra,expect",
    [
        (200, [], "no feature rows"),
        (300, [], "too few"),
        (1000, [], "labelled fitting rows"),
        (3000, ["--set", "horizons=[10000]"], "'horizons': h=10000"),
    ],
)
def test_knowable_problems_end_before_the_first_write(hours, extra, expect, market, tmp_path):
    data = _trimmed(market, tmp_path / "d", hours)
    proc = cli(
        "retrain",
        "--data",
        data,
        "--out",
        tmp_path / "o",
        *FAST,
        *extra,
        subprocess=True,
        cwd=ROOT,
        timeout=120,
        env={"PREFECT_HOME": str(tmp_path / "home")},
    )
    assert proc.code == 2, proc.err[-2000:]
    assert expect in proc.err and len(proc.err.strip().splitlines()) == 1, proc.err
    assert "Traceback" not in proc.err + proc.out
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
    from macd_ml.flows.config import RetrainConfig
    from macd_ml.flows.retrain import retrain

    (out / blocked).mkdir(parents=True)
    cfg = RetrainConfig.model_validate(
        {"data_dir": str(market), "out_dir": str(out), "folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}}
    )
    with immutable(out / blocked):
        state = retrain(lenient(cfg), return_state=True)
    return state, "\n".join(flow_logs(state.state_details.flow_run_id))


@pytest.mark.usefixtures("prefect_server")
def test_resume_finishes_a_run_started_outside_the_cli(market, tmp_path):
    """A UI or scheduled run calls the flow directly; the log's `macd-ml resume RUN_ID` must work for it."""
    out = tmp_path / "out"
    state, logs = _ui_run_with_blocked_folder(market, out, "cache/report")
    assert state.is_failed()
    run_id = re.search(r"resume with: macd-ml resume (\S+) --out", logs).group(1)
    code, stdout, err = cli("resume", run_id, "--out", str(out))
    assert code == 0 and run_id in stdout, err
    states = task_states(latest_flow_run_id())
    assert {k for k, v in states.items() if v != "Cached"} == {"report", "publish-run", "bundle"} | ALWAYS_RUN, states


@pytest.mark.usefixtures("prefect_server")
def test_unrecorded_run_names_the_command_that_works(market, tmp_path):
    state, logs = _ui_run_with_blocked_folder(market, tmp_path / "out", "cache/run-configs")
    assert f"prefect flow-run retry {state.state_details.flow_run_id}" in logs
    assert "resume with: macd-ml resume" not in logs


# --------------------------------------------------------------------------------------------- 13. messages


def test_non_utf8_config_names_the_file(tmp_path, small_market_dir):
    cfg = tmp_path / "c.json"
    cfg.write_bytes(b'{"horizons": [5],\n "target": "ETH\xff"}')
    code, _, err = cli("retrain", "--data", str(small_market_dir), "--config", str(cfg), "--out", str(tmp_path))
    assert code == 2 and str(cfg) in err and "UTF-8" in err and "line 2" in err, err


def test_non_utf8_csv_names_the_row(tmp_path):
    from macd_ml.errors import DataError
    from macd_ml.features.ingest import read_candles

    f = tmp_path / "ETHUSDT.csv"
    f.write_bytes(
        b"timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\n"
        b"2024-01-01 01:00:00,1,2,0.5,1.5,1\xff0\n"
    )
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
        proc = cli(
            "features",
            "--data",
            data,
            "--to",
            "/tmp/never.parquet",
            subprocess=True,
            wrap=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
            cwd=ROOT,
            timeout=120,
            env={"PYTHONPATH": str(ROOT), "HOME": "/tmp", "MACD_ML_KEY_FILE": "/tmp/nokey"},
        )
        assert proc.code == 2 and str(data) in proc.err and "Permission denied" in proc.err, proc.err
    finally:
        shutil.rmtree(tempfile_dir, ignore_errors=True)


def test_corrupt_manifest_is_named(tmp_path):
    run = tmp_path / "runs" / "20250101T000000Z-00000001"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"artifacts": [')
    code, _, err = cli("report", str(run), "--into", str(tmp_path / "r"))
    # a damaged run folder is refused like a tampered one (exit 3), naming the file and what to do
    assert code == 3 and str(run / "manifest.json") in err and "not valid JSON" in err and "retrain" in err, err


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
    """A real process whose report write keeps failing: its console shows no traceback and ends with what failed
    and what to do; the run's log on the server holds exactly one traceback."""
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr for a real permission failure")
    out = tmp_path / "out"
    (out / "cache" / "report").mkdir(parents=True)
    with immutable(out / "cache" / "report"):
        proc = _spawn_cli(
            ["retrain", "--data", str(market), "--out", str(out), *FAST], tmp_path / "home", tmp_path / "c.log"
        )
        assert proc.wait(300) == 1
    console = (tmp_path / "c.log").read_text()
    assert "Traceback" not in console, console[-3000:]
    ours = [ln for ln in console.splitlines() if ln.startswith("macd-ml:")]
    assert len(ours) == 2 and "cannot write" in ours[0] and "macd-ml resume" in ours[1], console[-3000:]
    logs = flow_logs(latest_flow_run_id())
    assert sum(m.count("Traceback (most recent call last)") for m in logs) == 1, "\n".join(logs)[-4000:]

"""Fault injection with the real mechanisms: immutable folders (EPERM even for root), a full tmpfs (ENOSPC),
SIGKILL in the middle of the fold stage, a tampered byte, and two runs at once."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from macd_ml.artifacts import store
from macd_ml.artifacts.store import ArtifactWriteError, IntegrityError, promote, verify_run, write_bytes
from macd_ml.features.synth import synth_market, write_market
from tests.cliutil import cli
from tests.flowutil import ALWAYS_RUN, flow_run_of, flow_run_since, latest_flow_run_id, spawn_cli, task_states

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _can(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _chattr_works(tmp: Path) -> bool:
    d = tmp / "chattr-probe"
    d.mkdir()
    ok = IS_ROOT and shutil.which("chattr") and _can(["chattr", "+i", str(d)])
    if ok:
        _can(["chattr", "-i", str(d)])
    return bool(ok)


@contextmanager
def immutable(path: Path):
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@contextmanager
def tiny_fs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------- store level


def test_permission_denied_twice_then_written(tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr on this file system for a real permission failure")
    folder = tmp_path / "models"
    folder.mkdir()
    failures: list[ArtifactWriteError] = []

    def lift_after_second(dest, attempt, err):
        failures.append(err)
        if attempt == 2:
            subprocess.run(["chattr", "-i", str(folder)], check=True)

    subprocess.run(["chattr", "+i", str(folder)], check=True)
    store.RETRY_HOOKS.append(lift_after_second)
    try:
        ref = write_bytes(folder / "lgb_h5.txt", b"tree 0\n")
    finally:
        store.RETRY_HOOKS.remove(lift_after_second)
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    assert len(failures) == 2
    assert all(f.errno in (errno.EPERM, errno.EACCES) for f in failures)
    msg = str(failures[0])
    assert str(folder / "lgb_h5.txt") in msg and "owned by root" in msg and "immutable" in msg
    assert (folder / "lgb_h5.txt").read_bytes() == b"tree 0\n" and ref.bytes == 7
    assert sorted(p.name for p in folder.iterdir()) == ["lgb_h5.txt"], "no temp file left behind"


def test_disk_full_mid_write_leaves_old_file_and_no_partial(tmp_path):
    if not IS_ROOT or not _can(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(_probe(tmp_path))]):
        pytest.skip("needs root and tmpfs mounts for a real ENOSPC")
    subprocess.run(["umount", "-l", str(tmp_path / "probe")], check=False)
    with tiny_fs(tmp_path / "tiny", "64k") as fs:
        write_bytes(fs / "meta.json", b'{"old": true}')
        with pytest.raises(ArtifactWriteError) as exc:
            write_bytes(fs / "meta.json", os.urandom(200_000))
        assert exc.value.errno == errno.ENOSPC and "disk is full" in str(exc.value)
        assert (fs / "meta.json").read_bytes() == b'{"old": true}'
        assert _temp_files(fs) == []


def _probe(tmp_path: Path) -> Path:
    p = tmp_path / "probe"
    p.mkdir(exist_ok=True)
    return p


RID = "20250101T000000Z-0000000a"


def test_tampered_run_artifact_is_refused(tmp_path):
    run = tmp_path / "runs" / RID
    refs = {"models/lgb/lgb_h5.txt": write_bytes(run / "models/lgb/lgb_h5.txt", b"tree 0 leaf 0.1\n")}
    store.write_manifest(run, refs)
    verify_run(run)
    p = run / "models/lgb/lgb_h5.txt"
    data = bytearray(p.read_bytes())
    data[5] ^= 0x20
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        verify_run(run)
    with pytest.raises(IntegrityError):
        promote(tmp_path, RID)
    assert not (tmp_path / "current").exists()


def _minimal_runs(out: Path, *run_ids: str) -> None:
    """Complete, signed run folders holding one small file each: enough for promotion, which verifies them."""
    for r in run_ids:
        store.write_manifest(out / "runs" / r, {"a.json": store.write_json(out / "runs" / r / "a.json", {"r": r})})


def test_promotions_happen_one_at_a_time(tmp_path):
    ids = [f"20250101T000000Z-0000000{i}" for i in range(8)]
    _minimal_runs(tmp_path, *ids)
    errors = []

    def go(r):
        try:
            promote(tmp_path, r)
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=go, args=(r,)) for r in ids * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.current_run(tmp_path) in ids
    verify_run(tmp_path / "current")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_two_challengers_of_one_champion_never_both_win(tmp_path):
    """Runs A and B were both compared with champion C. A's promotion is held just before its swap; B's starts
    meanwhile. B must wait for A and then find that ``current`` is no longer C: refused, nothing moved. Without
    the one-at-a-time lock, B would swap first and A would then silently replace it, never compared with B."""
    c, a, b = (f"20250101T000000Z-0000000{i}" for i in "cab")
    _minimal_runs(tmp_path, c, a, b)
    promote(tmp_path, c)
    inside, release = threading.Event(), threading.Event()

    def hold_a(out, run_id):
        if run_id == a:
            inside.set()
            release.wait(10)

    outcome: dict[str, object] = {}

    def go(r):
        try:
            promote(tmp_path, r, champion=c)
            outcome[r] = "promoted"
        except store.ChampionMoved as exc:
            outcome[r] = exc

    store.PROMOTE_HOOKS.append(hold_a)
    try:
        ta = threading.Thread(target=go, args=(a,))
        ta.start()
        assert inside.wait(10)
        tb = threading.Thread(target=go, args=(b,))
        tb.start()
        tb.join(1.0)  # with the lock B is still waiting here; without it, B has already swapped
        release.set()
        ta.join(10)
        tb.join(10)
    finally:
        store.PROMOTE_HOOKS.remove(hold_a)
    assert outcome[a] == "promoted" and isinstance(outcome[b], store.ChampionMoved), outcome
    assert f"moved to run {a}" in str(outcome[b]) and f"compared with run {c}" in str(outcome[b])
    assert store.current_run(tmp_path) == a
    # compared with the new champion, B may move it; an unchecked promotion always may
    promote(tmp_path, b, champion=a)
    assert store.current_run(tmp_path) == b
    with pytest.raises(store.ChampionMoved, match="no champion"):
        promote(tmp_path, c, champion=None)
    promote(tmp_path, c)
    assert store.current_run(tmp_path) == c


# --------------------------------------------------------------------------------------------- flow level

FAST = ["--set", "folds.n_folds=3", "--set", 'models.enabled=["lgb","xgb"]']


@pytest.fixture(scope="module")
def market_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault-market")
    write_market(synth_market(hours=4_000, seed=21, gaps=1), d)
    return d


def _artifacts(run: Path) -> dict[str, str]:
    return {a["path"]: a["sha256"] for a in verify_run(run)["artifacts"]}


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a write failing through every retry, a failed run, then its resume: three runs
def test_write_that_keeps_failing_then_resume_runs_only_what_failed(market_dir, tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr for a real permission failure")
    out = tmp_path / "out"
    blocked = out / "cache" / "report"
    blocked.mkdir(parents=True)
    with immutable(blocked):
        code, _, err = cli("retrain", "--data", str(market_dir), "--out", str(out), *FAST)
    assert code == 1
    assert "cannot write" in err and str(blocked) in err and "resume" in err, err
    run_id = re.search(r"run (\S+) failed", err).group(1)
    assert not (out / "runs" / run_id / "manifest.json").exists()
    assert store.current_run(out) is None, "a failed run is never promoted"

    code, stdout, err = cli("resume", run_id, "--out", str(out))
    assert code == 0, err
    states = task_states(latest_flow_run_id())
    reran = {k for k, v in states.items() if v != "Cached"}
    assert reran == {"report", "publish-run", "bundle"} | ALWAYS_RUN, states  # bundle: never reached before
    assert store.current_run(out) == run_id

    # the same artifacts as an uninterrupted run
    clean = tmp_path / "clean"
    code, _, err = cli("retrain", "--data", str(market_dir), "--out", str(clean), *FAST)
    assert code == 0, err
    a, b = _artifacts(out / "runs" / run_id), _artifacts(next((clean / "runs").iterdir()))
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    # run_id / out_dir / seconds / the promotion decision (it names the run) only
    assert differ <= {"metrics.json", "config.json", "timings.json", "promotion.json", "report.md"}, differ
    ma = json.loads((out / "runs" / run_id / "metrics.json").read_text())
    mb = json.loads(next((clean / "runs").iterdir()).joinpath("metrics.json").read_text())
    for m in (ma, mb):
        m.pop("run_id")
        m.pop("training")  # wall-clock fit times
    assert ma == mb


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a tmpfs filled mid-run, then a rerun
def test_disk_full_during_a_run_keeps_current_and_earlier_runs(market_dir, tmp_path):
    if not IS_ROOT or not _can(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(_probe(tmp_path))]):
        pytest.skip("needs root and tmpfs mounts for a real ENOSPC")
    subprocess.run(["umount", "-l", str(tmp_path / "probe")], check=False)
    with tiny_fs(tmp_path / "fs", "48m") as out:
        code, _, err = cli("retrain", "--data", str(market_dir), "--out", str(out), *FAST)
        assert code == 0, err
        first = store.current_run(out)
        before = _artifacts(out / "runs" / first)
        # fill the disk to within ~64 KB, then run with one changed parameter
        free = shutil.disk_usage(out).free
        (out / "filler").write_bytes(b"\0" * max(0, free - 64_000))
        code, _, err = cli(
            "retrain", "--data", str(market_dir), "--out", str(out), *FAST, "--set", "models.lgb.num_leaves=5"
        )
        assert code == 1 and "disk is full" in err, err
        assert store.current_run(out) == first
        assert _artifacts(out / "runs" / first) == before
        assert _temp_files(out) == [], "no partial artifact left behind"
        for run in (out / "runs").iterdir():
            if run.name != first:
                assert not (run / "manifest.json").exists()


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # two retrains and a resume
def test_a_bundle_that_cannot_be_written_leaves_current_on_the_previous_run(market_dir, tmp_path):
    """The bundle is written before ``current`` moves (flows/pipeline.py, ship): while a new run's bundle cannot be
    written, ``current`` keeps naming the previous run, whose bundle is there; the new run is published, not
    current, and ``macd-ml resume RUN_ID`` (what the failure advises) finishes it: every stage comes back Cached,
    the same run folder is returned, its bundle is written, then it is promoted."""
    if not _chattr_works(tmp_path):
        pytest.skip("needs root and chattr for a real permission failure")
    out = tmp_path / "out"
    code, _, err = cli("retrain", "--data", str(market_dir), "--out", str(out), *FAST)
    assert code == 0, err
    first = store.current_run(out)
    first_bundle = out / "bundles" / f"{first}.tar.gz"
    assert first_bundle.is_file()

    again = ["retrain", "--data", str(market_dir), "--out", str(out), *FAST, "--set", "models.lgb.num_leaves=5"]
    with immutable(out / "bundles"):  # no new file can appear there; the first run's bundle stays
        code, _, err = cli(*again)
    assert code == 1, err
    second = re.search(r"run (\d{8}T\d{6}Z-[0-9a-f]{8})\b", err).group(1)
    assert second != first and "failed" in err, err[-2000:]
    states = task_states(flow_run_of(second))
    assert states["bundle"] == "Failed" and "promote" not in states, states
    assert store.current_run(out) == first and first_bundle.is_file()
    verify_run(out / "runs" / second)  # published, complete, not current
    assert not (out / "bundles" / f"{second}.tar.gz").exists()
    assert f"macd-ml resume {second} --out {out}" in err, err[-2000:]

    started = datetime.now(timezone.utc)
    code, out_text, err = cli("resume", second, "--out", str(out))
    assert code == 0, err
    assert f"run {second} is published but its bundle" in err, err
    assert f"run folder: {out / 'runs' / second}" in out_text, out_text
    states = task_states(flow_run_since(started))
    assert {k for k, v in states.items() if v != "Cached"} == {"bundle"} | ALWAYS_RUN, states
    assert store.current_run(out) == second and (out / "bundles" / f"{second}.tar.gz").is_file()
    code, out_text, _ = cli("resume", second, "--out", str(out))  # finished now: nothing runs
    assert code == 0 and f"run {second} is already complete" in out_text, out_text


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return spawn_cli(args, log, shared_api=True)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a CLI process killed mid-stage, then resumed
def test_sigkill_mid_fold_stage_then_resume_keeps_finished_folds(market_dir, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "killed.log"
    proc = _spawn(
        [
            "retrain",
            "--data",
            str(market_dir),
            "--out",
            str(out),
            "--set",
            "folds.n_folds=3",
            "--set",
            'models.enabled=["lgb","xgb","lstm"]',
            "--set",
            "models.lstm.max_epochs=6",
        ],
        log,
    )
    deadline = time.time() + 240
    done: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "cache" / "oof").glob("*/*.parquet")) if (out / "cache" / "oof").exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    # finished = the fold's predictions are written *and* its result record is committed (the kill can fall in
    # between, and then the fold rightly runs again); a record is named by the key its cache folder starts with
    records = [r.name for r in (out / "cache" / "results").iterdir()] if (out / "cache" / "results").exists() else []
    finished = {p.stem for p in done if any(r.startswith(p.parent.name) for r in records)}  # e.g. "lgb_fold0"
    assert finished, (done, records)
    (record,) = (out / "cache" / "run-configs").glob("*.json")
    run_id = record.stem
    assert not (out / "runs" / run_id / "manifest.json").exists()

    code, _, err = cli("resume", run_id, "--out", str(out))
    assert code == 0, err
    states = task_states(latest_flow_run_id())
    for stem in finished:
        model, fold = stem.rsplit("_fold", 1)
        assert states[f"{model}-fold{fold}"] == "Cached", (stem, states)
    assert any(v == "Completed" for k, v in states.items() if "-fold" in k), "unfinished folds ran"
    verify_run(out / "runs" / run_id)
    assert store.current_run(out) == run_id


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # two CLI processes, each with its own Prefect server
def test_two_runs_at_once_write_separate_folders(market_dir, tmp_path):
    out = tmp_path / "out"
    procs = [
        _spawn(
            [
                "retrain",
                "--data",
                str(market_dir),
                "--out",
                str(out),
                *FAST,
                "--set",
                f"models.lgb.seed={s}",
                "--set",
                f"models.xgb.seed={s}",
            ],
            tmp_path / f"run{s}.log",
        )
        for s in (1, 2)
    ]
    codes = [p.wait(timeout=400) for p in procs]
    logs = [(tmp_path / f"run{s}.log").read_text() for s in (1, 2)]
    # Each run is promoted (compared with whatever was current when it got there) or, when the other was
    # promoted between its comparison and its promotion, refused (exit 3) with the command that compares again:
    # never both promoted over the same champion.
    assert 0 in codes and set(codes) <= {0, 3}, [log[-3000:] for log in logs]
    for code, log in zip(codes, logs):
        if code == 3:
            assert "moved to run" in log and "start the same retrain again" in log, log[-3000:]
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2
    for r in runs:
        verify_run(r)
    assert store.current_run(out) in {r.name for r in runs}
    assert _temp_files(out) == []


def test_a_run_that_lost_the_race_is_refused_with_the_command_that_compares_again(tmp_path):
    from macd_ml.errors import PromotionRefused
    from macd_ml.tasks.publish import promote_task

    c, a, b = (f"20250101T000000Z-0000000{i}" for i in "cab")
    _minimal_runs(tmp_path, c, a, b)
    promote(tmp_path, c)
    promote(tmp_path, a, champion=c)
    with pytest.raises(PromotionRefused, match=f"run {b} published but not promoted.*start the same retrain again"):
        promote_task.fn(str(tmp_path), store.run_ref(tmp_path / "runs" / b), c)
    assert store.current_run(tmp_path) == a


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # four CLI retrains around a champion moved mid-run
def test_a_retrain_whose_champion_moved_is_refused_and_the_same_retrain_compares_again(
    market_dir, tmp_path, monkeypatch
):
    """Through the CLI: another run is promoted between this run's champion/challenger decision and its
    promotion. The run is published, not promoted (exit 3, one line naming the new champion and what to do); the
    same command started again reuses every stage, compares that run folder with the new champion, promotes it."""
    import macd_ml.flows.pipeline as pipeline_module

    out = tmp_path / "out"
    code, _, err = cli("retrain", "--data", str(market_dir), "--out", str(out), *FAST)
    assert code == 0, err
    first = store.current_run(out)
    other = "20250101T000000Z-0000000f"  # a run promoted by someone else meanwhile (minimal, signed)
    _minimal_runs(out, other)
    champion = pipeline_module.champion_task

    def decide_then_lose_the_race(*args, **kwargs):
        decision = champion.fn(*args, **kwargs)
        promote(out, other)
        return decision

    racing = champion.with_options()  # the same task (name, no cache), its body swapped for the racing one
    racing.fn = decide_then_lose_the_race

    again = ["retrain", "--data", str(market_dir), "--out", str(out), *FAST, "--set", "models.lgb.num_leaves=5"]
    monkeypatch.setattr(pipeline_module, "champion_task", racing)
    code, _, err = cli(*again)
    monkeypatch.undo()
    line = next(ln for ln in err.splitlines() if ln.startswith("macd-ml:"))
    assert code == 3 and f"moved to run {other}" in line and f"compared with run {first}" in line, err
    assert "start the same retrain again" in line, line
    refused = re.search(r"run (\S+) published but not promoted", line).group(1)
    assert store.current_run(out) == other and (out / "runs" / refused / "manifest.json").is_file()

    code, _, err = cli(*again)
    assert code == 0, err
    assert store.current_run(out) == refused
    states = task_states(latest_flow_run_id())
    assert {k for k, v in states.items() if v != "Cached"} <= ALWAYS_RUN | {"bundle"}, states


# the resume runs in this process: on the session's API, as every other in-process run here (a run on a temporary API
# of its own would leave Prefect's process-wide events worker sending later tests' task states to it once it stops)
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a CLI process with its own server, stopped mid-stage, then resumed
def test_sigterm_ends_a_retrain_within_seconds_with_one_line_and_it_resumes(market_dir, tmp_path):
    """``timeout 60 macd-ml retrain``, systemd's stop, a Kubernetes eviction: SIGTERM to the process group ends
    the command within seconds (not minutes), with one line and exit 143, and the same command then finishes the
    run from what was cached."""
    out = tmp_path / "out"
    args = [
        "retrain",
        "--data",
        str(market_dir),
        "--out",
        str(out),
        "--set",
        "folds.n_folds=3",
        "--set",
        'models.enabled=["lgb","lstm"]',
        "--set",
        "models.lstm.max_epochs=8",
    ]
    log = tmp_path / "stopped.log"
    proc = spawn_cli(args, log)  # its own temporary Prefect server, as a user's shell would start it
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        oof = out / "cache" / "oof"
        if oof.exists() and list(oof.glob("*/*.parquet")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped:\n" + log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait(30)  # before, the command lived on for 2-3 minutes (the note records the time measured)
    text = log.read_text()
    assert code in (143, 1), (code, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    stopped = [line for line in text.splitlines() if line.startswith("macd-ml:")]
    assert len(stopped) == 1 and "stopped" in stopped[0] and "again" in stopped[0], stopped
    code, _, err = cli(*args)
    assert code == 0, err
    assert store.current_run(out) is not None

"""Nothing changed, nothing paid: a run whose config, code and candles produced the current run ends at
once, through the CLI (no server, no task) and the nightly's flow (``skip_unchanged``); anything that could change
the result, or a current run that no longer verifies, runs the flow as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import macd_ml.flows.unchanged as unchanged
from macd_ml.artifacts.store import current_run, promote
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.unchanged import fingerprint, unchanged_run
from tests.cliutil import cli
from tests.flowutil import lenient, run_flow, task_states

pytestmark = pytest.mark.usefixtures("prefect_server")


def _config(data_dir, out_dir, **kw) -> RetrainConfig:
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), folds={"n_folds": 3}, models={"enabled": ["lgb"]})
    base.update(kw)
    return lenient(RetrainConfig.model_validate(base))


@pytest.fixture(scope="module")
def promoted(small_market_dir, tmp_path_factory, prefect_server):
    """A copy of the small market (tests edit it), one promoted run on it, and its config."""
    base = tmp_path_factory.mktemp("unchanged")
    data = base / "data"
    shutil.copytree(small_market_dir, data)
    config = _config(data, base / "out")
    path, _ = run_flow(config)
    assert current_run(config.out_dir) == Path(path).name
    return config, Path(path)


def test_the_current_run_is_recognised_only_for_its_own_config_code_and_candles(promoted, monkeypatch):
    config, run = promoted
    out = config.out_dir
    assert unchanged_run(out, fingerprint(config)) == run

    # anything that decides the content gives another fingerprint, and no answer
    other = config.model_copy(update={"horizons": [5, 12]})
    assert fingerprint(other) != fingerprint(config) and unchanged_run(out, fingerprint(other)) is None
    lgb = config.models.lgb.model_copy(update={"seed": 1})
    seeded = config.model_copy(update={"models": config.models.model_copy(update={"lgb": lgb})})
    assert unchanged_run(out, fingerprint(seeded)) is None
    monkeypatch.setattr(unchanged, "code_version", lambda module: "edited")
    assert unchanged_run(out, fingerprint(config)) is None, "an edit to the code is a change"
    monkeypatch.undo()
    # where the tasks ran and --force are not content (the published config.json leaves them out too)
    scaled = config.model_copy(update={"force": True})
    assert fingerprint(scaled) == fingerprint(config)
    # no explicit candle folder (synthetic market, Prefect Variable): resolved in the flow, never skipped here
    assert fingerprint(config.model_copy(update={"data_dir": None})) is None


def test_a_changed_candle_file_is_a_change(promoted, tmp_path):
    config, _ = promoted
    data = tmp_path / "data"
    shutil.copytree(config.data_dir, data)
    moved = config.model_copy(update={"data_dir": str(data)})
    same_bytes = fingerprint(moved)
    path = next(p for p in sorted(data.iterdir()) if p.name.startswith("ETHUSDT"))
    path.write_bytes(path.read_bytes() + b"\n")
    assert fingerprint(moved) != same_bytes
    (data / "SOLUSDT_1h.csv").write_bytes(path.read_bytes().replace(b"ETH", b"SOL"))  # a new symbol in the folder
    assert fingerprint(moved) is not None and unchanged_run(config.out_dir, fingerprint(moved)) is None


def test_a_tampered_or_replaced_current_run_or_a_forged_record_is_not_trusted(promoted):
    config, run = promoted
    out, fp = config.out_dir, fingerprint(config)
    record = Path(out, *unchanged.RECORDS, f"{fp}.json")
    doc = json.loads(record.read_text())
    try:
        forged = json.loads(doc["record"])
        forged["run_id"] = "20200101T000000Z-00000000"
        record.write_text(json.dumps({**doc, "record": json.dumps(forged, sort_keys=True)}))
        assert unchanged_run(out, fp) is None, "a record whose signature does not match is ignored"
    finally:
        record.write_text(json.dumps(doc))
    assert unchanged_run(out, fp) == run

    metrics = run / "metrics.json"
    original = metrics.read_bytes()
    metrics.chmod(0o644)
    try:
        metrics.write_bytes(original.replace(b'"n_oof"', b'"n_oof" ', 1))
        assert unchanged_run(out, fp) is None, "a run that no longer verifies is not served"
    finally:
        metrics.write_bytes(original)
    assert unchanged_run(out, fp) == run

    current = Path(out) / "current"
    target = current.readlink()
    current.unlink()
    try:
        assert unchanged_run(out, fp) is None, "only the current run answers"
    finally:
        promote(out, run.name)
    assert current.readlink() == target and unchanged_run(out, fp) == run


def test_the_cli_answers_an_unchanged_run_without_a_server_or_a_task(promoted, monkeypatch):
    config, run = promoted
    from macd_ml.flows import local_api, preflight

    def refuse(*a, **k):
        raise AssertionError("an unchanged run started a server or the preflight")

    monkeypatch.setattr(local_api, "local_api", refuse)
    monkeypatch.setattr(preflight, "preflight", refuse)
    args = ["retrain", "--data", config.data_dir, "--out", config.out_dir, "--set", "folds.n_folds=3"]
    args += ["--set", 'models.enabled=["lgb"]']
    code, out, err = cli(*args)
    assert code == 0, err
    assert f"nothing changed since run {run.name}" in out and str(run) in out

    # --force always runs the flow (here: the refused server start proves it got that far)
    code, _, err = cli(*args, "--force")
    assert code != 0 and "started a server or the preflight" in err, err


def test_the_nightly_flow_ends_at_once_only_when_asked(promoted):
    from macd_ml.flows.retrain import retrain

    config, run = promoted
    state = retrain(config, skip_unchanged=True, return_state=True)
    assert Path(state.result()) == run
    assert task_states(state.state_details.flow_run_id) == {}, "no task ran, not even a cached one"
    # without skip_unchanged (the default: the UI's runs, tests, resume) every task is looked up as before
    again = retrain(config, return_state=True)
    assert Path(again.result()) == run
    assert set(task_states(again.state_details.flow_run_id).values()) >= {"Cached"}

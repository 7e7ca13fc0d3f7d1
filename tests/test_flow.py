"""The retrain flow end to end on Prefect's local test server: run folder contract and caching."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from macd_ml.artifacts.store import verify_run
from macd_ml.flows.config import RetrainConfig
from tests.cliutil import cli
from tests.flowutil import ALWAYS_RUN, run_flow, task_states

pytestmark = pytest.mark.usefixtures("prefect_server")

DATA_STAGES = ("features", "labels", "folds")


def _config(data_dir, out_dir, **kw) -> RetrainConfig:
    # one fast model: these tests are about the data stages, the run folder and caching
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), folds={"n_folds": 3}, models={"enabled": ["lgb"]})
    base.update(kw)
    return RetrainConfig.model_validate(base)


def test_run_folder_contract(small_market_dir, tmp_path):
    path, fr = run_flow(_config(small_market_dir, tmp_path / "out"))
    run = Path(path)
    assert run.parent == (tmp_path / "out" / "runs").resolve()
    manifest = verify_run(run)  # every listed artifact exists and matches its sha256
    listed = {a["path"] for a in manifest["artifacts"]}
    assert {
        "features.parquet",
        "features.json",
        "labels.parquet",
        "folds.json",
        "metrics.json",
        "config.json",
    } <= listed
    on_disk = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed, "every file in the run folder is in the manifest, and no temp files remain"

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run_id"] == run.name
    assert metrics["target"] == "ETHUSDT" and metrics["cross"] == ["BTCUSDT"]
    assert metrics["horizons"] == [5, 12, 24]
    assert metrics["n_oof"] > 1000 and metrics["n_test"] > 300
    assert metrics["input"]["gaps"]["ETHUSDT"]["n_gaps"] == 2
    # the reference model: same folds and holdout as the ensemble, beside it in metrics.json and the report
    ref = metrics["reference"]
    assert set(ref) == {"5", "12", "24"}
    for h, r in ref.items():
        assert (
            r["n_oof"] == metrics["models"]["lgb"][h]["n_oof"] and r["n_test"] == metrics["models"]["lgb"][h]["n_test"]
        )
        assert 0 <= r["oof_auc"] <= 1 and 0 <= r["test_auc"] <= 1
        assert {k: v for k, v in r.items() if k != "test_se"} == metrics["models"]["reference"][h]
        # trained by the same tasks as the base models, saved, exported and in the stack's choice
        assert "reference" in metrics["meta"][h]["models"] or metrics["meta"][h]["shipped"] != "mean"
        assert "reference" in metrics["diversity"][h]["models"]
    assert (run / "models" / "reference" / "reference_meta.json").is_file()
    assert (run / "onnx" / "reference.onnx").is_file()
    holdout = pl.read_parquet(run / "holdout_predictions.parquet")
    assert holdout["reference_h5"].null_count() == 0
    report = (run / "report.md").read_text()
    assert "| reference |" in report and "## Model card" in report
    # drawn with report.plots = false (the tests' default): report.md says so, and no PNG was written
    assert "`report.plots = false`" in report and not any(p.startswith("plots/") for p in listed)
    for h in ("5", "12", "24"):
        assert f"**h={h}: {metrics['meta'][h]['shipped']}**" in report

    feats = pl.read_parquet(run / "features.parquet")
    meta = json.loads((run / "features.json").read_text())
    assert feats.columns == ["timestamp", *meta["names"]]
    assert str(feats["timestamp"].dtype) == "Datetime(time_unit='us', time_zone='UTC')"
    labels = pl.read_parquet(run / "labels.parquet")
    assert labels["timestamp"].equals(feats["timestamp"])
    states = task_states(fr)
    assert all(states[s] == "Completed" for s in DATA_STAGES), states


def test_unchanged_rerun_is_cached_and_changes_recompute_only_dependants(small_market_dir, tmp_path):
    out = tmp_path / "out"
    p1, _ = run_flow(_config(small_market_dir, out))
    before = {a["path"]: a["sha256"] for a in verify_run(p1)["artifacts"]}
    p2, fr2 = run_flow(_config(small_market_dir, out))
    s2 = task_states(fr2)
    assert all(s2.pop(t) == "Completed" for t in ALWAYS_RUN), "they act on OUT/current, so they always run"
    assert set(s2.values()) == {"Cached"}, f"every other task of an unchanged re-run is Cached: {s2}"
    assert p2 == p1, "an unchanged re-run returns the earlier, identical run folder"
    assert {a["path"]: a["sha256"] for a in verify_run(p1)["artifacts"]} == before
    assert len(list((out / "runs").iterdir())) == 1

    # a new horizon changes labels and folds, not features
    _, fr3 = run_flow(_config(small_market_dir, out, horizons=[5, 12, 24, 36]))
    s3 = task_states(fr3)
    assert s3["features"] == "Cached" and s3["labels"] == "Completed" and s3["folds"] == "Completed", s3

    # a feature-spec change recomputes features and everything downstream
    _, fr4 = run_flow(_config(small_market_dir, out, features={"rsi_windows": [14]}))
    s4 = task_states(fr4)
    assert all(s4[s] == "Completed" for s in DATA_STAGES), s4

    # force ignores the cache
    _, fr5 = run_flow(_config(small_market_dir, out, force=True))
    assert all(task_states(fr5)[s] == "Completed" for s in DATA_STAGES)


def test_new_candles_invalidate_the_cache(small_market_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in small_market_dir.iterdir():
        if f.suffix == ".csv":
            lines = f.read_text().splitlines()
            (data / f.name).write_text("\n".join(lines[:-24]) + "\n")  # one day fewer
    out = tmp_path / "out"
    run_flow(_config(data, out))
    for f in small_market_dir.iterdir():
        if f.suffix == ".csv":
            (data / f.name).write_text(f.read_text())  # the day arrives
    _, fr = run_flow(_config(data, out))
    assert all(task_states(fr)[s] == "Completed" for s in DATA_STAGES)


def test_default_synthetic_market(tmp_path):
    cfg = RetrainConfig.model_validate(
        {
            "out_dir": str(tmp_path / "out"),
            "synthetic": {"hours": 3_000},
            "folds": {"n_folds": 3},
            "models": {"enabled": ["lgb"]},
        }
    )
    path, fr = run_flow(cfg)
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    assert metrics["target"] == "ETHUSDT" and metrics["cross"] == ["BTCUSDT"]
    assert task_states(fr)["synthetic-market"] == "Completed"


def test_cli_retrain_with_overrides(small_market_dir, tmp_path):
    code, _, _ = cli(
        "retrain",
        "--data",
        str(small_market_dir),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "folds.n_folds=3",
        "--set",
        "horizons=[5,12]",
        "--set",
        'models.enabled=["lgb"]',
    )
    assert code == 0
    run = next((tmp_path / "o" / "runs").iterdir())
    assert json.loads((run / "metrics.json").read_text())["horizons"] == [5, 12]
    assert json.loads((run / "config.json").read_text())["folds"]["n_folds"] == 3


def test_cli_bad_config_key_exits_2(small_market_dir, tmp_path):
    code, _, err = cli(
        "retrain", "--data", str(small_market_dir), "--out", str(tmp_path / "o"), "--set", "folds.n_fold=3"
    )
    err = err.strip()
    assert code == 2
    assert "folds.n_fold" in err and "\n" not in err
    assert not (tmp_path / "o").exists()

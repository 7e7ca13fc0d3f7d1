"""The fold stage inside the retrain flow: OOF predictions, refits, per-model caching, and the null market."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.features.synth import synth_market, write_market
from macd_ml.flows.config import RetrainConfig
from macd_ml.models.evaluation.stats import auc_se
from macd_ml.models.learners.registry import MODEL_CLASSES
from tests.flowutil import run_flow, task_states, task_tags
from tests.modelutil import FAST_MODELS

pytestmark = pytest.mark.usefixtures("prefect_server")


def _market(tmp_path_factory, name, **kw) -> Path:
    d = tmp_path_factory.mktemp(name)
    write_market(synth_market(**kw), d)
    return d


@pytest.fixture(scope="module")
def signal_dir(tmp_path_factory) -> Path:
    return _market(tmp_path_factory, "signal", hours=12_000, seed=2, signal=2.0, gaps=2)


@pytest.fixture(scope="module")
def trained(signal_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained-out")
    cfg = RetrainConfig.model_validate(
        {"data_dir": str(signal_dir), "out_dir": str(out), "folds": {"n_folds": 3}, "models": FAST_MODELS}
    )
    path, fr = run_flow(cfg, plots=True)  # the report's plots are read by a test below
    return cfg, Path(path), fr


def test_every_model_learns_the_planted_signal(trained):
    cfg, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == set(MODEL_CLASSES)
    for name, per_h in metrics["models"].items():
        assert per_h["12"]["oof_auc"] >= 0.55, (name, per_h["12"])
        assert per_h["12"]["test_auc"] is not None
        assert not metrics["training"][name]["collapsed"], name


def test_oof_and_holdout_tables(trained):
    cfg, run, _ = trained
    oof = pl.read_parquet(run / "oof.parquet")
    hold = pl.read_parquet(run / "holdout_predictions.parquet")
    folds = json.loads((run / "folds.json").read_text())
    n_test = sum(f["test"]["stop"] - f["test"]["start"] for f in folds["folds"])
    assert oof.height == n_test and oof["timestamp"].is_unique().all()
    assert hold.height == folds["holdout"]["stop"] - folds["holdout"]["start"]
    for name in MODEL_CLASSES:
        for h in (5, 12, 24):
            col = f"{name}_h{h}"
            assert oof[col].null_count() == 0 and hold[col].null_count() == 0
            assert oof[col].is_between(0, 1).all()
    # OOF rows are exactly the folds' test spans: never a holdout row
    assert oof["timestamp"].max() < hold["timestamp"].min()


def test_model_files_published(trained):
    _, run, _ = trained
    manifest = {a["path"] for a in json.loads((run / "manifest.json").read_text())["artifacts"]}
    for name in ("lgb", "lgb_cross"):
        assert {f"models/{name}/{name}_h{h}.txt" for h in (5, 12, 24)} <= manifest
    assert {f"models/xgb/xgb_h{h}.json" for h in (5, 12, 24)} <= manifest
    for name in ("lstm", "tft"):
        assert {f"models/{name}/{name}.safetensors", f"models/{name}/{name}_meta.json"} <= manifest


def test_fold_tasks_are_named_and_untagged_without_limits(trained):
    """No concurrency limit on this API (and no GPU): the training tasks carry no tags, so no task start asks the
    API for slots (see ``concurrency_tags``)."""
    _, _, fr = trained
    states, tags = task_states(fr), task_tags(fr)
    for name in MODEL_CLASSES:
        for run in [f"{name}-fold{k}" for k in range(3)] + [f"{name}-refit"]:
            assert states[run] == "Completed", run
            assert tags[run] == set(), (run, tags[run])


def test_tasks_are_tagged_by_kind_where_a_limit_exists():
    from prefect import flow
    from prefect.client.orchestration import get_client

    from macd_ml.flows.stages_runner import concurrency_tags as _concurrency_tags

    @flow
    def tags_now() -> dict:
        return _concurrency_tags()

    assert tags_now() == {"gpu": [], "cpu": []}
    assert _concurrency_tags() == {"gpu": [], "cpu": []}  # outside a flow run: no API is asked
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
        try:
            assert tags_now() == {"gpu": ["gpu"], "cpu": []}
        finally:
            client.delete_concurrency_limit_by_tag("gpu")
    assert tags_now() == {"gpu": [], "cpu": []}


def test_changing_xgb_params_retrains_only_xgb(trained):
    cfg, _, _ = trained
    changed = cfg.model_copy(deep=True)
    changed.models.xgb.max_depth = 3
    _, fr = run_flow(changed)
    states = task_states(fr)
    for name in MODEL_CLASSES:
        expected = "Completed" if name == "xgb" else "Cached"
        for k in range(3):
            assert states[f"{name}-fold{k}"] == expected, (name, k, states)
    assert states["features"] == states["labels"] == states["folds"] == "Cached"


@pytest.mark.heavy  # every model on 40,000 bars: a band narrow enough to mean something
def test_null_market_every_auc_within_band(tmp_path_factory):
    """A driftless random walk: every OOF and holdout AUC within 0.5 ± 3·SE, SE = sqrt(h / (3 n)).

    40,000 bars with a 30% holdout keep every band at or below ±0.06 (±0.025 for OOF at h=5); a band of ±0.04
    at h=12 on the holdout alone would need ~150,000 bars, too slow for CI with the sequence models."""
    data = _market(tmp_path_factory, "null", hours=40_000, seed=5, signal=0.0, gaps=0)
    out = tmp_path_factory.mktemp("null-out")
    horizons = [5, 12]
    fast = {k: {**v, "max_epochs": 3} for k, v in FAST_MODELS.items()}
    cfg = RetrainConfig.model_validate(
        {
            "data_dir": str(data),
            "out_dir": str(out),
            "horizons": horizons,
            "folds": {"n_folds": 3, "holdout_fraction": 0.3},
            "models": fast,
            # without costs: with them, a gate that trades less beats trading always on a driftless market by
            # the costs it saves (236 gated trades, Sharpe -2.2, against more ungated ones at a worse Sharpe),
            # which says nothing about what the model knows
            "backtest": {"fee_bps": 0, "slippage_bps": 0},
        }
    )
    path, _ = run_flow(cfg)
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    for h, m in metrics["meta"].items():
        h_ = int(h)
        for kind, n in (("oof_auc", metrics["n_oof"]), ("val_auc", m["n_val"]), ("test_auc", m["n_test"])):
            band = 3 * auc_se(n, h_)
            assert abs(m[kind] - 0.5) <= band, f"meta h={h} {kind}={m[kind]:.3f} outside 0.5±{band:.3f}"
        assert abs(m["gap_abs"]) <= 3 * m["gap_combined_se"], (h, m["gap_abs"], m["gap_combined_se"])
    for name, per_h in metrics["models"].items():
        for h in horizons:
            m = per_h[str(h)]
            for kind, n in (("oof_auc", m["n_oof"]), ("test_auc", m["n_test"])):
                band = 3 * auc_se(n, h)
                assert band <= 0.06, f"data too short for a narrow band ({band:.3f})"
                assert abs(m[kind] - 0.5) <= band, f"{name} h={h} {kind}={m[kind]:.3f} outside 0.5±{band:.3f} (n={n})"
    assert math.isclose(auc_se(300, 3), math.sqrt(3 / 900))
    # the run's own holdout backtest (no costs): the gate finds no edge its interval excludes from zero
    bt = metrics["backtest"]
    for mode in ("long_flat", "long_short"):
        lo, hi = bt["variants"][f"gated_{mode}"]["sharpe_interval"]
        assert lo <= 0, (mode, lo, hi)  # zero inside the interval, or a loss (the costs)
        assert bt["gated_minus_ungated"][mode]["sharpe_interval"][0] <= 0, bt["gated_minus_ungated"][mode]
    assert not bt["lookahead_suspect"]


def test_report_shows_what_cross_features_add(trained):
    _, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    gain = metrics["cross_features"]["auc_gain"]
    for h in ("5", "12", "24"):
        expected = metrics["models"]["lgb_cross"][h]["oof_auc"] - metrics["models"]["lgb"][h]["oof_auc"]
        assert gain[h]["oof_auc"] == pytest.approx(expected, abs=1e-4)
    imp = metrics["cross_features"]["importance"]
    assert 0 < imp["cross_gain_share"] < 1
    assert all(t["feature"].startswith("BTCUSDT__") for t in imp["top_cross_features"])
    report = (run / "report.md").read_text()
    assert "What the cross-asset features add" in report
    for name in MODEL_CLASSES:
        assert f"| {name} |" in report


def test_meta_trains_on_oof_rows_only_separated_from_holdout(trained):
    cfg, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    embargo = json.loads((run / "folds.json").read_text())["embargo_hours"]
    from datetime import datetime, timedelta

    for h, m in metrics["meta"].items():
        last, first = datetime.fromisoformat(m["train_last"]), datetime.fromisoformat(m["holdout_first"])
        assert last + timedelta(hours=embargo) < first, (h, last, first)
        assert m["n_train"] <= metrics["n_oof"]
    oof = pl.read_parquet(run / "oof.parquet")
    hold = pl.read_parquet(run / "holdout_predictions.parquet")
    assert set(oof["timestamp"].to_list()).isdisjoint(hold["timestamp"].to_list())


def _paired_block_bootstrap_se(y, a, b, block: int, draws: int = 400, seed: int = 0) -> float:
    """SE of AUC(a) - AUC(b) on the same rows, by a moving-block bootstrap (blocks of ``block`` rows keep the
    overlap of h-hour labels together)."""
    from macd_ml.models.evaluation.stats import auc

    rng = np.random.default_rng(seed)
    n = len(y)
    starts = np.arange(n - block + 1)
    diffs = []
    for _ in range(draws):
        idx = np.concatenate([np.arange(s, s + block) for s in rng.choice(starts, size=math.ceil(n / block))])[:n]
        da, db = auc(y[idx], a[idx]), auc(y[idx], b[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    return float(np.std(diffs, ddof=1))


def test_shipped_is_not_worse_than_best_single(trained):
    """On the planted-signal market what ships (chosen on the inner CV) does not lose to the best single model on
    the holdout by more than 2 SE of their paired difference (block bootstrap over the holdout rows): the choice
    may be a hair off, it must not be systematically worse."""
    _, run, _ = trained
    metrics = json.loads((run / "metrics.json").read_text())
    hold = pl.read_parquet(run / "holdout_predictions.parquet").join(
        pl.read_parquet(run / "shipped_holdout.parquet"), on="timestamp"
    )
    for h, m in metrics["meta"].items():
        label, best = next((k, v) for k, v in m["candidates"].items() if k.startswith("best:"))
        assert {"oof_auc", "val_auc", "test_auc", "gap_abs", "gap_rel"} <= set(m)
        if m["shipped"] == label:
            assert m["test_auc"] == pytest.approx(best["test_auc"])
            continue
        rows = hold.filter(pl.col(f"y_{h}").is_not_null())
        y = rows[f"y_{h}"].cast(pl.Float64).to_numpy()
        ships, single = rows[f"shipped_h{h}"].to_numpy(), rows[f"{label.removeprefix('best:')}_h{h}"].to_numpy()
        se = _paired_block_bootstrap_se(y, ships, single, block=2 * int(h))
        assert 0 < se < 0.05, se
        assert m["test_auc"] >= best["test_auc"] - 2 * se, (h, m["shipped"], m["test_auc"], best, se)


def test_report_and_plots(trained):
    import matplotlib.image as mpimg

    _, run, _ = trained
    report = (run / "report.md").read_text()
    for section in ("What ships", "Diversity", "Plots", "Base models"):
        assert section in report
    expected = [f"{kind}_h{h}.png" for kind in ("roc", "calibration", "correlation") for h in (5, 12, 24)]
    expected.append("importance.png")
    for name in expected:
        img = mpimg.imread(run / "plots" / name)
        assert img.shape[0] >= 500 and img.shape[1] >= 700, (name, img.shape)
        assert img[..., :3].std() > 0.05, f"{name} looks blank"
        assert f"plots/{name}" in report
    manifest = {a["path"] for a in json.loads((run / "manifest.json").read_text())["artifacts"]}
    assert {f"plots/{n}" for n in expected} <= manifest and "report.md" in manifest and "meta.json" in manifest


def test_stages_run_alone_against_a_run_folder(trained, tmp_path):
    from macd_ml.flows.rerun import run_report, run_stack
    from tests.cliutil import cli

    _, run, _ = trained
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    run_stack(run, tmp_path / "stack")
    assert json.loads((tmp_path / "stack" / "meta.json").read_text()) == json.loads((run / "meta.json").read_text())
    changed = run_stack(run, tmp_path / "stack2", ["stacking.c_grid=[0.001]"])
    assert all(m.candidates["meta"].C == 0.001 for m in changed.values())
    report = run_report(run, tmp_path / "report")
    assert report.read_text() == (run / "report.md").read_text(), "the report is reproduced exactly"
    assert {p.name for p in (tmp_path / "report" / "plots").iterdir()} == {p.name for p in (run / "plots").iterdir()}
    code, _, err = cli("stack", str(run), "--into", str(run / "restack"))
    assert code == 2 and "immutable" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, "the run folder is untouched"

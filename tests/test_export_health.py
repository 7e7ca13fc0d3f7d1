"""The second half of the DAG, part 1: ONNX export with parity, the health gate before promotion, a
refused run published but not promoted (exit 3), champion / challenger, and the stages alone (CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest

from macd_ml.artifacts import store
from macd_ml.artifacts.store import read_json, run_artifacts, verify_run, write_bytes, write_json, write_parquet
from macd_ml.features.ingest import load_market
from macd_ml.models.ensemble.predictor import Predictor, load_predictors, predictors_document
from macd_ml.models.evaluation.metrics import Metrics
from macd_ml.models.learners.registry import load_model, make_model, select_features
from macd_ml.models.learners.train import train_fold
from macd_ml.models.release.export import export_run
from macd_ml.models.release.health import HealthSpec, evaluate
from macd_ml.models.release.onnx_export import ensemble_spec
from macd_ml.models.release.promotion import PromotionSpec, decide
from macd_ml.models.release.scoring import score_features, session
from macd_ml.serving.live_check import live_check
from tests.cliutil import cli, package_copy
from tests.modelutil import HORIZONS, fast_config, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
MODELS = '["lgb","xgb","tft"]'
SMALL_NETS = ["--set", "models.tft.max_epochs=2", "--set", "models.tft.max_train_rows=1500"]


# --------------------------------------------------------------------------------------------- export and parity


def test_every_model_type_and_the_ensemble_match_the_native_models():
    table, data, folds = synthetic_dataset(hours=6_000, seed=4, signal=2.0, n_folds=3)
    cfg = fast_config(lstm={"max_epochs": 1, "max_train_rows": 1500}, tft={"max_epochs": 1, "max_train_rows": 1500})
    rows = np.arange(folds.holdout.start, folds.holdout.stop)
    hold: dict[str, object] = {"row": rows}
    models = {}
    for name in ("lgb", "xgb", "lgb_cross", "lstm", "tft"):
        m = make_model(name, cfg.params_for(name), select_features(data.feature_names, cfg.feature_set(name)), HORIZONS)
        r = train_fold(m, data, folds.refit)
        models[name] = m
        for j, h in enumerate(HORIZONS):
            hold[f"{name}_h{h}"] = r.predictions[:, j]
    for j, h in enumerate(HORIZONS):
        hold[f"y_{h}"] = data.Y[rows, j]
    holdout = pl.DataFrame(hold)
    predictors = {
        "5": Predictor("meta", ["lgb", "lstm", "xgb"], [0.6, 0.3, 0.2], 0.05, [0.0, 0.1, -0.1], [1.0, 0.5, 0.7], 0.1),
        "12": Predictor("mean", ["lgb", "xgb", "tft", "lgb_cross"]),
        "24": Predictor("best", ["tft"]),
    }
    shipped = pl.DataFrame(
        {
            f"shipped_h{h}": predictors[str(h)].predict(
                holdout.select([f"{m}_h{h}" for m in predictors[str(h)].models]).to_numpy()
            )
            for h in HORIZONS
        }
    )
    exported = export_run(models, predictors, table.frame, table.names, HORIZONS, 1, holdout, shipped)
    p = exported.parity
    assert p["passed"], json.dumps(p, indent=1, default=str)
    for name, e in p["models"].items():
        assert e["max_abs_file"] <= (1e-4 if name in ("lstm", "tft") else 1e-3), (name, e)
    assert p["meta"]["max_abs"] <= 1e-4 and p["ensemble"]["max_abs"] <= 1e-3
    assert all(a["equal_to_3_decimals"] for a in p["ensemble"]["auc"].values())
    ens = onnx.load_from_string(exported.files["onnx/ensemble.onnx"])
    assert [i.name for i in ens.graph.input] == ["bars"]
    assert [o.name for o in ens.graph.output] == ["shipped", *models]
    spec = ensemble_spec(ens)
    assert spec.lookback == 48 and spec.feature_names == table.names and spec.horizons == HORIZONS
    assert set(exported.files) == {f"onnx/{m}.onnx" for m in models} | {"onnx/meta.onnx", "onnx/ensemble.onnx"}


def test_sequence_graph_holds_its_normalisation():
    """A consumer feeds raw features: the graph, not the caller, standardises them."""
    table, data, folds = synthetic_dataset(hours=6_000, seed=4, signal=2.0, n_folds=3)
    m = make_model(
        "lstm", fast_config(lstm={"max_epochs": 1, "max_train_rows": 800}).lstm, data.feature_names, HORIZONS
    )
    train_fold(m, data, folds.folds[0])
    from macd_ml.models.release.onnx_export import sequence_onnx

    sess, _ = session(sequence_onnx(m).SerializeToString())
    rows = np.arange(folds.holdout.start, folds.holdout.start + 64)
    from macd_ml.models.release.scoring import windows

    x = windows(data.X, data.segment_start, rows, 48)
    from macd_ml.models.learners.base import Rows

    np.testing.assert_allclose(sess.run(None, {"x": x})[0], m.predict(data, Rows(rows)), atol=1e-5)


def test_the_holdout_auc_gate_reads_the_holdout_not_the_validation():
    """A run whose validation (inner walk-forward) and holdout AUCs disagree: the holdout-AUC gate passes or fails
    on the holdout alone. (The other checks fail here for want of files; only these two are read.)"""
    from tests.test_report_fixture import metrics_document

    def gate(val: float, test: float) -> dict:
        doc = metrics_document()
        doc["meta"]["12"].update(val_auc=val, test_auc=test, n_test=3_000)
        report = evaluate({}, Metrics.model_validate(doc), {}, HealthSpec(live_check=False), 1e-3)
        return {c.name: c for c in report.checks}

    # every check ran and failed (or passed) for its own reason: none broke on another's missing state
    for check in gate(val=0.70, test=0.50).values():
        assert "KeyError" not in check.detail and "AttributeError" not in check.detail, check
    assert "no onnx/ensemble.onnx" in gate(val=0.70, test=0.50)["outputs"].detail

    overfit = gate(val=0.70, test=0.50)  # looked good on validation, no skill on the holdout
    assert not overfit["holdout-auc"].passed and "holdout AUC 0.500" in overfit["holdout-auc"].detail
    assert not overfit["val-holdout-drop"].passed
    lucky = gate(val=0.50, test=0.60)  # the holdout alone clears min_test_auc and 0.5 + 2 SE
    assert lucky["holdout-auc"].passed, lucky["holdout-auc"].detail


# --------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def run(market, tmp_path_factory, prefect_server):
    """A published run (lgb, xgb, tft) with the live check on, AUC gates off (a tiny market)."""
    out = tmp_path_factory.mktemp("health-out")
    code, stdout, err = cli(
        "retrain",
        "--data",
        str(market),
        "--out",
        str(out),
        "--set",
        "folds.n_folds=3",
        "--set",
        f"models.enabled={MODELS}",
        *SMALL_NETS,
        "--set",
        "health.auc_gates=false",
        strict=True,
    )
    assert code == 0, err
    folder = out / "runs" / store.current_run(out)
    return out, folder


def _files(folder: Path) -> dict:
    return run_artifacts(folder, verify_run(folder))


def _evaluate(folder: Path, files: dict | None = None, **spec) -> object:
    files = files or _files(folder)
    config = read_json(files["config.json"])
    metrics = Metrics.model_validate(read_json(files["metrics.json"]))
    hs = HealthSpec.model_validate({**config["health"], **spec})
    live = None
    if hs.live_check:
        meta = read_json(files["features.json"])
        live = live_check(load_market(metrics.input.data_dir, meta["target"], meta["cross"]))
    return evaluate(files, metrics, config, hs, 1e-3, live)


@pytest.mark.usefixtures("prefect_server")
def test_a_healthy_run_is_published_with_its_gate_and_onnx(run):
    out, folder = run
    metrics = read_json(folder / "metrics.json")
    assert metrics["health"]["passed"] and metrics["parity"]["passed"]
    names = {c["name"]: c for c in metrics["health"]["checks"]}
    assert set(names) == {
        "artifacts",
        "models-load",
        "onnx-load",
        "outputs",
        "not-collapsed",
        "onnx-parity",
        "trade-gate",
        "trade-gate-figures",
        "holdout-auc",
        "val-holdout-drop",
        "oof-rows",
        "drift",
        "live",
    }
    assert names["drift"]["severity"] == "warning" and "features with PSI >" in names["drift"]["detail"]
    assert names["live"]["passed"] and "bot's Scorer" in names["live"]["detail"], names["live"]
    listed = {a["path"] for a in verify_run(folder)["artifacts"]}
    assert {
        "onnx/ensemble.onnx",
        "onnx/meta.onnx",
        "onnx/lgb.onnx",
        "onnx/xgb.onnx",
        "onnx/tft.onnx",
        "parity.json",
        "health.json",
        "promotion.json",
    } <= listed
    report = (folder / "report.md").read_text()
    assert "## Health gate" in report and "## ONNX export" in report and "## Promotion" in report
    code, stdout, _ = cli("health", str(folder), "--json")
    assert code == 0 and json.loads(stdout)["passed"]


@pytest.mark.usefixtures("prefect_server")
def test_a_run_edited_with_its_manifest_is_refused_by_every_command_that_reads_it(run, tmp_path):
    """A model file edited, its sha256 updated in the manifest, the signature replaced by zeros: health, the
    stage commands and bundle refuse it (exit 3) and say what to do."""
    import shutil

    _, folder = run
    copy = tmp_path / "out" / "runs" / folder.name
    shutil.copytree(folder, copy)
    model = copy / "models" / "lgb" / "lgb_h5.txt"
    model.write_bytes(model.read_bytes().replace(b"leaf_value", b"leaf_valuf", 1))
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["path"] == "models/lgb/lgb_h5.txt":
            entry["sha256"], entry["bytes"] = store.sha256_file(model), model.stat().st_size
    manifest["signature"] = "0" * len(manifest["signature"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for argv in (
        ["health", str(copy), "--json"],
        ["report", str(copy), "--into", str(tmp_path / "r")],
        ["bundle", str(copy), "--to", str(tmp_path / "b.tar.gz")],
    ):
        code, stdout, err = cli(*argv)
        assert code == 3, (argv, code, stdout, err)
        assert "signature" in (err + stdout), (argv, err, stdout)
    assert not (tmp_path / "b.tar.gz").exists()
    code, _, err = cli("bundle", str(copy), "--to", str(tmp_path / "b.tar.gz"))
    assert "macd-ml retrain" in err, err


@pytest.mark.usefixtures("prefect_server")
def test_each_check_fails_on_purpose(run, tmp_path):
    out, folder = run
    # a tampered file
    copy = tmp_path / "runs" / folder.name
    shutil.copytree(folder, copy)
    model = next((copy / "models" / "lgb").glob("lgb_h*.txt"))
    model.write_bytes(model.read_bytes().replace(b"leaf_value", b"leaf_valuf", 1))
    report = _evaluate(copy, run_artifacts(copy, read_json(copy / "manifest.json")), live_check=False)
    assert not report.passed and [c.name for c in report.failures()][0] == "artifacts"

    files = _files(folder)
    # AUC under the gate
    report = _evaluate(folder, files, auc_gates=True, min_test_auc=0.99, live_check=False)
    assert [c.name for c in report.failures()] == ["holdout-auc"]

    # a model forced constant (a TFT stuck at one value) that ships
    tft = load_model("tft", Path(files["models/tft/tft.safetensors"].path).parent)
    net = tft._module()
    for mod in net.modules():  # every weight zero: the net emits one value whatever its input
        for param in mod.parameters(recurse=False):
            param.data.zero_()
    broken = _reexport(tmp_path / "constant", files, {"tft": tft}, lambda h: Predictor("best", ["tft"]))
    report = _evaluate(folder, broken, live_check=False)
    failed = {c.name: c for c in report.failures()}
    assert "not-collapsed" in failed and "tft" in failed["not-collapsed"].detail, report.table()

    # ONNX parity broken: the exported meta graph no longer matches the native shipped probabilities
    preds = load_predictors(files["meta.json"].path)
    shifted = {
        h: Predictor(p.kind, p.models, p.weights, p.intercept + 0.5, p.mean, p.std, p.C)
        if p.kind == "meta"
        else Predictor("meta", p.models, [1.0] * len(p.models), 0.3, [0.0] * len(p.models), [1.0] * len(p.models), 1.0)
        for h, p in preds.items()
    }
    broken = _reexport(tmp_path / "parity", files, {}, lambda h: shifted[str(h)], keep_native=True)
    report = _evaluate(folder, broken, live_check=False)
    assert "onnx-parity" in {c.name for c in report.failures()}, report.table()


@pytest.mark.usefixtures("prefect_server")
def test_a_shipped_probability_squeezed_flat_is_refused_though_every_model_varies(run, tmp_path):
    """A meta-learner with tiny (non-zero) weights over healthy base models: what ships is one value for every
    bar. Only the check on the shipped output itself can see that."""
    out, folder = run
    files = _files(folder)
    models = list(Metrics.model_validate(read_json(files["metrics.json"])).models)
    k = len(models)
    flat = _reexport(
        tmp_path / "flat", files, {}, lambda h: Predictor("meta", models, [1e-6] * k, 0.2, [0.0] * k, [1.0] * k, 1.0)
    )
    report = _evaluate(folder, flat, live_check=False)
    failed = {c.name: c for c in report.failures()}
    assert "not-collapsed" in failed, report.table()  # (parity fails too: an AUC of a constant is float noise)
    assert (
        "shipped h=" in failed["not-collapsed"].detail and "ships but is constant" not in failed["not-collapsed"].detail
    )


def _reexport(where: Path, files: dict, replace_models: dict, predictor, keep_native: bool = False) -> dict:
    """The run's files with its ONNX (and, unless ``keep_native``, its shipped probabilities) rebuilt from other
    models or predictors, for a check to fail on."""
    metrics = Metrics.model_validate(read_json(files["metrics.json"]))
    models = {
        m: replace_models.get(m)
        or load_model(m, Path(files[next(r for r in files if r.startswith(f"models/{m}/"))].path).parent)
        for m in metrics.models
    }
    predictors = {str(h): predictor(h) for h in metrics.horizons}
    holdout = store.read_parquet(files["holdout_predictions.parquet"])
    native_shipped = store.read_parquet(files["shipped_holdout.parquet"])
    feats = store.read_parquet(files["features.parquet"])
    names = read_json(files["features.json"])["names"]
    exported = export_run(models, predictors, feats, names, metrics.horizons, 1, holdout, native_shipped)
    new = dict(files)
    for rel, data in exported.files.items():
        new[rel] = write_bytes(where / rel, data)
    new["parity.json"] = write_json(where / "parity.json", exported.parity)
    new["meta.json"] = write_json(where / "meta.json", predictors_document(metrics.horizons, predictors))
    if not keep_native:
        sess, _ = session(exported.files["onnx/ensemble.onnx"])
        scored = score_features(sess, exported.spec, feats, holdout["row"].to_numpy(), 1)
        new["shipped_holdout.parquet"] = write_parquet(
            where / "shipped_holdout.parquet", scored.select("timestamp", *[f"shipped_h{h}" for h in metrics.horizons])
        )
    return new


@pytest.mark.usefixtures("prefect_server")
def test_the_live_check_catches_a_feature_code_change(run, tmp_path):
    """The same run checked with feature code whose return window changed: the bot's Scorer scores the newest
    bars differently from the run, and the gate refuses."""
    out, folder = run
    copy = package_copy(tmp_path / "pkg")
    ind = copy / "features" / "indicators.py"
    ind.write_text(
        ind.read_text().replace(
            "return (close / close.shift(window)).log()", "return (close / close.shift(window + 1)).log()"
        )
    )
    proc = cli(
        "health", folder, "--json", subprocess=True, cwd=tmp_path, env={"PYTHONPATH": str(copy.parent)}, timeout=300
    )
    assert proc.code == 3, proc.out[-2000:] + proc.err[-2000:]
    checks = {c["name"]: c for c in json.loads(proc.out)["checks"]}
    assert not checks["live"]["passed"] and "feature code" in checks["live"]["detail"], checks["live"]
    assert checks["artifacts"]["passed"] and checks["onnx-parity"]["passed"]  # only the live check notices


# --------------------------------------------------------------------------------------------- refusal, champion


@pytest.mark.usefixtures("prefect_server")
def test_a_refused_run_is_published_but_not_promoted(run, market):
    out, folder = run
    before = store.current_run(out)
    code, _, err = cli(
        "retrain",
        "--data",
        str(market),
        "--out",
        str(out),
        "--set",
        "folds.n_folds=3",
        "--set",
        'models.enabled=["lgb"]',
        "--set",
        "health.min_test_auc=0.99",
        "--set",
        "health.live_check=false",
        strict=True,
    )
    assert code == 3, err
    line = next(ln for ln in err.splitlines() if ln.startswith("macd-ml:"))
    assert "not promoted" in line and "holdout-auc" in line, line
    assert store.current_run(out) == before, "current is untouched"
    verify_run(out / "runs" / before)
    refused = [r for r in (out / "runs").iterdir() if r.name not in (before,) and not r.name.startswith(".")]
    (refused_run,) = refused
    health = read_json(refused_run / "health.json")
    assert not health["passed"] and read_json(refused_run / "promotion.json")["promote"] is False


def test_a_worse_challenger_is_not_promoted_and_force_is_logged(run, tmp_path):
    """The champion against a challenger whose holdout scores are always wrong (1 - the label)."""
    out, folder = run
    files = _files(folder)
    hold = store.read_parquet(files["holdout_predictions.parquet"])
    shipped = store.read_parquet(files["shipped_holdout.parquet"])
    wrong = shipped.with_columns(
        [
            (1 - hold[c.replace("shipped_h", "y_")].cast(pl.Float64).fill_null(0.5)).alias(c)
            for c in shipped.columns
            if c.startswith("shipped_")
        ]
    )
    challenger = dict(files)
    challenger["shipped_holdout.parquet"] = write_parquet(tmp_path / "shipped_holdout.parquet", wrong)
    metrics = Metrics.model_validate(read_json(files["metrics.json"]))
    h = metrics.horizons[0]
    d = decide(challenger, metrics, folder, metrics.input.data_dir, h, PromotionSpec(), "20990101T000000Z-00000000")
    assert not d.promote and d.n_rows > 100 and d.champion_auc > d.challenger_auc, d
    assert d.champion_auc == pytest.approx(metrics.meta[str(h)].test_auc, abs=1e-3)  # the champion's own ONNX
    # drift of the shipped probability, champion -> challenger on the same bars: 0/1 answers are far from it
    assert d.prediction_shift["flagged"] and d.prediction_shift["psi"] > d.prediction_shift["limit"], d.prediction_shift
    twin = decide(files, metrics, folder, metrics.input.data_dir, h, PromotionSpec(), "20990101T000000Z-00000001")
    assert twin.prediction_shift["psi"] < 0.01 and not twin.prediction_shift["flagged"], twin.prediction_shift
    forced = decide(
        challenger, metrics, folder, metrics.input.data_dir, h, PromotionSpec(force=True), "20990101T000000Z-00000000"
    )
    assert forced.promote and forced.forced and "force" in forced.reason
    same = decide(files, metrics, folder, metrics.input.data_dir, h, PromotionSpec(), folder.name)
    assert same.promote and "is the champion" in same.reason


@pytest.mark.usefixtures("prefect_server")
def test_champion_challenger_never_scores_the_champion_on_bars_it_was_fitted_on(run, tmp_path):
    """A challenger whose holdout reaches back into the champion's development span (its OOF rows, which the
    champion's refit was fitted on): the comparison window still starts at the champion's own holdout."""
    out, folder = run
    files = _files(folder)
    metrics = Metrics.model_validate(read_json(files["metrics.json"]))
    h = metrics.horizons[0]
    y, p = f"y_{h}", f"shipped_h{h}"
    oof, hold = store.read_parquet(files["oof.parquet"]), store.read_parquet(files["holdout_predictions.parquet"])
    shipped = store.read_parquet(files["shipped_holdout.parquet"])
    shipped_oof = store.read_parquet(files["shipped_oof.parquet"])
    longer = dict(files)
    longer["holdout_predictions.parquet"] = write_parquet(
        tmp_path / "h.parquet", pl.concat([oof.select("timestamp", y), hold.select("timestamp", y)])
    )
    longer["shipped_holdout.parquet"] = write_parquet(
        tmp_path / "s.parquet", pl.concat([shipped_oof.select("timestamp", p), shipped.select("timestamp", p)])
    )
    d = decide(longer, metrics, folder, metrics.input.data_dir, h, PromotionSpec(), "20990101T000000Z-00000000")
    same = decide(files, metrics, folder, metrics.input.data_dir, h, PromotionSpec(), "20990101T000000Z-00000000")
    assert d.window_first is not None and d.window_first >= metrics.holdout.first, (d.window_first, metrics.holdout)
    assert (d.window_first, d.window_last, d.n_rows) == (same.window_first, same.window_last, same.n_rows)
    assert d.n_rows == hold.filter(pl.col(y).is_not_null()).height


@pytest.mark.usefixtures("prefect_server")
def test_a_sequence_net_whose_graph_is_off_by_more_than_its_tolerance_fails_parity(run, tmp_path):
    """The TFT's ONNX graph exported from a net whose output logits moved by 0.002 (probabilities by about 5e-4:
    within what trees are allowed, float32 thresholds, far beyond a net's float32 arithmetic): parity fails for
    the TFT, and the health gate refuses the run."""
    out, folder = run
    files = _files(folder)
    tft = load_model("tft", Path(files["models/tft/tft.safetensors"].path).parent)
    tft._module().heads.bias.data += 0.002
    preds = load_predictors(files["meta.json"].path)
    broken = _reexport(tmp_path / "off", files, {"tft": tft}, lambda h: preds[str(h)], keep_native=True)
    parity = read_json(broken["parity.json"])
    entry = parity["models"]["tft"]
    assert 1e-4 < entry["max_abs_file"] < 1e-3, entry
    assert not entry["passed"] and not parity["passed"], entry
    assert all(parity["models"][m]["passed"] for m in parity["models"] if m != "tft")
    report = _evaluate(folder, broken, live_check=False)
    assert "onnx-parity" in {c.name for c in report.failures()}, report.table()


@pytest.mark.usefixtures("prefect_server")
def test_export_runs_alone_against_a_run(run, tmp_path):
    out, folder = run
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, stdout, err = cli("export-onnx", str(folder), "--into", str(tmp_path / "again"))
    assert code == 0, err
    assert "parity passed" in stdout
    for rel in ("onnx/ensemble.onnx", "onnx/meta.onnx", "parity.json"):
        assert (tmp_path / "again" / rel).is_file()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "the run is untouched"


def test_lightgbm_thresholds_between_adjacent_float32_values_match_in_onnx():
    """LightGBM puts a split halfway between two feature values and compares in double; ONNX stores the threshold
    as float32. Halfway between adjacent float32 values a < b, the float32 threshold can round up to b and send b
    the other way (seen on make run's market: one holdout row off by 3.3e-3). Thresholds rounded down to float32
    keep every native decision and make ONNX agree."""
    import lightgbm as lgb
    import onnxruntime as ort

    from macd_ml.models.learners.base import Dataset, Rows
    from macd_ml.models.learners.gbdt import LGBModel, LGBParams, float32_thresholds
    from macd_ml.models.release.onnx_export import _booster_onnx  # the converter call tree_onnx makes per horizon

    one = np.float32(1.0)
    a = np.nextafter(one, np.float32(2))  # odd last mantissa bit: the midpoint to b rounds (to even) up to b
    b = np.nextafter(a, np.float32(2))
    X = np.array([[a], [b]] * 100, dtype=np.float32)
    y = np.array([0.0, 1.0] * 100)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 2, "min_data_in_leaf": 1, "min_data_in_bin": 1}
    trained = lgb.train(params, lgb.Dataset(X, y), 1).model_to_string()
    mid = (float(a) + float(b)) / 2
    lines = [line for line in trained.splitlines(keepends=True) if not line.startswith("tree_sizes=")]
    text = "".join(f"threshold={mid!r}\n" if line.startswith("threshold=") else line for line in lines)
    raw = lgb.Booster(model_str=text)
    fixed = lgb.Booster(model_str=float32_thresholds(text))
    assert raw.predict(X[:1])[0] != raw.predict(X[1:2])[0]  # the split separates a from b natively
    assert np.array_equal(raw.predict(X), fixed.predict(X))  # the same decisions on float32 inputs

    def onnx_gap(booster) -> float:
        data = Dataset(X, y[:, None].astype(np.float32), ["a"], [5], np.zeros(len(X), np.int64))
        model = LGBModel(LGBParams(), ["a"], [5])
        model.boosters = {5: booster}
        graph = _booster_onnx(model, 5)
        sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": X})))
        onnx_p = outs["probabilities"][:, 1]
        return float(np.abs(onnx_p - model.predict(data, Rows(np.arange(len(X))))[:, 0]).max())

    assert onnx_gap(raw) > 1e-2  # without the rounding, b goes the other way in ONNX
    assert onnx_gap(fixed) < 1e-6


def test_trained_lightgbm_models_carry_float32_thresholds():
    _, data, folds = synthetic_dataset(hours=6_000, seed=4, signal=2.0, n_folds=3)
    model = make_model("lgb", fast_config().params_for("lgb"), data.feature_names[:20], HORIZONS)
    train_fold(model, data, folds.folds[0])
    for booster in model.boosters.values():
        thresholds = [
            float(v)
            for line in booster.model_to_string().splitlines()
            if line.startswith("threshold=")
            for v in line.split("=", 1)[1].split()
        ]
        assert thresholds and all(float(np.float32(t)) == t for t in thresholds)

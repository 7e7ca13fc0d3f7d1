"""The net that catches leaks. Each test kills at least one mutation in
``tests/mutations.py`` that an earlier version of the suite let through: early stopping, head choice or the
collapse check reading the test span (the holdout, for the refit); what ships re-chosen by holdout AUC; inner-CV
candidates scored on rows they were fitted on; the normaliser fitted beyond the fitting rows; parquet loads that
skip the sha256 check; collapse flags not reaching the stacker; an embargo shorter than the longest horizon."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.errors import ConfigError
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.models.ensemble.stacking import StackSpec, fit_meta, inner_blocks, stack_all, stack_horizon
from macd_ml.models.evaluation.stats import auc
from macd_ml.models.learners.base import Dataset, Rows
from macd_ml.models.learners.registry import make_model, select_features
from macd_ml.models.learners.train import train_fold
from tests.modelutil import HORIZONS, fast_config, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hours=6_000, seed=4, signal=2.0, n_folds=3)


def _poisoned(data: Dataset, rows: range) -> Dataset:
    """The same data with the labels of ``rows`` inverted (and NaN kept NaN)."""
    Y = data.Y.copy()
    sl = slice(rows.start, rows.stop)
    Y[sl] = np.where(np.isnan(Y[sl]), np.nan, 1.0 - Y[sl])
    return Dataset(data.X, Y, data.feature_names, data.horizons, data.segment_start, data.timestamps)


def _fit(name, data, fold, **params):
    cfg = fast_config(**({name: params} if params else {}))
    model = make_model(name, cfg.params_for(name), select_features(data.feature_names, cfg.feature_set(name)), HORIZONS)
    return model, train_fold(model, data, fold, collapse_std=cfg.collapse_std)


# ------------------------------------------------------------------------------------ fits never see test labels


@pytest.mark.parametrize(
    "name,params", [("lgb", {}), ("xgb", {}), ("lstm", {"max_epochs": 3, "max_train_rows": 1_500, "patience": 1})]
)
@pytest.mark.parametrize("which", ["fold", "refit"])
def test_test_span_labels_reach_no_fit_no_early_stop_no_head_choice(name, params, which):
    """Inverting the labels of a fold's test span (for the refit: the holdout) changes nothing that was fitted,
    chosen or predicted: not the trees kept, the epoch restored, the head recorded, nor a single prediction."""
    _, data, folds = synthetic_dataset(**SMALL)
    fold = folds.folds[1] if which == "fold" else folds.refit
    m1, r1 = _fit(name, data, fold, **params)
    m2, r2 = _fit(name, _poisoned(data, fold.test.rows()), fold, **params)
    np.testing.assert_array_equal(r1.predictions, r2.predictions)
    assert m1.info.best_iteration == m2.info.best_iteration
    assert getattr(m1, "best_head", None) == getattr(m2, "best_head", None)
    assert r1.early_stop_std == r2.early_stop_std


def test_collapse_check_reads_the_early_stopping_slice():
    _, data, folds = synthetic_dataset(**SMALL)
    fold = folds.folds[0]
    model, result = _fit("lgb", data, fold)
    es = model.predict(data, Rows.span(fold.early_stop.start, fold.early_stop.stop))
    assert result.early_stop_std == {str(h): float(np.std(es[:, j])) for j, h in enumerate(HORIZONS)}


def test_sequence_normaliser_is_fitted_on_fitting_rows_only():
    _, data, folds = synthetic_dataset(**SMALL)
    fold = folds.folds[0]
    model, _ = _fit("lstm", data, fold, max_epochs=1, max_train_rows=None)
    X = data.X.copy()
    outside = np.ones(len(X), bool)
    outside[fold.fit.start : fold.fit.stop] = False
    X[outside] = X[outside] * 1000.0 + 7.0  # every row that is not a fitting row changes wildly
    again, _ = _fit(
        "lstm",
        Dataset(X, data.Y, data.feature_names, data.horizons, data.segment_start),
        fold,
        max_epochs=1,
        max_train_rows=None,
    )
    np.testing.assert_array_equal(model.mean, again.mean)
    np.testing.assert_array_equal(model.std, again.std)
    rows = np.arange(fold.fit.start, fold.fit.stop)
    rows = rows[~np.isnan(data.Y[rows]).all(axis=1)]
    Xf = data.columns(model.feature_names)[rows]
    np.testing.assert_allclose(model.mean, Xf.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-7)
    std = Xf.std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(model.std, np.where(std > 1e-12, std, 1.0), rtol=1e-5)


# --------------------------------------------------------------------------------------------- the stacker


H = 12


def _oof(n: int, seed: int, start_hour: int = 0) -> pl.DataFrame:
    from datetime import datetime, timedelta, timezone

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    y = (latent + rng.normal(size=n) > 0).astype(np.int8)
    t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
    cols = {"timestamp": [t0 + timedelta(hours=start_hour + i) for i in range(n)], f"y_{H}": y}
    for name, s in {"a": 0.6, "b": 0.4, "c": 0.3}.items():
        cols[f"{name}_h{H}"] = 1 / (1 + np.exp(-(s * latent + rng.normal(size=n))))
    return pl.DataFrame(cols).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))


def test_what_ships_does_not_depend_on_holdout_labels():
    """stack_all has the holdout in scope (it reports on it): inverting or shuffling the holdout's labels must
    change no choice and no coefficient. Inverted labels make the worst candidate the holdout's best, so a choice
    made by holdout AUC would move."""
    oof, hold = _oof(5_000, 1), _oof(1_500, 2, start_hour=5_100)
    models = ["a", "b", "c"]
    inverted = hold.with_columns((1 - pl.col(f"y_{H}")).alias(f"y_{H}"))
    shuffled = hold.with_columns(pl.col(f"y_{H}").shuffle(seed=3))
    shipped = []
    for h in (hold, inverted, shuffled):
        outcome = stack_all(oof, h, models, [H], StackSpec(), 24, {})
        coefs = json.dumps({k: p.to_json() for k, p in outcome.predictors.items()}, sort_keys=True)
        shipped.append((outcome.metrics[str(H)].shipped, coefs))
        tests = {k: c.test_auc for k, c in outcome.metrics[str(H)].candidates.items()}
    assert shipped[0] == shipped[1] == shipped[2]
    assert len(set(np.round(list(tests.values()), 6))) > 1, "candidates must differ on the holdout for this test"


def test_inner_cv_scores_are_out_of_sample():
    """Recompute every inner-CV score by hand: each block's predictions come from a fit on earlier, purged rows."""
    oof = _oof(4_000, 5)
    models = ["a", "b", "c"]
    spec = StackSpec(c_grid=[0.01, 1.0])
    st = stack_horizon(oof, models, H, spec, embargo_hours=24)
    rows = oof.sort("timestamp")
    P = rows.select([f"{m}_h{H}" for m in models]).to_numpy()
    y = rows[f"y_{H}"].cast(pl.Float64).to_numpy()
    ts = rows["timestamp"].dt.epoch("us").to_numpy()
    blocks = list(inner_blocks(ts, spec.inner_folds, spec.min_train_fraction, 24))

    def by_block(score) -> float:  # each block scored on its own, weighted by its size
        return sum(auc(y[te], score(tr, te)) * len(te) for tr, te in blocks) / sum(len(te) for _, te in blocks)

    for C in spec.c_grid:
        expected = by_block(lambda tr, te, C=C: fit_meta(P[tr], y[tr], models, C, spec.nonneg).predict(P[te]))
        assert st.c_scores[str(C)] == pytest.approx(expected, abs=1e-12)
    assert st.candidates["mean"]["val_auc"] == pytest.approx(by_block(lambda tr, te: P[te].mean(axis=1)), abs=1e-12)
    best = next(k for k in st.candidates if k.startswith("best:"))
    j = models.index(best.split(":")[1])
    assert st.candidates[best]["val_auc"] == pytest.approx(by_block(lambda tr, te: P[te, j]), abs=1e-12)


def test_noise_models_do_not_look_good_on_inner_cv():
    """30 pure-noise models on 1,200 rows: a meta scored on rows it was fitted on would look far better than
    chance; scored out of sample it stays inside the noise band."""
    rng = np.random.default_rng(11)
    n = 1_200
    oof = _oof(n, 12).select("timestamp", f"y_{H}")
    names = [f"n{i}" for i in range(30)]
    oof = oof.with_columns([pl.Series(f"{m}_h{H}", rng.uniform(0.3, 0.7, size=n)) for m in names])
    st = stack_horizon(oof, names, H, StackSpec(nonneg=False, c_grid=[10.0]), embargo_hours=24)
    se = np.sqrt(1 / (3 * st.n_val))  # labels here do not overlap
    assert abs(st.c_scores["10.0"] - 0.5) < 3 * se, st.c_scores


@pytest.mark.usefixtures("prefect_server")
def test_collapsed_flags_reach_the_stacker(tmp_path, small_market_dir):
    """A model that collapses in training is left out of the stack, through the real flow."""
    from macd_ml.flows.config import RetrainConfig
    from tests.flowutil import run_flow

    cfg = RetrainConfig.model_validate(
        {
            "data_dir": str(small_market_dir),
            "out_dir": str(tmp_path / "o"),
            "folds": {"n_folds": 3},
            "models": {"enabled": ["lgb", "xgb"], "lgb": {"learning_rate": 1e-6, "max_rounds": 2}},
        }
    )
    path, _ = run_flow(cfg)
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    assert metrics["training"]["lgb"]["collapsed"] and not metrics["training"]["xgb"]["collapsed"]
    for h in ("5", "12", "24"):
        assert metrics["meta"][h]["dropped"] == {"lgb": "collapsed"}, metrics["meta"][h]
        assert set(metrics["meta"][h]["models"]) <= {"xgb", "reference"}  # never the collapsed lgb
    # the stacking stage re-run alone against the run (macd-ml stack) reads the same flags from the run
    from macd_ml.flows.rerun import run_stack

    again = run_stack(Path(path), tmp_path / "restacked")
    for h, shipped in again.items():
        assert shipped.dropped == {"lgb": "collapsed"} and "lgb" not in shipped.models, (h, shipped)


def test_a_model_collapsed_in_any_fold_is_collapsed():
    """A model that collapses in one fold but not in its refit still leaves the stack: its OOF predictions, which
    the stacker reads, hold that fold's constant."""
    from macd_ml.artifacts.store import ArtifactRef
    from macd_ml.tasks.metrics import training_summary as _training_summary
    from macd_ml.tasks.refs import FoldOutput, RefitOutput

    ref = ArtifactRef(path="/nonexistent", sha256="0" * 64, bytes=0)

    def summary(collapsed: bool) -> dict:
        return {"collapsed": {"5": collapsed, "12": False}}

    folds = [
        FoldOutput(model="lgb", fold=0, predictions=ref, summary=summary(False)),
        FoldOutput(model="lgb", fold=1, predictions=ref, summary=summary(True)),
        FoldOutput(model="xgb", fold=0, predictions=ref, summary=summary(False)),
        FoldOutput(model="xgb", fold=1, predictions=ref, summary=summary(False)),
    ]
    refits = [
        RefitOutput(model=m, files={}, holdout=ref, summary=summary(collapsed))
        for m, collapsed in (("lgb", False), ("xgb", True))
    ]
    training = _training_summary(folds, refits)
    assert training["lgb"]["collapsed"] and training["xgb"]["collapsed"]
    fine = _training_summary(
        folds[2:], refits[:1] + [RefitOutput(model="xgb", files={}, holdout=ref, summary=summary(False))]
    )
    assert not fine["xgb"]["collapsed"]


# --------------------------------------------------------------------------------------------- folds and config


def test_embargo_shorter_than_the_longest_horizon_is_refused():
    ts = pl.datetime_range(
        pl.datetime(2023, 1, 1, time_zone="UTC"), pl.datetime(2023, 6, 1, time_zone="UTC"), "1h", eager=True
    ).dt.cast_time_unit("us")
    make_folds(ts, [5, 24], FoldSpec(embargo_hours=24))
    with pytest.raises(ConfigError, match="embargo"):
        make_folds(ts, [5, 24], FoldSpec(embargo_hours=23))
    from macd_ml.flows.config import validate_config

    with pytest.raises(ConfigError, match="embargo_hours"):
        validate_config({"horizons": [5, 24], "folds": {"embargo_hours": 23}})
    validate_config({"horizons": [5, 24], "folds": {"embargo_hours": 24}})


# --------------------------------------------------------------------------------------------- verified reads


def test_every_parquet_artifact_load_is_verified(tmp_path):
    """Tasks and stages read artifacts through the store, which checks the sha256 first."""
    from macd_ml.artifacts.store import IntegrityError, read_parquet, write_parquet

    ref = write_parquet(tmp_path / "t.parquet", pl.DataFrame({"a": [1.0, 2.0, 3.0]}))
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        read_parquet(ref)
    # and nothing outside the store and ingest (user input) reads parquet directly
    import importlib

    allowed = {"store.py", "ingest.py", "bundle.py"}  # bundle.py: members verified when the bundle is opened
    offenders = []
    for folder in ("features", "models", "tasks", "flows", "deployments", "serving"):
        package = Path(importlib.import_module(f"macd_ml.{folder}").__file__).parent  # the code that runs
        for f in package.rglob("*.py"):
            if f.name in allowed:
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) in ("read_parquet", "scan_parquet")
                    and getattr(node.func.value, "id", None) == "pl"
                ):
                    offenders.append(f"{folder}/{f.name}:{node.lineno}")
    assert offenders == [], "read parquet artifacts through the store (sha256 checked): " + ", ".join(offenders)


# --------------------------------------------------------------------------------------------- options that must matter


def test_focal_loss_changes_the_loss_and_the_fit():
    import torch

    from macd_ml.models.learners.sequence import masked_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    bce, focal = masked_loss(logits, y, "bce", 2.0), masked_loss(logits, y, "focal", 2.0)
    assert float(focal) < float(bce)  # confident right answers weigh less
    assert float(masked_loss(logits, y, "focal", 0.0)) == pytest.approx(float(bce))
    _, data, folds = synthetic_dataset(**SMALL)
    kw = dict(max_epochs=1, max_train_rows=1_000)
    _, a = _fit("lstm", data, folds.folds[0], loss="bce", **kw)
    _, b = _fit("lstm", data, folds.folds[0], loss="focal", **kw)
    assert not np.array_equal(a.predictions, b.predictions)


@pytest.mark.parametrize("option", [{"augment_noise": 0.2}, {"augment_time_warp": 0.3}])
def test_augmentation_changes_the_fit_and_is_off_by_default(option):
    cfg = fast_config()
    assert cfg.lstm.augment_noise == 0 and cfg.lstm.augment_time_warp == 0 and cfg.tft.augment_noise == 0
    _, data, folds = synthetic_dataset(**SMALL)
    kw = dict(max_epochs=1, max_train_rows=1_000)
    _, plain = _fit("lstm", data, folds.folds[0], **kw)
    _, aug = _fit("lstm", data, folds.folds[0], **option, **kw)
    assert not np.array_equal(plain.predictions, aug.predictions)
    assert np.isfinite(aug.predictions).all()


def test_report_does_not_depend_on_json_key_order():
    """metrics.json is written with sorted keys; the report of a run whose meta ships must not change when
    re-rendered from it (the weights line once came out in another order)."""
    from macd_ml.models.evaluation.metrics import Metrics
    from macd_ml.models.evaluation.report import render_report
    from tests.test_report_fixture import metrics_document

    doc = metrics_document()
    assert doc["meta"]["12"]["shipped"] == "meta" and list(doc["meta"]["12"]["weights"]) == ["xgb", "lgb"]
    original = render_report(Metrics.model_validate(doc), ["plots/roc_h12.png"])
    assert "xgb 0.700, lgb 0.300" in original
    reread = Metrics.model_validate(json.loads(json.dumps(doc, sort_keys=True)))
    assert list(reread.meta["12"].weights or {}) == ["lgb", "xgb"], "the JSON round trip reordered the weights"
    reread.models = {k: reread.models[k] for k in doc["models"]}  # the run's model order, as stages restore it
    assert render_report(reread, ["plots/roc_h12.png"]) == original

"""Meta-stacking: OOF-only fitting, the honest choice rule, diversity switches, and the logistic fit itself."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression

from macd_ml.features.segments import HOUR_US
from macd_ml.models.ensemble.logistic import fit_logistic
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.ensemble.stacking import (
    StackSpec,
    candidate_predictor,
    evaluate_holdout,
    inner_blocks,
    paired_difference,
    stack_horizon,
)

H = 12


def _table(n: int, seed: int, strengths: dict[str, float], start_hour: int = 0, copies: dict | None = None):
    """Synthetic OOF-style table: y_12 plus per-model probabilities = sigmoid(strength * latent + noise)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    y = (latent + rng.normal(size=n) > 0).astype(np.int8)
    t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
    cols = {"timestamp": [t0 + timedelta(hours=start_hour + i) for i in range(n)], f"y_{H}": y}
    for name, s in strengths.items():
        cols[f"{name}_h{H}"] = 1 / (1 + np.exp(-(s * latent + rng.normal(size=n))))
    for name, src in (copies or {}).items():
        cols[f"{name}_h{H}"] = np.clip(cols[f"{src}_h{H}"] + rng.normal(scale=0.002, size=n), 0, 1)
    return pl.DataFrame(cols).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))


def test_logistic_matches_sklearn_without_bounds():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(2_000, 3))
    y = (Z @ [1.0, -0.5, 0.2] + rng.normal(size=2_000) > 0).astype(float)
    w, b = fit_logistic(Z, y, C=0.1, nonneg=False)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=1000).fit(Z, y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_nonneg_weights_and_regularisation_shrink():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(3_000, 2))
    y = (Z @ [1.0, -1.0] + rng.normal(size=3_000) > 0).astype(float)
    w, _ = fit_logistic(Z, y, C=1.0, nonneg=True)
    assert w[1] == 0.0 and w[0] > 0
    strong, _ = fit_logistic(Z, y, C=1e-4, nonneg=False)
    weak, _ = fit_logistic(Z, y, C=1.0, nonneg=False)
    assert np.abs(strong).sum() < np.abs(weak).sum() / 5


def test_inner_blocks_are_purged_walk_forward():
    ts = np.arange(1_000, dtype=np.int64) * HOUR_US
    for train, test in inner_blocks(ts, 4, 0.4, embargo_hours=24):
        assert train.max() < test.min()
        assert ts[train].max() + 24 * HOUR_US < ts[test].min()


def test_holdout_never_reaches_the_fit():
    """Shuffling, or even inverting, the holdout labels changes nothing that was fitted or chosen."""
    oof = _table(6_000, 2, {"a": 0.8, "b": 0.5, "c": 0.2})
    hold = _table(1_500, 3, {"a": 0.8, "b": 0.5, "c": 0.2}, start_hour=6_100)
    spec = StackSpec()
    st = stack_horizon(oof, ["a", "b", "c"], H, spec, embargo_hours=24)
    flipped = hold.with_columns((1 - pl.col(f"y_{H}")).alias(f"y_{H}"))
    a1, p1 = evaluate_holdout(st.shipped, hold, H)
    a2, p2 = evaluate_holdout(st.shipped, flipped, H)
    np.testing.assert_array_equal(p1, p2)
    assert a1 == pytest.approx(1 - a2)
    # the signature itself: stack_horizon is never given a holdout
    import inspect

    assert "holdout" not in inspect.signature(stack_horizon).parameters


def test_choice_rule_follows_inner_cv():
    spec = StackSpec()
    cases = [
        _table(6_000, 4, {"strong": 1.2, "n1": 0.0, "n2": 0.0}),  # one good model among noise
        _table(6_000, 5, {"a": 0.5, "b": 0.5, "c": 0.5}),  # equal, independent errors: averaging helps
        _table(6_000, 6, {"a": 0.0, "b": 0.0}),  # nothing to learn
    ]
    for oof in cases:
        models = [c[:-4] for c in oof.columns if c.endswith(f"_h{H}")]
        st = stack_horizon(oof, models, H, spec, embargo_hours=24)
        val = {k: v["val_auc"] for k, v in st.candidates.items()}
        best_single = next(k for k in val if k.startswith("best:"))
        meta_won = val["meta"] > val["mean"] and val["meta"] >= val[best_single]
        constant_meta = "note" in st.candidates["meta"]  # won on inner CV, but refitted it has no weight: not shipped
        if st.shipped.kind == "meta":
            assert meta_won and not constant_meta
        elif st.shipped.kind == "best":
            assert val[best_single] > val["mean"] and (not meta_won or constant_meta)
        else:
            assert val[best_single] <= val["mean"] and (not meta_won or constant_meta)
    strong = stack_horizon(cases[0], ["strong", "n1", "n2"], H, spec, 24)
    assert strong.shipped.kind in ("meta", "best") and "strong" in strong.shipped.models
    if strong.shipped.kind == "meta":
        w = dict(zip(strong.shipped.models, strong.shipped.weights))
        assert w["strong"] > max(w["n1"], w["n2"])


def test_diversity_flags_and_switches():
    oof = _table(6_000, 7, {"a": 0.8, "b": 0.3}, copies={"a_twin": "a"})
    oof = oof.with_columns(pl.lit(0.5).alias(f"flat_h{H}"))
    models = ["a", "b", "a_twin", "flat"]
    st = stack_horizon(oof, models, H, StackSpec(), 24, collapsed={"flat": True})
    pairs = {(p["a"], p["b"]) for p in st.diversity["redundant_pairs"]}
    assert ("a", "a_twin") in pairs
    assert st.diversity["collapsed"] == ["flat"]
    assert st.dropped == {"flat": "collapsed"}
    assert st.diversity["std"]["flat"] == 0.0
    st2 = stack_horizon(oof, models, H, StackSpec(drop_redundant=True), 24, collapsed={"flat": True})
    assert "flat" in st2.dropped and ("a" in st2.dropped) != ("a_twin" in st2.dropped)
    assert "flat" not in st2.shipped.models


def test_predictor_json_roundtrip():
    oof = _table(4_000, 8, {"a": 0.8, "b": 0.5})
    st = stack_horizon(oof, ["a", "b"], H, StackSpec(), 24)
    for label in st.candidates:
        p = candidate_predictor(st, label, oof, StackSpec())
        again = Predictor.from_json(p.to_json())
        P = oof.select([f"{m}_h{H}" for m in p.models]).to_numpy()
        np.testing.assert_allclose(again.predict(P), p.predict(P))


def test_the_pick_replaces_the_reference_only_beyond_its_margin():
    """With the reference model in the stack, the plain inner-CV pick ships only where it beats the reference by
    more than ``reference_margin_se`` SE of their paired difference; otherwise the reference ships, and the
    candidate says why."""
    strong = _table(6_000, 7, {"reference": 0.4, "a": 1.0, "b": 0.3})
    st = stack_horizon(strong, ["reference", "a", "b"], H, StackSpec(), embargo_hours=24)
    assert st.shipped.label != "best:reference" and "a" in st.shipped.models
    c = st.candidates[st.shipped.label]
    assert c["vs_reference"] > 2 * c["vs_reference_se"] > 0
    # three equally informative models with independent errors: their average really is better, beyond noise
    even = _table(6_000, 8, {"reference": 0.5, "a": 0.5, "b": 0.5})
    assert stack_horizon(even, ["reference", "a", "b"], H, StackSpec(), embargo_hours=24).shipped.kind != "best"
    # the others carry nothing: whatever edge the plain pick shows over the reference is noise
    picks, plain = [], []
    for seed in range(9, 17):
        noise = _table(6_000, seed, {"reference": 0.5, "a": 0.0, "b": 0.0})
        st = stack_horizon(noise, ["reference", "a", "b"], H, StackSpec(), embargo_hours=24)
        picks.append(st.shipped.label)
        if st.shipped.label == "best:reference" and len(st.candidates) > 3:  # a pick was overruled: it says why
            assert any("not beyond 1.5 SE" in (c.get("note") or "") for c in st.candidates.values())
        plain_spec = StackSpec(reference_margin_se=0)
        plain.append(stack_horizon(noise, ["reference", "a", "b"], H, plain_spec, embargo_hours=24).shipped.label)
    assert any(p != "best:reference" for p in plain)  # the plain choice ships noise-fitted blends at times
    assert picks.count("best:reference") >= 7


@pytest.mark.slow  # 200 simulated markets
@pytest.mark.heavy  # 200 simulated markets
def test_paired_difference_se_holds_under_overlapping_labels():
    """Two equally informative predictors of labels that overlap ``h`` rows: the paired AUC difference over its
    SE behaves like a standard normal (a per-row SE would be too small by about sqrt(h))."""
    h = 12
    z = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        r = rng.normal(size=6_000 + h)
        y = (np.convolve(r, np.ones(h), "valid")[1:6_001] > 0).astype(float)  # next h returns
        signal = np.convolve(r, np.ones(h), "valid")[1:6_001]
        # each predictor's error persists over h rows too, as a model's on overlapping windows does
        p = signal + 2 * np.convolve(rng.normal(size=6_000 + h), np.ones(h), "valid")[1:6_001]
        q = signal + 2 * np.convolve(rng.normal(size=6_000 + h), np.ones(h), "valid")[1:6_001]
        diff, se = paired_difference(y, p, q, [1_500] * 4, h)
        z.append(diff / se)
    z = np.asarray(z)
    assert 0.6 < z.std() < 1.5
    assert np.mean(np.abs(z) > 2) < 0.15
    # no block with both classes: no difference can be shown (the reference keeps its place)
    assert paired_difference(np.ones(400), p[:400], q[:400], [200, 200], h) == (0.0, float("inf"))


def test_the_model_card_says_whether_the_pick_beat_the_reference():
    from macd_ml.models.evaluation.metrics import Metrics
    from macd_ml.models.evaluation.report import render_report
    from tests.test_report_fixture import metrics_document

    doc = metrics_document()
    doc["meta"]["12"]["candidates"]["meta"].update({"vs_reference": 0.012, "vs_reference_se": 0.004})
    assert "beats the reference model on the same inner rows by +0.0120 ± 0.0040" in render_report(
        Metrics.model_validate(doc)
    )
    overruled = metrics_document()
    m = overruled["meta"]["12"]
    m["candidates"]["meta"].update({"vs_reference": 0.003, "vs_reference_se": 0.004, "note": "inside"})
    m["candidates"]["best:reference"] = {"val_auc": 0.547, "test_auc": 0.536}
    m.update({"shipped": "best:reference", "models": ["reference"], "weights": None})
    card = render_report(Metrics.model_validate(overruled))
    assert "The inner-CV pick was meta, but against the reference model" in card and "so the reference ships" in card


def test_the_out_of_sample_column_is_never_an_in_sample_prediction():
    """What the trade gate learns from (docs/trade-gate.md): with the meta-learner shipping, the shipped OOF
    probability is in sample (its weights saw every OOF row); the out-of-sample column holds the inner blocks'
    predictions only (calibrated like the shipped one) and nothing before the first block. With the mean or one
    model shipping nothing is fitted on the rows, and the two columns agree."""
    spec = StackSpec(reference_margin_se=0, include_reference=False)
    oof = _table(6_000, 5, {"a": 0.6, "b": 0.2, "c": 0.1})
    st = stack_horizon(oof, ["a", "b", "c"], H, spec, embargo_hours=24)
    assert st.shipped.kind == "meta"
    first = int(6_000 * spec.min_train_fraction)
    assert np.isnan(st.oof_honest[:first]).all() and np.isfinite(st.oof_honest[first:]).all()
    assert np.abs(st.oof_honest[first:] - st.oof_shipped[first:]).max() > 1e-3, "in-sample values leaked in"
    single = stack_horizon(_table(6_000, 4, {"strong": 1.2, "n1": 0.0}), ["strong", "n1"], H, spec, 24)
    assert single.shipped.kind != "meta"
    assert np.allclose(single.oof_honest, single.oof_shipped)

"""What the Scorer refuses to answer for (serving/guards.py, docs/bot-contract.md): the candle still forming, a
model past its age, a bar unlike the training data; and how the shadow report counts them.

One real bundle, trained on a synthetic market cut 120 h before its end (config ``until``): the folder's newest bars
are then 1-120 h after the end of the model's data. A copy of the folder whose volatility triples from that cut on
(``synthetic.shift_volatility``) is the regime the model never saw."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.artifacts import store
from macd_ml.features.ingest import load_market
from macd_ml.features.synth import shift_volatility, write_market
from macd_ml.models.release.familiarity import FamiliaritySpec, fit_familiarity
from macd_ml.serving import Scorer
from macd_ml.serving.guards import split_open
from macd_ml.serving.shadow import follow
from tests.cliutil import cli

HOUR = timedelta(hours=1)
HOURS_AFTER = 120


def _frames(folder: Path) -> dict[str, pl.DataFrame]:
    m = load_market(folder, "ETHUSDT", ["BTCUSDT"])
    return {c.symbol: c.frame for c in (m.target, *m.cross)}


@pytest.fixture(scope="module")
def end(market) -> datetime:
    return _frames(market)["ETHUSDT"]["timestamp"].max()


@pytest.fixture(scope="module")
def bundle(market, end, tmp_path_factory, prefect_server) -> Path:
    out = tmp_path_factory.mktemp("guards-out")
    until = (end - HOURS_AFTER * HOUR).isoformat()
    code, _, err = cli(
        *["retrain", "--data", str(market), "--out", str(out), "--set", "folds.n_folds=3"]
        + ["--set", 'models.enabled=["lgb"]', "--set", f"until={until}"]
    )
    assert code == 0, err
    path = out / "bundles" / f"{store.current_run(out)}.tar.gz"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def shifted(market, end, tmp_path_factory) -> Path:
    """The same market, its volatility tripled from the model's cut on (the target and its reference alike)."""
    d = tmp_path_factory.mktemp("guards-shifted")
    start = end - (HOURS_AFTER - 1) * HOUR
    frames = _frames(market)
    write_market({s: shift_volatility(f, start, 3.0) for s, f in frames.items()}, d)
    return d


# --------------------------------------------------------------------------------------------- open candles


def test_split_open_keeps_only_bars_closed_by_now():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    frame = pl.DataFrame({"timestamp": [t0, t0 + HOUR, t0 + 2 * HOUR]}).with_columns(
        pl.col("timestamp").dt.cast_time_unit("us")
    )
    kept, dropped = split_open(frame, t0 + 2 * HOUR + timedelta(minutes=59))
    assert kept["timestamp"].to_list() == [t0, t0 + HOUR] and dropped == [t0 + 2 * HOUR]
    kept, dropped = split_open(frame, t0 + 3 * HOUR)  # closed exactly now: scored
    assert kept.height == 3 and dropped == []


def test_the_open_candle_is_never_scored_and_the_scorer_says_so(bundle, market, end):
    scorer = Scorer.load(bundle)
    frames = _frames(market)
    mid_last = end + timedelta(minutes=30)  # the exchange's newest row is the candle still forming
    bars = scorer.score(frames, last=2, now=mid_last)
    assert [b.timestamp for b in bars] == [end - 2 * HOUR, end - HOUR]
    assert scorer.last_dropped == [end]
    # the same bar once it has closed: scored, and nothing dropped
    (bar,) = scorer.score(frames, last=1, now=end + HOUR)
    assert bar.timestamp == end and scorer.last_dropped == []
    # a row that opens after now is bad data, named as such
    with pytest.raises(Exception, match="in the future"):
        scorer.score(frames, last=1, now=end - timedelta(minutes=1))

    code, out, err = cli(
        "predict", "--bundle", str(bundle), "--data", str(market), "--now", mid_last.isoformat(), "--max-model-age", "0"
    )
    assert code == 0, err
    assert json.loads(out)["time"] == (end - HOUR).isoformat()
    assert f"the bar of {end.isoformat()} is still open" in err


def test_follow_scores_a_bar_only_once_it_has_closed(bundle, market, end, tmp_path):
    scorer = Scorer.load(bundle, serving={"max_model_age_hours": 0})
    log = tmp_path / "shadow.jsonl"
    now = [end + timedelta(minutes=10)]
    n = follow(scorer, str(market), log, poll_s=0.01, timeout_s=0.05, clock=lambda: now[0])
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    assert n >= 1 and times == [(end - HOUR).isoformat()], "starting fresh: the newest closed bar only"
    now[0] = end + HOUR  # the open bar closes
    follow(scorer, str(market), log, poll_s=0.01, max_bars=1, timeout_s=5, clock=lambda: now[0])
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    assert times == [(end - HOUR).isoformat(), end.isoformat()]


# --------------------------------------------------------------------------------------------- expired models


def test_the_bundle_carries_the_end_of_its_data(bundle, end):
    scorer = Scorer.load(bundle)
    assert scorer.guards.data_end == end - HOURS_AFTER * HOUR
    profile = scorer.bundle.json("training_profile.json")
    assert profile["training_end"] < profile["data_end"], "the reference rows end before the holdout"
    fam = scorer.bundle.json("metrics.json")["familiarity"]
    assert fam["threshold"] == profile["threshold"] and 0 <= fam["holdout_unfamiliar_rate"] <= 0.2
    report = scorer.bundle.members["report.md"].decode()
    assert "## Bars unlike the training data" in report and f"{profile['threshold']:.3f}" in report


def test_an_expired_model_falls_back_with_its_reason_or_only_flags(bundle, market, end):
    frames = _frames(market)
    now = end + HOUR
    # default policy (the run's config: 72 h, fallback): the newest bar is 120 h after the data
    (old,) = Scorer.load(bundle).score(frames, last=1, now=now)
    assert old.model_age_hours == HOURS_AFTER and old.flags[:1] == ["expired"]
    assert old.probabilities is None and old.path == "none" and old.reason.startswith("model expired")
    assert old.gate["path"] in ("none", "no-signal", "no-probability"), "no model decided it"
    # a bar 60 h after the data: young enough
    (young,) = Scorer.load(bundle).score(frames, last=HOURS_AFTER - 60 + 1, now=now)[:1]
    assert young.model_age_hours == 60 and "expired" not in young.flags and young.probabilities is not None
    # flag only: the probability stays, the flag says it
    (flagged,) = Scorer.load(bundle, serving={"on_expired": "flag"}).score(frames, last=1, now=now)
    assert flagged.flags[:1] == ["expired"] and flagged.probabilities is not None and flagged.path != "none"
    # 0 = never expires
    (never,) = Scorer.load(bundle, serving={"max_model_age_hours": 0}).score(frames, last=1, now=now)
    assert "expired" not in never.flags and never.probabilities is not None

    code, out, err = cli("predict", "--bundle", str(bundle), "--data", str(market), "--max-model-age", "200")
    assert code == 0 and "expired" not in json.loads(out)["flags"], err
    code, _, err = cli("predict", "--bundle", str(bundle), "--data", str(market), "--max-model-age", "-1")
    assert code != 0 and "max_model_age_hours" in err


# --------------------------------------------------------------------------------------------- unfamiliar bars


def test_bars_of_a_new_volatility_regime_are_flagged_and_the_old_regime_mostly_not(bundle, market, shifted, end):
    last = 72  # the newest three days: every one of their rolling windows sits in the new regime's first days
    now = end + HOUR
    same = Scorer.load(bundle, serving={"max_model_age_hours": 0}).score(_frames(market), last=last, now=now)
    new = Scorer.load(bundle, serving={"max_model_age_hours": 0}).score(_frames(shifted), last=last, now=now)
    rate_same = np.mean(["unfamiliar" in b.flags for b in same])
    rate_new = np.mean(["unfamiliar" in b.flags for b in new])
    assert rate_same <= 0.15, f"{rate_same:.0%} of bars like the training data were flagged"
    assert rate_new >= 0.6, f"only {rate_new:.0%} of the tripled-volatility bars were flagged"
    assert np.median([b.dissimilarity for b in new]) > 1.5 * np.median([b.dissimilarity for b in same])
    assert all(b.probabilities is not None for b in new), "the default policy only flags"
    # fallback: the flagged bars give no probability, and say why
    fb = Scorer.load(bundle, serving={"max_model_age_hours": 0, "on_unfamiliar": "fallback"})
    out = fb.score(_frames(shifted), last=last, now=now)
    withheld = [b for b in out if "unfamiliar" in b.flags]
    assert withheld and all(b.probabilities is None and "unlike the training data" in b.reason for b in withheld)
    off = Scorer.load(bundle, serving={"max_model_age_hours": 0, "on_unfamiliar": "off"})
    assert all(b.dissimilarity is None and not b.flags for b in off.score(_frames(shifted), last=5, now=now))


def test_the_threshold_ignores_neighbours_in_time_which_no_live_bar_has():
    """Slowly moving features (AR(1), phi 0.995): a training row's nearest rows are the hours beside it. Measured
    against those, the threshold is too tight and new draws of the same process are flagged far more than
    1 - quantile; excluding each row's own week gives about the promised rate."""
    rng = np.random.default_rng(0)

    def ar1(n: int, d: int = 6) -> np.ndarray:
        x = np.zeros((n, d))
        for i in range(1, n):
            x[i] = 0.995 * x[i - 1] + rng.normal(size=d) * np.sqrt(1 - 0.995**2)
        return x

    train, live = ar1(6000), ar1(6000)
    times = np.arange(6000, dtype=np.int64) * 3_600_000_000
    names = [f"f{j}" for j in range(6)]
    with_exclusion = fit_familiarity(train, times, names, FamiliaritySpec(quantile=0.95))
    without = fit_familiarity(train, times, names, FamiliaritySpec(quantile=0.95, exclusion_hours=0))
    rate = float(np.mean(with_exclusion.score(live) > with_exclusion.threshold))
    rate_without = float(np.mean(without.score(live) > without.threshold))
    assert rate_without > 0.5, rate_without
    assert rate < 0.25, rate


def test_familiarity_refuses_what_it_cannot_measure():
    names = ["a", "b"]
    with pytest.raises(ValueError, match="too few"):
        fit_familiarity(np.zeros((5, 2)), np.arange(5), names, FamiliaritySpec())
    with pytest.raises(ValueError, match="do not match"):
        fit_familiarity(np.zeros((50, 3)), np.arange(50), names, FamiliaritySpec())


# --------------------------------------------------------------------------------------------- the shadow report


def test_shadow_report_counts_expired_models_and_unfamiliar_bars(bundle, shifted, tmp_path):
    log = tmp_path / "shadow.jsonl"
    code, _, err = cli("shadow", "--bundle", str(bundle), "--data", str(shifted), "--log", str(log), "--last", "96")
    assert code == 0, err
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    expired = sum("expired" in x["flags"] for x in lines)
    assert expired == sum(x["model_age_hours"] > 72 for x in lines) == HOURS_AFTER - 72
    code, out, _ = cli("shadow-report", "--logs", str(log), "--json")
    rep = json.loads(out)
    assert code == 3, "expired bars and a regime the model never saw fail the report"
    assert rep["expired"] == expired
    assert rep["unfamiliar"] == pytest.approx(np.mean(["unfamiliar" in x["flags"] for x in lines]))
    checks = {c["name"]: c for c in rep["checks"]}
    assert not checks["bars from an expired model"]["passed"] and not checks["unfamiliar bars"]["passed"]
    code, table, _ = cli("shadow-report", "--logs", str(log), "--max-unfamiliar", "1", "--max-expired", "1000")
    assert "unfamiliar bars" in table and "bars from an expired model" in table

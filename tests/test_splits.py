"""Purged walk-forward folds: leakage properties (hypothesis) and shape checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macd_ml.errors import ConfigError
from macd_ml.features.splits import FoldSpec, check_folds, make_folds

T0 = datetime(2022, 1, 1, tzinfo=timezone.utc)


def _timestamps(n: int, gaps: list[tuple[int, int]]) -> pl.Series:
    """n hourly bars; each (position, hours) gap inserts missing hours before that bar."""
    step = np.ones(n, dtype=np.int64)
    step[0] = 0
    for pos, hours in gaps:
        step[min(max(pos, 1), n - 1)] += hours
    hours_from_start = np.cumsum(step)
    return pl.Series("timestamp", [T0 + timedelta(hours=int(h)) for h in hours_from_start]).dt.cast_time_unit("us")


def _rows(span) -> range:
    return range(span.start, span.stop)


def assert_no_leak(folds, ts: pl.Series) -> None:
    """Independent restatement of docs/leakage.md, row by row."""
    t = ts.to_list()
    h_max = timedelta(hours=max(folds.horizons))
    emb = timedelta(hours=folds.embargo_hours)
    assert emb >= h_max
    hold = set(_rows(folds.holdout))
    hold_first = t[folds.holdout.start]
    assert folds.holdout.stop == len(t)
    seen_tests: set[int] = set()
    for f in [*folds.folds, folds.refit]:
        train = set(_rows(f.fit)) | set(_rows(f.early_stop))
        test = set(_rows(f.test))
        assert train and test
        assert not train & test
        assert not train & hold, "holdout row used for training"
        test_first, test_last = t[f.test.start], t[f.test.stop - 1]
        for i in train:
            # label window [t, t + h_max] must not touch the test span; embargo after every training row
            assert t[i] + h_max < test_first
            assert t[i] + emb < test_first
            assert t[i] + emb < hold_first
            assert not (test_first <= t[i] <= test_last + emb), "training row inside test span + embargo"
        es = list(_rows(f.early_stop))
        assert es, "every fold needs an early-stopping slice"
        for i in _rows(f.fit):
            assert i < es[0]
            assert t[i] + h_max < t[es[0]], "fitted row's label window reaches the early-stopping slice"
        if f is not folds.refit:
            assert not test & hold, "holdout row in a fold's test span"
            assert not test & seen_tests, "test spans overlap"
            seen_tests |= test
            for i in test:
                assert t[i] + emb < hold_first
    assert _rows(folds.refit.test) == _rows(folds.holdout)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2_000, 6_000),
    gaps=st.lists(st.tuples(st.integers(1, 5_999), st.integers(1, 30)), max_size=6),
    horizons=st.lists(st.integers(1, 48), min_size=1, max_size=4, unique=True),
    n_folds=st.integers(2, 8),
    scheme=st.sampled_from(["expanding", "sliding"]),
    holdout=st.floats(0.05, 0.3),
    es=st.floats(0.05, 0.3),
    extra_embargo=st.integers(0, 24),
)
def test_folds_never_leak(n, gaps, horizons, n_folds, scheme, holdout, es, extra_embargo):
    ts = _timestamps(n, gaps)
    spec = FoldSpec(
        n_folds=n_folds,
        scheme=scheme,
        holdout_fraction=holdout,
        early_stop_fraction=es,
        embargo_hours=max(horizons) + extra_embargo,
    )
    folds = make_folds(ts, horizons, spec)
    assert len(folds.folds) == n_folds
    assert_no_leak(folds, ts)
    check_folds(folds, ts)  # the library's own check agrees


def test_embargo_below_longest_horizon_is_refused():
    ts = _timestamps(3_000, [])
    with pytest.raises(ConfigError, match="embargo_hours"):
        make_folds(ts, [5, 24], FoldSpec(embargo_hours=12))


def test_too_little_data_names_the_key():
    with pytest.raises(ConfigError, match="folds.n_folds"):
        make_folds(_timestamps(300, []), [24], FoldSpec(n_folds=8))


def test_expanding_and_sliding_shapes():
    ts = _timestamps(5_000, [(1_000, 5)])
    exp = make_folds(ts, [5, 12, 24], FoldSpec(scheme="expanding"))
    sld = make_folds(ts, [5, 12, 24], FoldSpec(scheme="sliding"))
    assert all(f.fit.start == 0 for f in exp.folds)
    assert [f.fit.stop for f in exp.folds] == sorted(f.fit.stop for f in exp.folds)
    sizes = [len(f.fit) + len(f.early_stop) for f in sld.folds]
    assert max(sizes) - min(sizes) <= 30  # sliding window keeps a near-constant length
    assert sld.folds[-1].fit.start > 0
    # same test spans either way
    assert [(f.test.start, f.test.stop) for f in exp.folds] == [(f.test.start, f.test.stop) for f in sld.folds]


def test_gap_counts_in_time_not_rows():
    """A 30-hour outage just before a test span already separates it: the purge counts hours, not rows."""
    base = make_folds(_timestamps(4_000, []), [24], FoldSpec(n_folds=3))
    a = base.folds[1].test.start
    ts = _timestamps(4_000, [(a, 30)])
    f = make_folds(ts, [24], FoldSpec(n_folds=3)).folds[1]
    assert f.test.start == a
    assert f.early_stop.stop == a  # no rows need dropping: the gap is longer than the embargo


def test_folds_roundtrip_json():
    from macd_ml.features.splits import Folds

    ts = _timestamps(3_000, [(500, 3)])
    folds = make_folds(ts, [5, 12, 24])
    again = Folds.model_validate_json(folds.model_dump_json())
    assert again == folds

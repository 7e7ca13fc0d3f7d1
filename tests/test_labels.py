"""Direction labels: y_h(t) = 1 iff close(t + h hours) > close(t), looked up by time, null across long gaps,
past the end, and inside the dead-zone."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.features.ingest import read_candles
from macd_ml.features.labels import fwd_return_name, label_name, make_labels

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance_spot_1h"
HOUR = timedelta(hours=1)
START = datetime(2022, 1, 1, tzinfo=timezone.utc)
HORIZONS = [5, 12, 24]


# --------------------------------------------------------------------------------------------- helpers


def frame(closes: list[float] | np.ndarray, drop: set[int] = frozenset()) -> pl.DataFrame:
    """Hourly candles from START with the given closes; hour indices in ``drop`` are left out."""
    rows = [(START + i * HOUR, float(c)) for i, c in enumerate(closes) if i not in drop]
    ts = [r[0] for r in rows]
    cl = [r[1] for r in rows]
    return pl.DataFrame(
        {"timestamp": ts, "open": cl, "high": cl, "low": cl, "close": cl, "volume": [1.0] * len(cl)},
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


def random_closes(n: int, seed: int, scale: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, scale, n)))
    c = np.round(c, 2)  # rounding makes some equal closes (ties must give 0)
    c[10:14] = c[10]  # a flat stretch
    return c


def naive_labels(df: pl.DataFrame, h: int, tolerance: int, dead_zone_bps: float = 0.0) -> list[int | None]:
    """Plain-python reference: look the bar h hours ahead up in a dict; undefined when it is missing or when a run
    of more than ``tolerance`` consecutive missing hours lies in between."""
    close = dict(zip(df["timestamp"].to_list(), df["close"].to_list()))
    out: list[int | None] = []
    for t, c in close.items():
        fut = close.get(t + h * HOUR)
        if fut is None:
            out.append(None)
            continue
        run = longest = 0
        for k in range(1, h):
            if t + k * HOUR in close:
                run = 0
            else:
                run += 1
                longest = max(longest, run)
        if longest > tolerance:
            out.append(None)
        elif abs(math.log(fut / c)) * 1e4 < dead_zone_bps:
            out.append(None)
        else:
            out.append(1 if fut > c else 0)
    return out


# --------------------------------------------------------------------------------------------- 1. definition


@pytest.mark.parametrize("h", HORIZONS)
def test_labels_match_naive_loop(h):
    closes = random_closes(120, seed=h)
    df = frame(closes)
    lab = make_labels(df, HORIZONS)
    assert lab.columns == ["timestamp", *[c for hh in HORIZONS for c in (label_name(hh), fwd_return_name(hh))]]
    assert lab["timestamp"].to_list() == df["timestamp"].to_list()
    assert lab[label_name(h)].dtype == pl.Int8
    got = lab[label_name(h)].to_list()
    exp = [1 if closes[i + h] > closes[i] else 0 for i in range(len(closes) - h)] + [None] * h
    assert got == exp
    assert got == naive_labels(df, h, 1)
    assert 0 < sum(x for x in got if x is not None) < len(closes) - h  # both classes present
    # ties are 0 (close(t+h) > close(t) is strict)
    flat = frame([100.0] * 40)
    assert make_labels(flat, [h])[label_name(h)].drop_nulls().to_list() == [0] * (40 - h)
    # forward log return
    fr = lab[fwd_return_name(h)].to_numpy()[: len(closes) - h]
    np.testing.assert_allclose(fr, np.log(closes[h:] / closes[:-h]), rtol=1e-12, atol=1e-15)
    assert lab[fwd_return_name(h)][-h:].null_count() == h


# --------------------------------------------------------------------------------------------- 2. look-up by time


def test_labels_looked_up_by_time_with_gaps():
    closes = random_closes(100, seed=1)
    closes[43], closes[44] = closes[38] * 1.05, closes[38] * 0.95  # by time (43) up, by rows (44) down
    # hour 40 missing (1 hour: tolerated), hours 70-72 missing (3 hours: longer than the tolerance)
    df = frame(closes, drop={40, 70, 71, 72})
    h = 5
    lab = make_labels(df, [h], gap_tolerance_hours=1)
    y = dict(zip(lab["timestamp"].to_list(), lab[label_name(h)].to_list()))
    at = lambda i: START + i * HOUR  # noqa: E731

    # target bar missing -> null (t = 35: t + 5 = 40 is missing)
    assert y[at(35)] is None
    # spanning the tolerated 1-hour gap -> defined, and read at t + 5 hours, not 5 rows later
    for i in (36, 37, 38, 39):
        assert y[at(i)] == (1 if closes[i + h] > closes[i] else 0)
    # the test can tell time from rows: a row-shifted label (5 rows ahead) differs somewhere across hour 40
    rows = df["close"].to_list()
    by_row = [1 if rows[j + h] > rows[j] else 0 for j in range(len(rows) - h)]
    idx = {t: j for j, t in enumerate(df["timestamp"].to_list())}
    assert any(by_row[idx[at(i)]] != y[at(i)] for i in (36, 37, 38, 39))
    # spanning the 3-hour gap -> null even where the bar at t + 5 exists (t = 66..69 -> 71..74; 73, 74 exist)
    assert y[at(68)] is None and y[at(69)] is None
    assert at(73) in y and at(74) in y
    for i in (65, 66, 67):  # t + 5 = 70..72: missing
        assert y[at(i)] is None
    assert y[at(64)] == (1 if closes[69] > closes[64] else 0)  # ends before the gap
    assert y[at(73)] == (1 if closes[78] > closes[73] else 0)  # starts after the gap
    # with a tolerance that covers the 3-hour gap, labels across it are defined
    wide = make_labels(df, [h], gap_tolerance_hours=3)
    yw = dict(zip(wide["timestamp"].to_list(), wide[label_name(h)].to_list()))
    assert yw[at(68)] == (1 if closes[73] > closes[68] else 0)
    assert yw[at(69)] == (1 if closes[74] > closes[69] else 0)
    # the last h rows are null
    assert lab[label_name(h)][-h:].null_count() == h
    assert lab[label_name(h)][-h - 1] is not None
    # everything agrees with the naive reference, for several horizons and tolerances
    for tol in (0, 1, 2, 3):
        lab = make_labels(df, HORIZONS, gap_tolerance_hours=tol)
        for hh in HORIZONS:
            assert lab[label_name(hh)].to_list() == naive_labels(df, hh, tol), (hh, tol)


def test_fwd_return_null_where_label_undefined():
    df = frame(random_closes(100, seed=2), drop={40, 70, 71, 72})
    lab = make_labels(df, HORIZONS)
    for h in HORIZONS:
        y, r = lab[label_name(h)], lab[fwd_return_name(h)]
        assert (y.is_null() == r.is_null()).all()
        defined = lab.filter(y.is_not_null())
        assert ((defined[fwd_return_name(h)] > 0).cast(pl.Int8) == defined[label_name(h)]).all()


# --------------------------------------------------------------------------------------------- 3. dead-zone


def test_dead_zone():
    closes = random_closes(400, seed=3, scale=0.002)  # ~20 bps moves: many rows on each side of 20 bps
    df = frame(closes, drop={100, 250, 251})
    base = make_labels(df, HORIZONS, dead_zone_bps=0.0)
    dz = make_labels(df, HORIZONS, dead_zone_bps=20.0)
    for h in HORIZONS:
        y0, y1 = base[label_name(h)], dz[label_name(h)]
        r = base[fwd_return_name(h)]
        small = (r.abs() < 20e-4).fill_null(False)
        big = (r.abs() >= 20e-4).fill_null(False)
        assert small.sum() > 10 and big.sum() > 10
        assert y1.filter(small).null_count() == small.sum(), "moves under the dead-zone must be unlabelled"
        assert y1.filter(big).to_list() == y0.filter(big).to_list(), "moves over the dead-zone keep their label"
        assert y1.filter(r.is_null()).null_count() == r.is_null().sum()
        # the forward return itself is not touched by the dead-zone
        assert dz[fwd_return_name(h)].to_list() == r.to_list()
        assert y1.to_list() == naive_labels(df, h, 1, dead_zone_bps=20.0)
    with pytest.raises(ValueError, match="dead_zone"):
        make_labels(df, HORIZONS, dead_zone_bps=-1.0)


# --------------------------------------------------------------------------------------------- 4. real candles


@pytest.fixture(scope="module")
def eth() -> pl.DataFrame:
    path = REAL_DATA / "ETHUSDT_1h.csv"
    if not path.is_file():
        pytest.skip(f"real candles not found at {REAL_DATA} (they live in ../shared/data next to the repo)")
    return read_candles(path, "ETHUSDT").frame


def test_real_null_counts_follow_gaps(eth):
    ts = eth["timestamp"].to_list()
    present = set(ts)
    # the long gaps (more than 1 missing hour) as (first missing hour, last missing hour), found independently
    gaps = []
    for a, b in zip(ts, ts[1:]):
        missing = int((b - a) / HOUR) - 1
        if missing > 1:
            gaps.append((a + HOUR, b - HOUR))
    assert len(gaps) == 4
    lab = make_labels(eth, HORIZONS, gap_tolerance_hours=1)
    assert lab.height == eth.height
    for h in HORIZONS:
        expected_null = 0
        for t in ts:
            if t + h * HOUR not in present:
                expected_null += 1
            elif any(t < g0 and g1 < t + h * HOUR for g0, g1 in gaps):
                expected_null += 1
        got = lab[label_name(h)].null_count()
        assert got == expected_null, (h, got, expected_null)
        # sanity on the size: the end (h rows) plus roughly h rows per gap hour, never more
        assert h <= expected_null <= h + 12 * h + 4 * h
    # and the values on defined rows are the plain comparison
    close = dict(zip(ts, eth["close"].to_list()))
    for h in HORIZONS:
        sub = lab.filter(pl.col(label_name(h)).is_not_null())
        exp = [1 if close[t + h * HOUR] > close[t] else 0 for t in sub["timestamp"].to_list()]
        assert sub[label_name(h)].to_list() == exp

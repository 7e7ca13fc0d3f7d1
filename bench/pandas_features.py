"""A pandas implementation of ``features.build.build_features`` (default-shaped ``FeatureSpec``), for benchmarks.

Same feature names, same column order, same definitions, same rows:

- segments: a new one starts after more than ``gap_tolerance_hours`` missing hours; every indicator runs per
  segment (``groupby(segment)``, or an exactly equivalent mask, see below) -- EWMs with ``adjust=False``
  (Wilder smoothing = ``alpha=1/n``), shifts,
  diffs, rolling windows with ``min_periods = window``;
- the cross-asset block: the reference's own features (prefixed ``SYM__``, no calendar), joined on the target's
  timestamps, plus rolling correlation / beta of 1-bar returns and relative strength, windowed over the
  *target's* segments;
- the first ``warmup_bars`` of every segment (target's and reference's) are dropped, then every row with a
  missing or non-finite feature.

Written the way a pandas user who cares about speed would write it: vectorised, no Python loops over rows
(the only Python loops are over the spec's windows and, for the final finiteness check, over columns).
Recursive indicators (EWM) and ``diff`` use ``groupby(segment)``. Fixed windows (rolling, shift) run on the
whole series and blank the rows whose window would reach back into the previous segment (bar index inside
the segment < window): segments are contiguous and ``min_periods == window``, so this is exactly the
per-segment definition, and it is what one does anyway for the two-series statistics, because pandas'
``groupby(...).rolling(n).corr(other)`` / ``.cov(other)`` do not pair the two series per group (they broadcast
``other`` against every group). It is also about twice as fast as ``groupby(...).rolling(n)``.

This module is only a baseline for ``bench/bench_features.py``; nothing in the pipeline imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl

from macd_ml.features.spec import FeatureSpec

# --------------------------------------------------------------------------------------------- per-segment ops


class _Seg:
    """Per-segment window operations for one series of segment ids (contiguous, ascending)."""

    def __init__(self, seg: pd.Series):
        self.seg = seg
        self.bar = seg.groupby(seg, sort=False).cumcount()  # bar index inside the segment

    def _g(self, s: pd.Series):
        return s.groupby(self.seg, sort=False)

    def ewm(self, s: pd.Series, *, span: float | None = None, alpha: float | None = None) -> pd.Series:
        return self._g(s).ewm(span=span, alpha=alpha, adjust=False).mean().droplevel(0)

    def shift(self, s: pd.Series, n: int) -> pd.Series:
        return s.shift(n).where(self.bar >= n)

    def diff(self, s: pd.Series) -> pd.Series:
        return self._g(s).diff()

    def rolling(self, s: pd.Series, n: int, how: str) -> pd.Series:
        """``s.rolling(n).<how>()`` per segment (see the module docstring)."""
        return getattr(s.rolling(n), how)().where(self.bar >= n - 1)

    def rolling_pair(self, x: pd.Series, y: pd.Series, n: int, how: str) -> pd.Series:
        """``x.rolling(n).corr|cov(y)`` per segment (see the module docstring)."""
        return getattr(x.rolling(n), how)(y).where(self.bar >= n - 1)


def segment_ids(ts: pd.Series, gap_tolerance_hours: int) -> pd.Series:
    missing = (ts.diff() // pd.Timedelta(hours=1) - 1).fillna(0)
    return (missing > gap_tolerance_hours).cumsum().astype("int32").rename("segment")


def log_return(sg: _Seg, close: pd.Series, n: int) -> pd.Series:
    return np.log(close / sg.shift(close, n))


# --------------------------------------------------------------------------------------------- own features


def own_features(candles: pd.DataFrame, spec: FeatureSpec, gap_tolerance_hours: int = 1) -> pd.DataFrame:
    """timestamp + segment + the symbol's own features + ``_bar``, one row per bar (nothing dropped)."""
    ts = candles["timestamp"]
    c, h, lo, v = (candles[k] for k in ("close", "high", "low", "volume"))
    seg = segment_ids(ts, gap_tolerance_hours)
    sg = _Seg(seg)
    out: dict[str, pd.Series] = {"timestamp": ts, "segment": seg}

    # stage 1
    prev = sg.shift(c, 1)
    tr = np.fmax(h - lo, np.fmax((h - prev).abs(), (lo - prev).abs()))  # fmax: first bar -> high - low
    atr = sg.ewm(tr, alpha=1.0 / spec.atr_window)
    macd = {m.tag: sg.ewm(c, span=m.fast) - sg.ewm(c, span=m.slow) for m in spec.macd}
    for n in spec.return_windows:
        out[f"ret_{n}"] = log_return(sg, c, n)
    d = sg.diff(c).fillna(0.0)
    up, down = d.clip(lower=0.0), (-d).clip(lower=0.0)
    for n in spec.rsi_windows:
        a_up, a_dn = sg.ewm(up, alpha=1.0 / n), sg.ewm(down, alpha=1.0 / n)
        out[f"rsi_{n}"] = pd.Series(np.where(a_dn == 0, 100.0, 100.0 - 100.0 / (1.0 + a_up / a_dn)), index=c.index)
    for n in spec.hl_windows:
        out[f"dist_high_{n}"] = c / sg.rolling(h, n, "max") - 1.0
        out[f"dist_low_{n}"] = c / sg.rolling(lo, n, "min") - 1.0
    logv = np.log(v + 1.0)
    for n in spec.volume_z_windows:
        mean, std = sg.rolling(logv, n, "mean"), sg.rolling(logv, n, "std")
        out[f"volz_{n}"] = pd.Series(np.where(std > 0, (logv - mean) / std, 0.0), index=c.index)
    rng = h - lo
    out["range_pct"] = rng / c
    out["close_in_range"] = pd.Series(np.where(rng > 0, (c - lo) / rng, 0.5), index=c.index)
    if spec.calendar:
        hour = ts.dt.hour.astype("float64") * (2 * math.pi / 24)
        dow = ts.dt.dayofweek.astype("float64") * (2 * math.pi / 7)  # Monday = 0
        out["hour_sin"], out["hour_cos"] = np.sin(hour), np.cos(hour)
        out["dow_sin"], out["dow_cos"] = np.sin(dow), np.cos(dow)

    # stage 2
    out["atr_pct"] = atr / c
    for n in spec.vol_windows:
        out[f"rvol_{n}"] = sg.rolling(out["ret_1"], n, "std")
    sig = {m.tag: sg.ewm(macd[m.tag], span=m.signal) for m in spec.macd}

    # stage 3
    for m in spec.macd:
        line, s = macd[m.tag], sig[m.tag]
        hist = line - s
        out[f"macd_{m.tag}_line"] = line / c
        out[f"macd_{m.tag}_signal"] = s / c
        out[f"macd_{m.tag}_hist"] = hist / c
        out[f"macd_{m.tag}_hist_atr"] = pd.Series(np.where(atr > 0, hist / atr, 0.0), index=c.index)
    out["_bar"] = sg.bar
    return pd.DataFrame(out)


def _names(df: pd.DataFrame) -> list[str]:
    return [k for k in df.columns if k not in ("timestamp", "segment") and not k.startswith("_")]


# --------------------------------------------------------------------------------------------- cross block


def cross_features(
    own: pd.DataFrame, close: pd.Series, symbol: str, ref: pd.DataFrame, spec: FeatureSpec, gap_tolerance_hours: int
) -> pd.DataFrame:
    """The reference's own features (``SYM__``) on the target's timestamps + corr / beta / relative strength."""
    p = f"{symbol}__"
    rf = own_features(ref, spec, gap_tolerance_hours)
    keep = [k for k in _names(rf) if not k.endswith(("_sin", "_cos"))]
    rf = pd.concat(
        [
            rf["timestamp"],
            (rf["_bar"] >= spec.warmup_bars).rename(f"_ok_{symbol}"),
            rf[keep].add_prefix(p),
            ref["close"].rename(f"{p}_close"),
        ],
        axis=1,
    )
    df = own[["timestamp", "segment", "ret_1"]].merge(rf, on="timestamp", how="left")
    sg = _Seg(df["segment"])
    tr, rr = df["ret_1"], df[f"{p}ret_1"]
    new: dict[str, pd.Series] = {}
    for n in spec.corr_windows:
        new[f"{p}corr_{n}"] = sg.rolling_pair(tr, rr, n, "corr")
    for n in spec.beta_windows:
        cov, var = sg.rolling_pair(tr, rr, n, "cov"), sg.rolling(rr, n, "var")
        new[f"{p}beta_{n}"] = pd.Series(np.where(var > 0, cov / var, 0.0), index=df.index)
    for n in spec.rs_windows:
        new[f"{p}rs_{n}"] = log_return(sg, df[f"{p}_close"], n) - log_return(sg, close, n)
    df = pd.concat([df, pd.DataFrame(new, index=df.index)], axis=1)
    return df.drop(columns=["segment", "ret_1", f"{p}_close"])


# --------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class PandasFeatureTable:
    frame: pd.DataFrame  # timestamp + features, no NaN / inf
    names: list[str]
    rows_dropped: dict[str, int]


def build_features_pd(
    target: pd.DataFrame,
    cross: dict[str, pd.DataFrame] | None = None,
    spec: FeatureSpec | None = None,
    gap_tolerance_hours: int = 1,
) -> PandasFeatureTable:
    """``target`` / ``cross`` values: candles as pandas frames (timestamp UTC ascending, float OHLCV)."""
    spec = spec or FeatureSpec()
    own = own_features(target, spec, gap_tolerance_hours)
    # own / the cross blocks are all indexed 0..n-1 over the target's bars (left joins keep the left order)
    frame = [own]
    ok = own["_bar"] >= spec.warmup_bars
    for sym, ref in (cross or {}).items():
        block = cross_features(own, target["close"], sym, ref, spec, gap_tolerance_hours)
        ok &= block.pop(f"_ok_{sym}").eq(True)  # NaN (reference bar missing) -> False
        frame.append(block.drop(columns="timestamp"))
    frame = pd.concat(frame, axis=1)
    names = _names(frame)
    ok = ok.to_numpy()
    finite = ok.copy()
    for k in names:  # per column: np.isfinite on frame[names] would first copy the whole block into one array
        finite &= np.isfinite(frame[k].to_numpy())  # drops NaN (missing) and +-inf
    table = frame.loc[finite, ["timestamp", *names]].reset_index(drop=True)
    n_warm = int(ok.sum())
    return PandasFeatureTable(
        frame=table,
        names=names,
        rows_dropped={
            "warmup_or_reference_missing": len(frame) - n_warm,
            "incomplete": n_warm - len(table),
        },
    )


def market_to_pandas(market) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A ``features.ingest.Market`` as the pandas inputs of :func:`build_features_pd`."""
    return market.target.frame.to_pandas(), {c.symbol: c.frame.to_pandas() for c in market.cross}


# --------------------------------------------------------------------------------------------- equivalence


@dataclass
class Comparison:
    ok: bool
    rows: tuple[int, int]  # (polars, pandas)
    same_columns: bool
    same_timestamps: bool
    max_abs: float  # max |a - b|
    max_rel: float  # max |a - b| / max(|a|, |b|) over values with max(|a|, |b|) >= 1e-6
    max_rel_scaled: float  # max |a - b| / max(|a|, |b|, median |column|): the figure held to rtol
    worst: list[tuple[str, float, float, float]]  # (column, max abs, max rel, max scaled rel), worst first
    rows_dropped: tuple[dict, dict]
    message: str = ""


def compare(pl_table, pd_table: PandasFeatureTable, rtol: float = 1e-9) -> Comparison:
    """Compare a polars ``FeatureTable`` with a :class:`PandasFeatureTable`: same rows (timestamps), same
    columns in the same order, and every value within ``rtol`` relative.

    "Relative" is taken against ``max(|a|, |b|, median |column|)``: a few features are differences of nearly
    equal numbers (the MACD histogram is EMA - EMA - EMA of the price, ~1e-8 of the price at a zero crossing), so
    two correct float64 implementations agree there only to ~1e-16 of the *price*, which is ~1e-8 of the value.
    The plain element-wise relative difference is reported too (``max_rel``)."""
    a_df: pl.DataFrame = pl_table.frame
    b_df: pd.DataFrame = pd_table.frame
    same_cols = list(a_df.columns) == list(b_df.columns)
    ta = a_df["timestamp"].dt.epoch("us").to_numpy()
    tb = b_df["timestamp"].dt.as_unit("us").astype("int64").to_numpy()
    same_ts = ta.shape == tb.shape and bool((ta == tb).all())
    res = Comparison(
        ok=False,
        rows=(a_df.height, len(b_df)),
        same_columns=same_cols,
        same_timestamps=same_ts,
        max_abs=math.nan,
        max_rel=math.nan,
        max_rel_scaled=math.nan,
        worst=[],
        rows_dropped=(pl_table.rows_dropped, pd_table.rows_dropped),
    )
    if not same_cols:
        only_a = [k for k in a_df.columns if k not in b_df.columns]
        only_b = [k for k in b_df.columns if k not in a_df.columns]
        res.message = (
            f"columns differ: only polars {only_a}, only pandas {only_b}, order equal: {not only_a and not only_b}"
        )
        return res
    names = [k for k in a_df.columns if k != "timestamp"]
    if not same_ts:
        sa, sb = set(ta.tolist()), set(tb.tolist())
        res.message = f"rows differ: {len(sa - sb)} only in polars, {len(sb - sa)} only in pandas"
        # compare values on the common rows anyway, to tell a row-set problem from a value problem
        common = np.array(sorted(sa & sb), dtype="int64")
        ia, ib = np.searchsorted(ta, common), np.searchsorted(tb, common)
    else:
        ia = ib = slice(None)
    a = a_df.select(names).to_numpy()[ia]
    b = b_df[names].to_numpy()[ib]
    if a.size == 0:
        res.max_abs = res.max_rel = res.max_rel_scaled = 0.0
        res.ok = same_ts
        return res
    diff = np.abs(a - b)
    mag = np.maximum(np.abs(a), np.abs(b))
    rel = np.where(mag >= 1e-6, diff / np.where(mag > 0, mag, 1.0), 0.0)
    floor = np.median(np.abs(a), axis=0)
    denom = np.maximum(mag, floor)
    scaled = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), diff)
    bad = scaled > rtol
    res.max_abs, res.max_rel, res.max_rel_scaled = float(diff.max()), float(rel.max()), float(scaled.max())
    col_abs, col_rel, col_sc = diff.max(axis=0), rel.max(axis=0), scaled.max(axis=0)
    order = np.argsort(-col_sc)
    res.worst = [(names[i], float(col_abs[i]), float(col_rel[i]), float(col_sc[i])) for i in order[:3]]
    if bad.any():
        cols = sorted({names[j] for j in np.nonzero(bad.any(axis=0))[0]})
        res.message = (res.message + "; " if res.message else "") + (
            f"{int(bad.sum())} values differ by more than {rtol:g} (scaled relative) in columns {cols}"
        )
    res.ok = same_ts and not bad.any()
    return res


def check_equivalence(market, spec: FeatureSpec | None = None, gap_tolerance_hours: int = 1) -> Comparison:
    """Build the table with polars (``features.build``) and with pandas for ``market`` and compare them."""
    from macd_ml.features.build import build_features

    spec = spec or FeatureSpec()
    t, cross = market_to_pandas(market)
    return compare(
        build_features(market, spec, gap_tolerance_hours), build_features_pd(t, cross, spec, gap_tolerance_hours)
    )

"""Benchmark of the feature build (``features.build.build_features``, polars) against a pandas baseline.

Prints figures; it is not a test and never fails on a timing. Run from the repo root:

    python bench/bench_features.py            # full run (a few minutes on 2 cores)
    python bench/bench_features.py --quick    # fewer repetitions
    python bench/bench_features.py --breakdown  # also time the stages of the polars build (1M bars + cross)

(a) real data: every symbol in ``../shared/data/binance_spot_1h`` (relative to the repo root) as target with
    BTCUSDT as the cross asset (BTCUSDT itself with ETHUSDT); skipped with a message when the folder is absent.
(b) synthetic: ``synth_market(hours=1_000_000)``, ETHUSDT as target, alone and with BTCUSDT as cross.

Before anything is timed, the pandas baseline (``bench/pandas_features.py``) is checked against the polars
output on the same input (same rows, same columns, values within 1e-9 relative); a mismatch stops the run
(``--ignore-mismatch`` to time anyway). Polars and pandas repetitions are interleaved so that machine noise
hits both alike; the table gives medians and the ratio of the two medians from this same run. Inputs are
converted to pandas once, outside the timings. ``load_market`` (read + validate) is timed separately.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from pandas_features import build_features_pd, compare, market_to_pandas

from macd_ml.features.build import (
    SEG,
    build_features,
    cross_features,
    feature_names,
    own_exprs,
    own_features,
)
from macd_ml.features.ingest import Candles, Market, load_market, symbol_files
from macd_ml.features.segments import segment_ids
from macd_ml.features.spec import FeatureSpec
from macd_ml.features.synth import synth_market, write_market

REPO = Path(__file__).resolve().parent.parent

REAL_DIR = REPO / ".." / "shared" / "data" / "binance_spot_1h"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")


def timed(fn, *args, **kwargs):
    gc.collect()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_s(xs: list[float]) -> str:
    """median [min-max], in ms below 10 s."""
    m = med(xs)
    if len(xs) == 1:
        return f"{m * 1e3:,.0f} ms"
    return f"{m * 1e3:,.0f} ms [{min(xs) * 1e3:,.0f}-{max(xs) * 1e3:,.0f}]"


def synth_candles(frames: dict[str, pl.DataFrame]) -> dict[str, Candles]:
    return {s: Candles(s, Path(f"<synth:{s}>"), f"synth-{s}", f) for s, f in frames.items()}


class Row:
    def __init__(
        self,
        case: str,
        bars: int,
        rows_out: int,
        n_feat: int,
        load: list[float] | None,
        t_pl: list[float],
        t_pd: list[float],
        check: str,
    ):
        self.case, self.bars, self.rows_out, self.n_feat = case, bars, rows_out, n_feat
        self.load, self.t_pl, self.t_pd, self.check = load, t_pl, t_pd, check


def bench_case(
    case: str, market: Market, spec: FeatureSpec, reps: int, load: list[float] | None, args, check_first: bool = True
) -> Row:
    """Equivalence check (also the warm-up), then ``reps`` interleaved polars/pandas repetitions."""
    t_pd_in, cross_pd = market_to_pandas(market)
    _, a = timed(build_features, market, spec)
    _, b = timed(build_features_pd, t_pd_in, cross_pd, spec)
    cmp = compare(a, b)
    status = "ok" if cmp.ok else "MISMATCH"
    print(
        f"  check {case}: {status}  rows polars/pandas {cmp.rows[0]}/{cmp.rows[1]}, columns equal {cmp.same_columns}, "
        f"timestamps equal {cmp.same_timestamps}, max abs {cmp.max_abs:.2e}, max rel {cmp.max_rel:.2e} "
        f"(scaled {cmp.max_rel_scaled:.2e}); worst {cmp.worst[0][0] if cmp.worst else '-'}"
        + (f"\n    {cmp.message}" if cmp.message else "")
    )
    if not cmp.ok and not args.ignore_mismatch:
        print(
            "pandas and polars outputs differ; not timing a baseline that computes something else "
            "(--ignore-mismatch to time anyway)"
        )
        sys.exit(1)
    n_rows, n_feat = a.frame.height, len(a.names)
    del a, b
    t_pl: list[float] = []
    t_pd: list[float] = []
    for i in range(reps):
        # alternate which goes first, so neither always runs right after the other's garbage
        order = ("pl", "pd") if i % 2 == 0 else ("pd", "pl")
        for who in order:
            if who == "pl":
                dt, _ = timed(build_features, market, spec)
                t_pl.append(dt)
            else:
                dt, _ = timed(build_features_pd, t_pd_in, cross_pd, spec)
                t_pd.append(dt)
    check = f"{status} {cmp.max_rel_scaled:.0e}"
    bars = market.target.frame.height
    print(f"  {case}: polars {fmt_s(t_pl)}, pandas {fmt_s(t_pd)}, ratio {med(t_pd) / med(t_pl):.2f}")
    return Row(case, bars, n_rows, n_feat, load, t_pl, t_pd, check)


def real_part(args, spec: FeatureSpec) -> list[Row]:
    data = Path(args.data)
    if not data.is_dir():
        print(f"(a) real data: {data} not found -- skipped")
        return []
    have = set(symbol_files(data))
    rows = []
    print(f"(a) real data in {data.resolve()}")
    for sym in SYMBOLS:
        if sym not in have:
            print(f"  {sym}: no file, skipped")
            continue
        cross = "ETHUSDT" if sym == "BTCUSDT" else "BTCUSDT"
        if cross not in have:
            print(f"  {sym}: cross {cross} missing, skipped")
            continue
        load = [timed(load_market, data, sym, [cross])[0] for _ in range(args.load_reps)]
        market = load_market(data, sym, [cross])
        rows.append(bench_case(f"{sym} + {cross}", market, spec, args.real_reps, load, args))
    return rows


def synth_part(args, spec: FeatureSpec) -> list[Row]:
    hours = args.hours
    print(f"(b) synthetic, {hours:,} bars per symbol")
    dt, frames = timed(synth_market, hours=hours)
    print(f"  synth_market: {dt:.2f} s")
    c = synth_candles(frames)
    load = None
    if not args.no_load:
        # the same market as CSV on disk, to time read + validate at this size
        with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
            dt, _ = timed(write_market, {s: frames[s] for s in ("ETHUSDT", "BTCUSDT")}, tmp)
            print(f"  write_market (2 symbols, CSV): {dt:.2f} s")
            load_t = [timed(load_market, tmp, "ETHUSDT")[0] for _ in range(args.load_reps_synth)]
            load_x = [timed(load_market, tmp, "ETHUSDT", ["BTCUSDT"])[0] for _ in range(args.load_reps_synth)]
        load = (load_t, load_x)
    rows = []
    for label, cross in (("target only", ()), ("+ 1 cross", ("BTCUSDT",))):
        market = Market(c["ETHUSDT"], tuple(c[x] for x in cross))
        rows.append(
            bench_case(
                f"synth {hours // 1000}k {label}",
                market,
                spec,
                args.synth_reps,
                load[len(cross)] if load else None,
                args,
            )
        )
    return rows


def own_features_in_memory(candles: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """features.build.own_features with the same expressions, collected with the in-memory engine (polars 2
    defaults ``collect()`` to the streaming engine). A diagnostic for --breakdown, not used for the table."""
    lf = candles.lazy().with_columns(segment_ids(candles["timestamp"], 1))
    for stage in own_exprs(spec):
        lf = lf.with_columns(stage)
    return lf.with_columns(pl.int_range(pl.len()).over(SEG).alias("_bar")).collect(engine="in-memory")


def breakdown(args, spec: FeatureSpec) -> None:
    """Stages of the polars build, 1M bars + 1 cross (the pieces build_features runs, timed one by one)."""
    hours = args.hours
    print(f"\nbreakdown of the polars build ({hours:,} bars, target + 1 cross), median of {args.synth_reps}")
    c = synth_candles(synth_market(symbols=("ETHUSDT", "BTCUSDT"), hours=hours))
    tgt, ref = c["ETHUSDT"], c["BTCUSDT"]
    market = Market(tgt, (ref,))
    stages: dict[str, list[float]] = {}

    def add(name, dt):
        stages.setdefault(name, []).append(dt)

    for _ in range(args.synth_reps):
        dt, own = timed(own_features, tgt.frame, spec, 1)
        add("own_features(target)", dt)
        own = own.with_columns(_close=tgt.frame["close"])
        dt, _ = timed(own_features_in_memory, tgt.frame, spec)
        add("  what-if: own_features(target), collect(engine='in-memory')", dt)
        dt, _ = timed(own_features, ref.frame, spec, 1)
        add("  own_features(reference) [inside cross_features]", dt)
        dt, block = timed(cross_features, own, ref, spec, 1)
        add("cross_features (incl. the reference's own_features)", dt)

        def tail(own=own, block=block):
            frame = own.join(block, on="timestamp", how="left")
            ok = (pl.col("_bar") >= spec.warmup_bars) & pl.col(f"_ok_{ref.symbol}").fill_null(False)
            warm = frame.filter(ok)
            names = feature_names(warm)
            complete = warm.drop_nulls(subset=names).filter(pl.all_horizontal([pl.col(n).is_finite() for n in names]))
            return complete.select("timestamp", *names)

        dt, _ = timed(tail)
        add("join + warm-up filter + drop incomplete", dt)
        dt, _ = timed(build_features, market, spec)
        add("build_features (total)", dt)
    for name, xs in stages.items():
        print(f"  {name:<55} {med(xs) * 1e3:8,.0f} ms")


def print_table(rows: list[Row]) -> None:
    print()
    print("| case | bars | rows out | features | load+validate | polars | pandas | pandas/polars | check |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        load = f"{med(r.load) * 1e3:,.0f} ms" if r.load else "-"
        print(
            f"| {r.case} | {r.bars:,} | {r.rows_out:,} | {r.n_feat} | {load} | {fmt_s(r.t_pl)} | {fmt_s(r.t_pd)} "
            f"| {med(r.t_pd) / med(r.t_pl):.2f}x | {r.check} |"
        )
    print()
    print(
        "polars / pandas: median [min-max] of the repetitions; pandas/polars is the ratio of the medians, "
        "measured in the same run; load+validate = load_market (read + validate the target and the cross "
        "file, CSV), median; check = equivalence verdict and max scaled relative difference."
    )


def print_targets(rows: list[Row]) -> None:
    """The feature targets (docs/performance.md), each beside what this run measured (medians)."""
    synth = {r.case.split(" ", 2)[2]: r for r in rows if r.case.startswith("synth ")}
    real = [r for r in rows if not r.case.startswith("synth ")]
    print("| feature figure | measured | target |\n|---|---|---|")
    if "+ 1 cross" in synth:
        r = synth["+ 1 cross"]
        print(f"| build, {r.bars:,} bars + 1 cross | {med(r.t_pl):.2f} s | < 1.5 s |")
    if "target only" in synth and synth["target only"].load:
        r = synth["target only"]
        print(f"| load + validate a {r.bars:,}-row CSV | {med(r.load):.2f} s | < 1 s |")
    for label, group in (("real candles (median over symbols)", real), ("synthetic", list(synth.values()))):
        if group:
            ratio = statistics.median(med(r.t_pd) / med(r.t_pl) for r in group)
            print(f"| pandas / polars, {label} | {ratio:.2f}x | >= 5x (see docs/performance.md for what limits it) |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--data", default=str(REAL_DIR), help="folder with the real candles (default: %(default)s)")
    ap.add_argument("--hours", type=int, default=1_000_000, help="synthetic bars per symbol")
    ap.add_argument("--reps", type=int, help="repetitions per case (default 7 real / 5 synthetic; --quick 3 / 2)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--no-load", action="store_true", help="do not write + load the synthetic market as CSV")
    ap.add_argument("--breakdown", action="store_true", help="also time the stages of the polars build")
    ap.add_argument("--ignore-mismatch", action="store_true", help="time even if pandas and polars differ")
    args = ap.parse_args(argv)
    args.real_reps = args.reps or (3 if args.quick else 7)
    args.synth_reps = args.reps or (2 if args.quick else 5)
    args.load_reps = 3 if args.quick else 7
    args.load_reps_synth = 1 if args.quick else 3

    spec = FeatureSpec()
    print(
        f"python {platform.python_version()}, polars {pl.__version__} ({pl.thread_pool_size()} threads), "
        f"pandas {pd.__version__}, numpy {np.__version__}; {os.cpu_count()} CPUs; "
        f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[Row] = []
    if not args.skip_real:
        rows += real_part(args, spec)
    if not args.skip_synth:
        rows += synth_part(args, spec)
    print_table(rows)
    print_targets(rows)
    if args.breakdown:
        breakdown(args, spec)
    print(
        f"load average at the end: {os.getloadavg()[0]:.2f} (the benchmark itself adds up to "
        f"{pl.thread_pool_size()}; more means something else was running)"
    )


if __name__ == "__main__":
    main()

"""Benchmark: many retrains at once (docs/walkforward.md), on the real candles.

    python bench/bench_fanout.py [--data DIR] [--skip-fleet] [--workers N] [--json FILE]

1. **walk-forward**: ``macd-ml walkforward --target ETHUSDT --every 30d --since 2023-01-01`` (12 monthly cutoffs,
   light profile) on a fresh OUT: total wall time, the children's median seconds; then what building the
   features once saved: one whole feature table plus 12 slices, against 12 tables built on the cut candles (what
   12 independent retrains would build), as a share of the walk-forward's time;
2. **fleet** (unless ``--skip-fleet``): ``macd-ml fleet`` of the five symbols, default profile, cold on a fresh
   OUT, against five cold ``macd-ml retrain`` runs one after another (each on a fresh OUT); then the same fleet
   again, unchanged, as a share of its cold time;
3. **on paper**: from the measured per-child cost, N pairs nightly on W workers.

Every command in its own process with a Prefect home whose database exists before the first timing. Figures
only, never a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


def _timed(args: list[str], env: dict, log: Path, ok=(0, 3)) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.run([str(BIN / "macd-ml"), *args], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise SystemExit(f"macd-ml {' '.join(args)} exited {proc.returncode}; see {log}")
    return seconds


def _children(out: Path, kind: str) -> list[dict]:
    found = sorted((out / kind).rglob("children.json"))
    return json.loads(found[-1].read_text()) if found else []


def features_once(data: str, target: str, cutoffs: list[datetime]) -> dict:
    """Seconds of one whole feature table + a slice per cutoff, against a table built per cutoff."""
    from macd_ml.features.build import build_features, table_until
    from macd_ml.features.ingest import load_market
    from macd_ml.features.spec import FeatureSpec

    market = load_market(data, target, ["BTCUSDT"])
    t0 = time.perf_counter()
    whole = build_features(market)
    slices = [table_until(whole, market.until(c), FeatureSpec(), 1) for c in cutoffs]
    once = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = [build_features(market.until(c)) for c in cutoffs]
    each = time.perf_counter() - t0
    assert all(a.frame.equals(b.frame) for a, b in zip(slices, built))
    return {"whole_plus_slices_s": round(once, 2), "built_per_cutoff_s": round(each, 2), "cutoffs": len(cutoffs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    p.add_argument("--skip-fleet", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="children side by side on N Dask workers (default: in turn)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp / "bench.log"
    subprocess.run([str(BIN / "prefect"), "server", "database", "reset", "-y"], env=env, capture_output=True)
    fan = ["--workers", str(args.workers)] if args.workers else []
    result: dict = {"machine": f"{os.cpu_count()} cores", "workers": args.workers or "in turn"}

    out = tmp / "walk"
    since = "2023-01-01"
    wf = ["walkforward", "--data", args.data, "--target", "ETHUSDT", "--every", "30d", "--since", since]
    total = _timed([*wf, "--out", str(out), *fan], env, log)
    kids = _children(out, "walkforward")
    cutoffs = [datetime.fromisoformat(c["until"]) for c in kids]
    result["walkforward"] = {
        "children": len(kids),
        "total_s": round(total, 1),
        "child_median_s": round(statistics.median(c["seconds"] for c in kids), 1),
        "again_s": round(_timed([*wf, "--out", str(out), *fan], env, log), 1),
        **features_once(args.data, "ETHUSDT", cutoffs or [datetime(2023, 6, 1, tzinfo=UTC)]),
    }
    w = result["walkforward"]
    saved = w["built_per_cutoff_s"] - w["whole_plus_slices_s"]
    w["features_saved_share"] = round(saved / (total + saved), 3)

    if not args.skip_fleet:
        out = tmp / "fleet"
        fleet = ["fleet", "--data", args.data, "--targets", ",".join(SYMBOLS), "--out", str(out), *fan]
        cold = _timed(fleet, env, log)
        again = _timed(fleet, env, log)
        singles = [
            _timed(["retrain", "--data", args.data, "--target", s, "--out", str(tmp / f"single-{s}")], env, log)
            for s in SYMBOLS
        ]
        kids = _children(out, "fleet")
        result["fleet"] = {
            "targets": len(SYMBOLS),
            "cold_s": round(cold, 1),
            "five_single_cold_runs_s": round(sum(singles), 1),
            "ratio": round(cold / sum(singles), 2),
            "unchanged_s": round(again, 1),
            "unchanged_share": round(again / cold, 3),
            "child_median_s": round(statistics.median(c["seconds"] for c in kids), 1) if kids else None,
        }
        per_child = result["fleet"]["child_median_s"] or statistics.median(singles)
        result["on_paper"] = {
            f"{n} pairs on {k} workers": f"{n * per_child / k / 60:.0f} min" for n in (100,) for k in (1, 4, 16, 64)
        }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

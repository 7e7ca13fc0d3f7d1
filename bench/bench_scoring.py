"""From candles to probabilities for one new bar, as a bot does it.

    .venv/bin/python bench/bench_scoring.py [RUN_DIR | BUNDLE.tar.gz] [--data DIR] [--repeats N]

Default: the bundle of ``out/current`` (``make run`` makes one) and the candles that run was trained on. Each
timed call is ``Scorer.score(candles, last=1)``: cut the newest bars the features need, build the features with
the training code, score ``ensemble.onnx``. Every call scores a different bar (the candles end one hour later
each time), with the candles already in memory the way a bot holds them:

* ``market``: a validated ``Market`` (what ``load_market`` / ``candles_from_frame`` give);
* ``frames``: a ``{symbol: polars.DataFrame}`` dict, validated on every call;
* ``folder``: a candle folder read from disk on every call (what ``macd-ml predict`` does).

Also the split of the ``market`` path into features, ONNX and the bar's dissimilarity (serving/guards.py).
p50/p95 over the calls, measured in one process.
Target on this CPU: p50 <= 20 ms end to end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from macd_ml.artifacts.store import read_json
from macd_ml.features.build import build_features
from macd_ml.features.ingest import Candles, Market, load_market
from macd_ml.serving import Scorer, read_bundle
from macd_ml.serving.bundle import build_bundle
from macd_ml.serving.scorer import HISTORY_BARS


def ms(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000.0


def cut(market: Market, drop: int) -> Market:
    """The market as it was ``drop`` hours ago (the newest ``drop`` bars not there yet)."""

    def one(c: Candles) -> Candles:
        return Candles(c.symbol, c.path, c.sha256, c.frame.head(c.frame.height - drop))

    return Market(one(market.target), tuple(one(c) for c in market.cross))


def timed(fn, inputs: list) -> list[float]:
    fn(inputs[0])  # warm-up (the sessions' first run)
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default="out/current", help="run folder or bundle (default out/current)")
    ap.add_argument("--data", help="candle folder (default: the one the run was trained on)")
    ap.add_argument("--repeats", type=int, default=200, help="bars scored per path (default 200)")
    args = ap.parse_args()

    src = Path(args.source).resolve()
    t0 = time.perf_counter()
    raw = src.read_bytes() if src.is_file() else build_bundle(src)
    build_s = time.perf_counter() - t0
    bundle = read_bundle(raw)
    scorer = Scorer(bundle)
    data = args.data or (read_json(src / "metrics.json")["input"]["data_dir"] if src.is_dir() else None)
    if not data:
        raise SystemExit("--data DIR is needed with a bundle file")
    market = load_market(data, scorer.target, scorer.cross)
    n = args.repeats
    markets = [cut(market, k) for k in range(n)]
    frames = [{c.symbol: c.frame for c in (m.target, *m.cross)} for m in markets[: max(20, n // 4)]]

    print(f"bundle {bundle.run_id} ({len(raw) / 1e6:.1f} MB, built in {build_s:.2f} s), models {list(scorer.models)}")
    print(f"ONNX provider {scorer.provider}; features on the newest {HISTORY_BARS} + lookback bars per symbol")
    print(f"{'path':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'calls':>6s}")

    def row(name: str, xs: list[float]) -> None:
        print(f"{name:28s} {ms(xs, 50):8.1f} {ms(xs, 95):8.1f} {len(xs):6d}")

    end_to_end = timed(lambda m: scorer.score(m, last=1), markets)
    row("candles -> probabilities", end_to_end)
    row("  from a frames dict", timed(lambda f: scorer.score(f, last=1), frames))
    row("  from the folder (CSV read)", timed(lambda _: scorer.score(data, last=1), [None] * max(10, n // 10)))

    tail = HISTORY_BARS + scorer.ensemble.lookback + 1
    feats = timed(lambda m: build_features(scorer.market(m, tail), scorer.spec, scorer.gap_tolerance_hours), markets)
    row("  of which: features", feats)
    table = build_features(scorer.market(market, tail), scorer.spec, scorer.gap_tolerance_hours).frame
    X = table.select(scorer.ensemble.feature_names).to_numpy().astype(np.float32)
    bars = X[None, -scorer.ensemble.lookback :, :]
    row("  of which: ensemble.onnx", timed(lambda b: scorer._ensemble.run(None, {"bars": b}), [bars] * n))
    if scorer.guards.familiarity is not None:  # the dissimilarity of the bar against the bundle's training rows
        names = scorer.guards.familiarity.names
        rows = [table.select(names).to_numpy()[-1:]] * n
        row("  of which: dissimilarity", timed(scorer.guards.familiarity.score, rows))
    target = 20.0
    p50 = statistics.median(end_to_end) * 1000.0
    print(f"target p50 <= {target:g} ms end to end: {'met' if p50 <= target else 'NOT met'} ({p50:.1f} ms)")


if __name__ == "__main__":
    main()

"""Benchmark: the trade gate's secondary model trained on the target alone, pooled over the other symbols, and
pooled with an "is the target" input (docs/trade-gate.md, "Pooled"), on the real candles.

    python bench/bench_gate_pooling.py --runs OUT/walkforward [--data DIR] [--json FILE]

For every published walk-forward run under ``--runs`` (each a cutoff of one target): the gate stage's pure
function (``models/gate/train.py:train_gate``) again on that run's own artifacts (its candles, feature table and
out-of-sample primary probabilities), once per variant; the other symbols' feature tables are built with the
target's feature code on candles cut at the run's cutoff. Per variant: the median inner walk-forward AUC and
log-loss of the secondary model over the runs, the median holdout AUC, how often the meta kinds beat no gate on
the OOF span (lower bound above zero) and the median holdout Sharpe of ``meta`` minus no gate. Figures only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import polars as pl

from macd_ml.artifacts import catalog
from macd_ml.features.build import build_features
from macd_ml.features.ingest import load_market, panel_symbols
from macd_ml.features.spec import FeatureSpec
from macd_ml.models.evaluation.backtest import BacktestSpec
from macd_ml.models.gate.secondary import GateSpec
from macd_ml.models.gate.train import PanelCandles, out_of_sample_probs, train_gate

VARIANTS = {
    "target only": {"pooled": False},
    "pooled": {"pooled": True, "symbol_feature": False},
    "pooled + symbol": {"pooled": True, "symbol_feature": True},
}


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def one_run(run: Path, data: str) -> dict:
    config = json.loads((run / catalog.CONFIG).read_text())
    meta = json.loads((run / catalog.FEATURES_META).read_text())
    target, cross = meta["target"], list(meta["cross"])
    spec = FeatureSpec.model_validate(meta["spec"])
    gap = int(meta.get("gap_tolerance_hours", 1))
    until = config.get("until")
    market = load_market(data, target, cross)
    if until is not None:
        from datetime import datetime

        market = market.until(datetime.fromisoformat(until))
    features = pl.read_parquet(run / catalog.FEATURES)
    horizons = [int(h) for h in json.loads((run / catalog.METRICS).read_text())["horizons"]]
    oof = out_of_sample_probs(pl.read_parquet(run / catalog.SHIPPED_OOF), horizons)
    holdout = pl.read_parquet(run / catalog.SHIPPED_HOLDOUT)
    folds = json.loads((run / catalog.FOLDS).read_text())
    panel = []
    for symbol in panel_symbols(data, target, cross):
        other = load_market(data, symbol, cross)
        if until is not None:
            from datetime import datetime

            other = other.until(datetime.fromisoformat(until))
        table = build_features(other, spec, gap)
        panel.append(PanelCandles(symbol, other.target.frame, table.frame))
    bt = BacktestSpec.model_validate(config.get("backtest") or {})
    h = (config.get("health") or {}).get("primary_horizon") or horizons[0]
    out = {}
    for name, update in VARIANTS.items():
        gspec = GateSpec.model_validate({**(config.get("gate") or {}), **update})
        doc = train_gate(
            market.target.frame,
            features,
            meta["names"],
            oof,
            holdout,
            panel,
            horizons,
            int(h),
            bt,
            gspec,
            int(folds["embargo_hours"]),
            target,
        ).doc
        inner = doc.get("inner") or {}
        hold = (doc.get("holdout") or {}).get("kinds", {})
        out[name] = {
            "inner_auc": inner.get("auc"),
            "inner_logloss": (inner.get("c_logloss") or {}).get(str(inner.get("C"))),
            "holdout_auc": (doc.get("holdout") or {}).get("auc"),
            "meta_beats_none_oof": (doc.get("lower_bounds") or {}).get("meta", 0.0) > 0,
            "kind": doc["kind"],
            "holdout_meta_minus_none": (hold.get("meta") or {}).get("mean", {}).get("minus_none"),
            "panel_rows": doc["signals"]["panel"],
        }
    return {"run": run.name, "target": target, "until": until, "variants": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="a walk-forward's OUT/walkforward folder")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/binance_spot_1h"))
    ap.add_argument("--every", type=int, default=1, help="use every k-th run of each target (time)")
    ap.add_argument("--json")
    args = ap.parse_args()
    newest: dict[Path, Path] = {}  # per cutoff home, its newest run with a trade gate
    for r in sorted(Path(args.runs).glob("*/*/*/runs/*")):
        if (r / catalog.TRADE_GATE).is_file():
            newest[r.parent.parent] = r
    by_target: dict[str, list[Path]] = {}
    for r in newest.values():
        by_target.setdefault(r.parts[-5], []).append(r)
    chosen = [r for rs in by_target.values() for r in sorted(rs)[:: args.every]]
    rows = [one_run(r, args.data) for r in chosen]
    summary = {}
    for name in VARIANTS:
        v = [r["variants"][name] for r in rows]
        summary[name] = {
            "runs": len(v),
            "median_inner_auc": _median([x["inner_auc"] for x in v]),
            "median_inner_logloss": _median([x["inner_logloss"] for x in v]),
            "median_holdout_auc": _median([x["holdout_auc"] for x in v]),
            "meta_kinds_shipped": sum(x["kind"].startswith("meta") for x in v),
            "meta_beats_none_oof": sum(x["meta_beats_none_oof"] for x in v),
            "median_holdout_meta_minus_none_sharpe": _median([x["holdout_meta_minus_none"] for x in v]),
        }
    for name, s in summary.items():
        print(f"{name:16s} " + "  ".join(f"{k} {v if not isinstance(v, float) else round(v, 4)}" for k, v in s.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()

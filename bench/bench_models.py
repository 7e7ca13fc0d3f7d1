"""Benchmark: per-model fit time per fold, total OOF stage time, and OOF/holdout AUC on the real candles.

    python bench/bench_models.py [--data ../shared/data/binance_spot_1h] [--folds 5] [--models lgb,xgb,...]

ETHUSDT target, BTCUSDT cross, horizons 5/12/24, default model parameters, on whatever device is present.
Prints figures only (never a pass/fail); timings on shared machines are noisy, so compare ratios from one run.
The OOF stage runs here one task after another; the flow runs ``MACD_ML_PARALLEL_TASKS`` at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from macd_ml.features.build import build_features
from macd_ml.features.ingest import load_market
from macd_ml.features.labels import align_labels, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.models.evaluation.stats import auc, auc_se
from macd_ml.models.learners.base import Rows
from macd_ml.models.learners.device import cpu_threads, torch_device
from macd_ml.models.learners.registry import MODEL_CLASSES, ModelsConfig, make_model, select_features
from macd_ml.models.learners.train import build_dataset, train_fold

ROOT = Path(__file__).resolve().parents[1]

HORIZONS = [5, 12, 24]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODEL_CLASSES))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"real candles not found at {args.data}; nothing to measure")
        return 0
    os.environ.setdefault("MACD_ML_PARALLEL_TASKS", "1")  # one task at a time: it may use every core

    market = load_market(args.data, "ETHUSDT", ["BTCUSDT"])
    table = build_features(market)
    labels = make_labels(market.target.frame, HORIZONS)
    labels = align_labels(table.frame, labels)
    data = build_dataset(table.frame, labels, table.names, HORIZONS, 1)
    folds = make_folds(table.frame["timestamp"], HORIZONS, FoldSpec(n_folds=args.folds))
    cfg = ModelsConfig()
    print(
        f"rows {data.n_rows}, features {len(table.names)}, folds {args.folds}, device {torch_device()}, "
        f"threads per task {cpu_threads()}"
    )

    report: dict[str, dict] = {}
    for name in args.models.split(","):
        names = select_features(table.names, cfg.feature_set(name))
        fold_times, preds, rows = [], [], []
        for f in folds.folds:
            model = make_model(name, cfg.params_for(name), names, HORIZONS)
            t0 = time.perf_counter()
            r = train_fold(model, data, f, collapse_std=cfg.collapse_std)
            fold_times.append(time.perf_counter() - t0)
            preds.append(r.predictions)
            rows.append(r.rows)
        P, R = np.concatenate(preds), np.concatenate(rows)
        model = make_model(name, cfg.params_for(name), names, HORIZONS)
        t0 = time.perf_counter()
        hold = Rows.span(folds.holdout.start, folds.holdout.stop)
        refit = train_fold(model, data, folds.refit, test_rows=hold, collapse_std=cfg.collapse_std)
        refit_time = time.perf_counter() - t0
        report[name] = {
            "fold_seconds": [round(t, 2) for t in fold_times],
            "median_fold_seconds": round(float(np.median(fold_times)), 2),
            "oof_stage_seconds": round(sum(fold_times), 1),
            "refit_seconds": round(refit_time, 1),
            "oof_auc": {h: auc(data.Y[R, j], P[:, j]) for j, h in enumerate(HORIZONS)},
            "test_auc": {h: auc(data.Y[refit.rows, j], refit.predictions[:, j]) for j, h in enumerate(HORIZONS)},
            "n_oof": int(len(R)),
            "n_test": int(len(refit.rows)),
            "collapsed": any(refit.collapsed.values()),
            "device": model.info.device,
        }
        print(f"{name}: folds {report[name]['fold_seconds']} s, refit {refit_time:.1f} s", flush=True)

    print(
        "\n| model | median s / fold | OOF stage s | refit s | "
        + " | ".join(f"OOF AUC h={h}" for h in HORIZONS)
        + " | "
        + " | ".join(f"holdout AUC h={h}" for h in HORIZONS)
        + " |"
    )
    print("|---" * (4 + 2 * len(HORIZONS)) + "|")
    for name, r in report.items():
        o = " | ".join(f"{r['oof_auc'][h]:.3f}" for h in HORIZONS)
        t = " | ".join(f"{r['test_auc'][h]:.3f}" for h in HORIZONS)
        print(f"| {name} | {r['median_fold_seconds']} | {r['oof_stage_seconds']} | {r['refit_seconds']} | {o} | {t} |")
    total = sum(r["oof_stage_seconds"] for r in report.values())
    print(f"\ntotal OOF stage (sequential): {total:.0f} s")
    any_r = next(iter(report.values()))
    for h in HORIZONS:
        print(
            f"3·SE at h={h}: OOF ±{3 * auc_se(any_r['n_oof'], h):.3f} (n={any_r['n_oof']}), "
            f"holdout ±{3 * auc_se(any_r['n_test'], h):.3f} (n={any_r['n_test']})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: model defaults against alternatives, every symbol of the real candles as target, out of fold only.

    python bench/bench_defaults.py --model lstm [--variant NAME:key=value,key=value ...] [--data DIR] [--folds 5]
                                   [--symbols BTCUSDT,ETHUSDT,...] [--json FILE]

For each symbol (BTCUSDT as cross; ETHUSDT as cross for BTCUSDT), the default config's features, labels and purged
folds; the model trains on every fold with its default parameters ("default") and with each ``--variant``
(overrides of its parameters; ``pooled=true`` also fits on the panel of every other symbol in the folder, rows
up to each fold's end, scored on the target's folds only). Per symbol and variant: the OOF AUC per horizon scored
within each fold (as ``metrics.json``'s ``oof_auc``), the best epoch or iteration, and the fit seconds; then per
variant the mean over symbols and its paired difference from the default with the SE of that mean difference.
The holdout is never read: defaults are chosen on OOF rows across every symbol, never on one holdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from macd_ml.features.build import build_features
from macd_ml.features.ingest import load_market, symbol_files
from macd_ml.features.labels import align_labels, make_labels
from macd_ml.features.splits import FoldSpec, make_folds
from macd_ml.models.evaluation.stats import auc_within
from macd_ml.models.learners.registry import ModelsConfig, make_model, select_features
from macd_ml.models.learners.train import build_dataset, pool, train_fold

ROOT = Path(__file__).resolve().parents[1]

HORIZONS = [5, 12, 24]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(body: str) -> dict:
    out = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = _value(value.strip())
    return out


def _variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    return name, _overrides(body)


def _best(model) -> float:
    best = model.info.best_iteration
    return float(np.mean(list(best.values()))) if isinstance(best, dict) and best else float("nan")


def _table(data_dir: str, symbol: str, cross: str):
    market = load_market(data_dir, symbol, [cross])
    table = build_features(market)
    labels = make_labels(market.target.frame, HORIZONS)
    labels = align_labels(table.frame, labels)
    return table, labels


def evaluate(
    symbol: str, cross: str, data_dir: str, model_name: str, variants: dict, n_folds: int, common: dict, sink=None
) -> dict:
    table, labels = _table(data_dir, symbol, cross)
    cfg = ModelsConfig()
    names = select_features(table.names, cfg.feature_set(model_name))
    data = build_dataset(table.frame, labels, names, HORIZONS, 1)
    folds = make_folds(table.frame["timestamp"], HORIZONS, FoldSpec(n_folds=n_folds))
    panel = None
    out = {}
    for label, overrides in variants.items():
        overrides = dict(overrides)
        pooled = bool(overrides.pop("pooled", False))
        if pooled and panel is None:  # every other symbol of the folder, same cross and features
            others = [s for s in symbol_files(Path(data_dir)) if s not in (symbol, cross)]
            panel = pool(
                data,
                [
                    build_dataset(t.frame, y, names, HORIZONS, 1)
                    for t, y in (_table(data_dir, s, cross) for s in others)
                ],
            )
        params = cfg.params_for(model_name).model_copy(update={**common, **overrides})
        params = type(params).model_validate(params.model_dump())  # validated like a config
        rows, preds, fold_ids, best, seconds = [], [], [], [], 0.0
        for f in folds.folds:
            model = make_model(model_name, params, data.feature_names, HORIZONS)
            t0 = time.perf_counter()
            r = train_fold(model, panel, f, n_target=data.n_rows) if pooled else train_fold(model, data, f)
            seconds += time.perf_counter() - t0
            rows.append(r.rows)
            preds.append(r.predictions)
            fold_ids.append(np.full(len(r.rows), f.index))
            best.append(_best(model))
        idx, p, g = np.concatenate(rows), np.concatenate(preds), np.concatenate(fold_ids)
        out[label] = {
            "oof_auc": {str(h): auc_within(data.labels[idx, j], p[:, j], g) for j, h in enumerate(HORIZONS)},
            "best": round(float(np.nanmean(best)), 1),
            "seconds": round(seconds, 1),
        }
        a = out[label]["oof_auc"]
        print(
            f"{symbol:8s} {label:18s} "
            + " ".join(f"h{h} {a[str(h)]:.4f}" for h in HORIZONS)
            + f"  best {out[label]['best']:6.1f}  {seconds:6.1f}s",
            flush=True,
        )
        if sink is not None:
            sink(out)
    return out


def summarise(model: str, results: dict, variants: list[str]) -> None:
    symbols = sorted(results)
    print(f"\n{model}: mean OOF AUC over {len(symbols)} symbols; difference from default ± SE of the mean")
    for label in variants:
        cells = []
        for h in map(str, HORIZONS):
            have = [s for s in symbols if label in results[s] and "default" in results[s]]
            vals = np.array([results[s][label]["oof_auc"][h] for s in have], dtype=float)
            base = np.array([results[s]["default"]["oof_auc"][h] for s in have], dtype=float)
            d = vals - base
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            cells.append(f"h{h} {vals.mean():.4f} ({d.mean():+.4f} ± {se:.4f})")
        best = np.mean([results[s][label]["best"] for s in symbols if label in results[s]])
        print(f"  {label:18s} " + "  ".join(cells) + f"  best {best:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value")
    ap.add_argument("--set", default="", help="key=value,... applied to every variant (e.g. device=cpu)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--symbols", help="comma-separated; default every symbol in the folder")
    ap.add_argument("--json", help="also write the figures to this file (after every variant)")
    ap.add_argument("--merge", nargs="*", help="only summarise these --json files (one per symbol, say)")
    args = ap.parse_args()
    if args.merge:
        docs = [json.loads(Path(f).read_text()) for f in args.merge]
        results = {s: r for d in docs for s, r in d["results"].items()}
        summarise(args.model, results, list(docs[0]["variants"]))
        return 0
    if not Path(args.data).is_dir():
        print(f"real candles not found at {args.data}; nothing to measure")
        return 0
    os.environ.setdefault("MACD_ML_PARALLEL_TASKS", "1")
    variants = {"default": {}, **dict(_variant(v) for v in args.variant)}
    common = _overrides(args.set)
    symbols = args.symbols.split(",") if args.symbols else sorted(symbol_files(Path(args.data)))
    results: dict = {}

    def save(partial: dict | None = None, symbol: str | None = None) -> None:
        if symbol is not None:
            results[symbol] = partial
        if args.json:
            doc = {"model": args.model, "variants": variants, "common": common, "results": results}
            Path(args.json).write_text(json.dumps(doc, indent=2))

    for s in symbols:
        cross = "ETHUSDT" if s == "BTCUSDT" else "BTCUSDT"
        evaluate(s, cross, args.data, args.model, variants, args.folds, common, sink=lambda o, s=s: save(o, s))
    summarise(args.model, results, list(variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: rules for choosing what ships, judged on later OOF rows the choice never saw (the holdout is never read).

    python bench/bench_choice.py RUNS_DIR [--cuts 3] [--json FILE]

RUNS_DIR holds run folders (``bench_quality.py --out DIR`` leaves one per target under ``DIR/TARGET/runs``);
every ``runs/2*/oof.parquet`` found below it is used, one per target (the newest), the driftless null market
excepted. Per target and horizon the OOF span is cut into ``cuts + 2`` equal time blocks; for each of the last
``cuts`` blocks, the stacker runs on the OOF rows before it (purged: ``t + embargo < block start``) exactly as
in a run, each rule picks from the same fitted candidates, and the pick is scored on the block (AUC), beside
the reference model on the same rows. Prints per rule the mean of (pick - reference) over targets x horizons x
blocks, its SE over targets (each target's mean difference is one observation), and how often the pick
differs from the reference.

Rules: ``margin:K``, the stacker as it runs with ``stacking.reference_margin_se = K`` (its pick ships only where
its inner-CV AUC beats the reference's by more than K SE of their paired difference, else the reference;
``margin:0`` is the plain best inner-CV AUC), and the fixed rules ``reference``, ``mean``, ``meta`` and ``best``
(the best single model by inner-CV AUC).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from macd_ml.features.labels import label_name
from macd_ml.features.segments import HOUR_US
from macd_ml.models.ensemble import calibration, stacking
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.evaluation.stats import auc

ROOT = Path(__file__).resolve().parents[1]

RULES = ["margin:0", "margin:1", "margin:1.5", "margin:2", "margin:3", "reference", "mean", "meta", "best"]


def _runs(base: Path) -> dict[str, Path]:
    out = {}
    for metrics in sorted(base.glob("**/runs/2*/metrics.json")):
        m = json.loads(metrics.read_text())
        if m.get("target") and "null" not in str(metrics):
            out[m["target"]] = metrics.parent  # sorted: the newest run of a target wins
    return out


def _calibrations(st: stacking.HorizonStack, train: pl.DataFrame, test: pl.DataFrame, h: int, spec, embargo) -> dict:
    """The pick's raw probability calibrated by each kind (fitted on the rows before the block) and by the
    stacker's own choice: Brier score and AUC on the block."""
    pick = st.shipped
    cols = stacking.prediction_columns_for(pick.models, h)
    fit_rows = train.filter(pl.col(label_name(h)).is_not_null()).sort("timestamp")
    p_fit = pick.predict_raw(fit_rows.select(cols).to_numpy().astype(np.float64))
    y_fit = fit_rows[label_name(h)].cast(pl.Float64).to_numpy()
    p_test = pick.predict_raw(test.select(cols).to_numpy().astype(np.float64))
    y = test[label_name(h)].cast(pl.Float64).to_numpy()
    maps = {kind: calibration.fit(kind, p_fit, y_fit) for kind in calibration.KINDS}
    maps["chosen"] = pick.calibration or calibration.Calibrator()  # among the run's stacking.calibrations
    blocks = list(
        stacking.inner_blocks(
            fit_rows["timestamp"].dt.epoch("us").to_numpy(), spec.inner_folds, spec.min_train_fraction, embargo
        )
    )
    maps["chosen:all"] = calibration.choose(p_fit, y_fit, blocks, calibration.KINDS).calibrator
    return {
        kind: {"brier": calibration.brier(c.apply(p_test), y), "auc": auc(y, c.apply(p_test)), "kind": c.kind}
        for kind, c in maps.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--cuts", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    runs = _runs(args.runs)
    if not runs:
        print(f"no run folders with metrics.json under {args.runs}", file=sys.stderr)
        return 2
    records = []
    for target, folder in runs.items():
        cfg = json.loads((folder / "config.json").read_text())
        spec = stacking.StackSpec.model_validate(cfg.get("stacking", {}))
        embargo = int(json.loads((folder / "folds.json").read_text()).get("embargo_hours", max(cfg["horizons"])))
        oof = pl.read_parquet(folder / "oof.parquet").sort("timestamp")
        models = [c[: -len("_h5")] for c in oof.columns if c.endswith("_h5")]
        ts = oof["timestamp"].dt.epoch("us").to_numpy()
        n_blocks = args.cuts + 2
        edges = [ts[0] + (ts[-1] + 1 - ts[0]) * k // n_blocks for k in range(n_blocks + 1)]
        for h in cfg["horizons"]:
            for k in range(2, n_blocks):
                start, stop = edges[k], edges[k + 1]
                train = oof.filter(pl.col("timestamp").dt.epoch("us") + embargo * HOUR_US < start)
                test = oof.filter(
                    (pl.col("timestamp").dt.epoch("us") >= start) & (pl.col("timestamp").dt.epoch("us") < stop)
                )
                test = test.filter(pl.col(label_name(h)).is_not_null())
                stacks = {
                    K: stacking.stack_horizon(
                        train, models, h, spec.model_copy(update={"reference_margin_se": K}), embargo
                    )
                    for K in (0, 1, 1.5, 2, 3)
                }
                st = stacks[0]
                y = test[label_name(h)].cast(pl.Float64).to_numpy()

                def score(pred: Predictor, test=test, y=y, h=h) -> float | None:
                    P = test.select(stacking.prediction_columns_for(pred.models, h)).to_numpy().astype(np.float64)
                    return auc(y, pred.predict(P))

                ref = score(Predictor("best", ["reference"]))
                best = next(label for label in st.candidates if label.startswith("best:"))
                picks = {f"margin:{K}": s.shipped.label for K, s in stacks.items()}
                picks |= {"reference": "best:reference", "mean": "mean", "meta": "meta", "best": best}
                c = st.candidates[st.shipped.label]
                z = None if c.get("vs_reference") is None else c["vs_reference"] / c["vs_reference_se"]
                row = {"target": target, "h": h, "block": k, "n": len(y), "reference": ref, "z": z}
                # the run's own stacker (its margin is usually one of those above: no second fit then)
                own = stacks.get(spec.reference_margin_se) or stacking.stack_horizon(train, models, h, spec, embargo)
                row["calibration"] = _calibrations(own, train, test, h, spec, embargo)
                for rule, label in picks.items():
                    pred = (
                        Predictor("best", ["reference"])
                        if label == "best:reference"
                        else stacking.candidate_predictor(st, label, train, spec)
                    )
                    a = score(pred)
                    row[rule] = {"pick": label, "auc": a, "diff": None if a is None or ref is None else a - ref}
                records.append(row)
                print(
                    json.dumps(
                        {"target": target, "h": h, "block": k, "z": z}
                        | {r: (row[r]["pick"], round(row[r]["diff"] or 0, 4)) for r in RULES}
                    ),
                    flush=True,
                )
    print(f"\n(pick - reference) AUC on later OOF blocks, {len(runs)} targets, {args.cuts} blocks, horizons pooled\n")
    print("| rule | mean diff | SE (over targets) | share of picks != reference | by horizon |")
    print("|---|---|---|---|---|")
    horizons = sorted({r["h"] for r in records})
    for rule in RULES:
        per_target = [
            np.mean([r[rule]["diff"] for r in records if r["target"] == t and r[rule]["diff"] is not None])
            for t in runs
        ]
        mean = float(np.mean(per_target))
        se = float(np.std(per_target, ddof=1) / np.sqrt(len(per_target))) if len(per_target) > 1 else float("nan")
        share = np.mean([r[rule]["pick"] != "best:reference" for r in records])
        by_h = ", ".join(
            f"{h}h {np.mean([r[rule]['diff'] for r in records if r['h'] == h and r[rule]['diff'] is not None]):+.4f}"
            for h in horizons
        )
        print(f"| {rule} | {mean:+.4f} | {se:.4f} | {share:.0%} | {by_h} |")
    print("\nCalibration of the run's stacker's pick on the same later blocks (fitted on the rows before), vs none\n")
    print("| calibration | Brier - none | AUC - none | chosen as |")
    print("|---|---|---|---|")
    for kind in [*calibration.KINDS, "chosen", "chosen:all"]:
        cal = [r["calibration"] for r in records if r["calibration"]["none"]["auc"] is not None]
        db = np.mean([c[kind]["brier"] - c["none"]["brier"] for c in cal])
        da = np.mean([(c[kind]["auc"] or 0.5) - c["none"]["auc"] for c in cal])
        kinds = ", ".join(f"{k} {sum(c[kind]['kind'] == k for c in cal)}" for k in calibration.KINDS)
        print(f"| {kind} | {db:+.5f} | {da:+.4f} | {kinds if kind.startswith('chosen') else ''} |")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

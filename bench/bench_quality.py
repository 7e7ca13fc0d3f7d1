"""Benchmark: what ships vs the reference model, every symbol of the real candles as target.

    python bench/bench_quality.py [--data ../shared/data/binance_spot_1h] [--models lgb,xgb,...] [--horizon 5]
                                  [--out DIR] [--set key=value ...]

For each symbol in the folder as target (BTCUSDT as cross; ETHUSDT as cross for BTCUSDT) one full `macd-ml retrain`
with the default config (or --models / --set), then one on the driftless synthetic market (signal 0). Prints per
target: what ships at the horizon, its holdout AUC, the reference model's, their difference in SE of the holdout
AUC, the validation -> holdout gap against its combined SE, and whether a constant shipped. Figures only: the
health gate may refuse a run (exit 3), which is reported, not an error here. Targets: mean of
(ships - reference) >= 0, none below -2 SE, every gap within 2 SE, no constant anywhere, the null market within
0.5 +- 3 SE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "macd-ml"


def _run(args: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    code = subprocess.run([str(CLI), *args], capture_output=True, text=True).returncode
    return code, time.perf_counter() - t0


def _metrics(out: Path) -> dict:
    runs = sorted((out / "runs").glob("2*/metrics.json"))
    return json.loads(runs[-1].read_text())


def _row(label: str, m: dict, h: str, code: int, seconds: float) -> dict:
    ship = m["meta"][h]
    ref = (m.get("reference") or {}).get(h, {})
    se = m["auc_se"][h]["test"]
    diff = None if ship["test_auc"] is None or ref.get("test_auc") is None else ship["test_auc"] - ref["test_auc"]
    gap, gap_se = ship.get("gap_abs"), ship.get("gap_combined_se")
    constant = ship["shipped"] == "meta" and not any(abs(w) > 0 for w in (ship.get("weights") or {}).values())
    return {
        "target": label,
        "ships": ship["shipped"],
        "test_auc": ship["test_auc"],
        "reference": ref.get("test_auc"),
        "diff": diff,
        "diff_se": None if diff is None else diff / se,
        "gap": gap,
        "gap_in_2se": None if gap is None or not gap_se else abs(gap) <= 2 * gap_se,
        "constant": constant,
        "exit": code,
        "seconds": round(seconds, 1),
        "se": se,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    ap.add_argument("--models", help="comma list (default: the config's)")
    ap.add_argument("--horizon", default="5")
    ap.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--skip-null", action="store_true", help="skip the driftless synthetic market")
    args = ap.parse_args()
    data = Path(args.data)
    symbols = sorted(p.name.split("_")[0].upper() for p in data.glob("*_1h.csv"))
    if not symbols:
        print(f"no *_1h.csv candles in {data}", file=sys.stderr)
        return 2
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="macd-ml-quality-"))
    extra = [x for s in args.set for x in ("--set", s)]
    if args.models:
        extra += ["--set", f"models.enabled={json.dumps(args.models.split(','))}"]
    rows = []
    for target in symbols:
        cross = "ETHUSDT" if target == "BTCUSDT" else "BTCUSDT"
        out = base / target
        code, secs = _run(
            ["retrain", "--data", str(data), "--target", target, "--cross", cross, "--out", str(out), *extra]
        )
        rows.append(_row(target, _metrics(out), args.horizon, code, secs))
        print(json.dumps(rows[-1]), flush=True)
    if not args.skip_null:
        out = base / "null"
        synth = base / "null-market"
        subprocess.run([str(CLI), "synth", "--out", str(synth), "--signal", "0", "--hours", "24000"], check=True)
        code, secs = _run(["retrain", "--data", str(synth), "--out", str(out), *extra])
        rows.append(_row("null (synthetic, signal 0)", _metrics(out), args.horizon, code, secs))
        print(json.dumps(rows[-1]), flush=True)

    def f(x, fmt="{:.3f}"):
        return "–" if x is None else fmt.format(x)

    print(f"\nh={args.horizon}: what ships vs the reference model, holdout AUC ({base})\n")
    print("| target | ships | holdout AUC | reference | ships - ref | in SE | gap within 2 SE | constant | exit | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['ships']} | {f(r['test_auc'])} | {f(r['reference'])} | {f(r['diff'], '{:+.3f}')} "
            f"| {f(r['diff_se'], '{:+.1f}')} | {r['gap_in_2se']} | {r['constant']} | {r['exit']} | {r['seconds']} |"
        )
    real = [r for r in rows if not r["target"].startswith("null") and r["diff"] is not None]
    if real:
        mean = sum(r["diff"] for r in real) / len(real)
        worst = min(r["diff_se"] for r in real)
        print(f"\nmean(ships - reference) over {len(real)} targets: {mean:+.4f}; worst {worst:+.1f} SE")
    null = [r for r in rows if r["target"].startswith("null")]
    if null and null[0]["test_auc"] is not None:
        n = null[0]
        print(f"null market: holdout AUC {n['test_auc']:.3f}, {(n['test_auc'] - 0.5) / n['se']:+.1f} SE from 0.5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

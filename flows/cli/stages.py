"""``stack``, ``report``, ``export-onnx``, ``health``: stages run alone against a published run; the first three
write into another folder (``--into DIR``; a run folder is immutable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from macd_ml.flows.cli.common import EXIT_GATE, EXIT_OK, command, renamed


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "stack",
        "re-run stacking alone against a published run folder",
        "Re-choose and refit what ships from a run's OOF rows; writes meta.json, stack.json and "
        "shipped_holdout.parquet into the folder --into names (runs are immutable).",
        stack,
        group="train",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    _into(p)
    p.add_argument("--set", action="append", metavar="stacking.KEY=VALUE", help="override a stacking setting")

    p = command(
        sub,
        "report",
        "re-render the report of a published run folder",
        "Re-render report.md and the plots of a run into the folder --into names.",
        report,
        group="train",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    _into(p)

    p = command(
        sub,
        "export-onnx",
        "export a published run's models to ONNX again, with parity on its holdout",
        "Write onnx/<model>.onnx for every base model, onnx/meta.onnx and onnx/ensemble.onnx (input: the last "
        "bars of raw features) plus parity.json into the folder --into names; a failed export is redone without "
        "retraining.",
        export_onnx,
        group="train",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    _into(p)

    p = command(
        sub,
        "health",
        "run the health gate on a published run (exit 0 passed, 3 refused)",
        "Check a run before it may serve: files against the manifest, models load natively and as ONNX, outputs "
        "finite and not collapsed, ONNX parity, the AUC gates, and a live check from raw candles in a fresh process.",
        health,
        group="train",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    p.add_argument("--data", metavar="DIR", help="candle folder for the live check (default: the one the run read)")
    p.add_argument("--skip-live-check", action="store_true", help="do not score the newest bars in a fresh process")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _into(p: argparse.ArgumentParser) -> None:
    renamed(
        p, "--into", "--out", metavar="DIR", required=True, help="folder to write the stage into (not inside the run)"
    )


def export_onnx(args: argparse.Namespace) -> int:
    from macd_ml.flows.rerun import run_export

    parity = run_export(Path(args.run), Path(args.into))
    for m, e in parity["models"].items():
        print(f"{m}: max |onnx - native| {e['max_abs_file']:.2g} (tolerance {e['tolerance']:g})")
    print(
        f"meta: {parity['meta']['max_abs']:.2g}; ensemble: {parity['ensemble']['max_abs']:.2g}; "
        f"parity {'passed' if parity['passed'] else 'FAILED'} on {parity['provider']}; written to {args.into}"
    )
    return EXIT_OK if parity["passed"] else EXIT_GATE


def health(args: argparse.Namespace) -> int:
    from macd_ml.flows.rerun import run_health

    report = run_health(Path(args.run), args.data, live=not args.skip_live_check)
    print(report.model_dump_json(indent=2) if args.json else report.table())
    return EXIT_OK if report.passed else EXIT_GATE


def stack(args: argparse.Namespace) -> int:
    from macd_ml.flows.rerun import run_stack

    meta = run_stack(Path(args.run), Path(args.into), args.set)
    for h, m in meta.items():
        print(f"h={h}: ships {m.shipped}, inner-CV AUC {m.val_auc or 0:.3f}, holdout AUC {m.test_auc or 0:.3f}")
    print(f"written to {args.into}")
    return EXIT_OK


def report(args: argparse.Namespace) -> int:
    from macd_ml.flows.rerun import run_report

    print(run_report(Path(args.run), Path(args.into)))
    return EXIT_OK

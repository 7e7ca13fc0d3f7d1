"""``stack`` and ``report``: stages run alone against a published run, writing elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from macd_ml.flows.cli.common import EXIT_OK, command


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "stack",
        "re-run stacking alone against a published run folder",
        "Re-choose and refit what ships from a run's OOF rows; writes meta.json, stack.json and "
        "shipped_holdout.parquet to --out (runs are immutable).",
        stack,
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder to write to (not inside the run)")
    p.add_argument("--set", action="append", metavar="stacking.KEY=VALUE", help="override a stacking setting")

    p = command(
        sub,
        "report",
        "re-render the report of a published run folder",
        "Re-render report.md and the plots of a run into --out.",
        report,
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder to write to (not inside the run)")


def stack(args: argparse.Namespace) -> int:
    from macd_ml.flows.stages import run_stack

    meta = run_stack(Path(args.run), Path(args.out), args.set)
    for h, m in meta.items():
        print(f"h={h}: ships {m.shipped}, inner-CV AUC {m.val_auc or 0:.3f}, holdout AUC {m.test_auc or 0:.3f}")
    print(f"written to {args.out}")
    return EXIT_OK


def report(args: argparse.Namespace) -> int:
    from macd_ml.flows.stages import run_report

    print(run_report(Path(args.run), Path(args.out)))
    return EXIT_OK

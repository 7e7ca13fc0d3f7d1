"""``macd-ml``: the command line (DESIGN.md §3).

Exit codes: 0 success; 2 bad input or config (one line naming the file, row or key); 3 the health gate refused
promotion; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from features.errors import ConfigError, DataError, NothingToShip

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATE = 0, 1, 2, 3


def _csv(text: str) -> list[str]:
    return [t.strip().upper() for t in text.split(",") if t.strip()]


# --------------------------------------------------------------------------------------------- subcommands


def cmd_synth(args: argparse.Namespace) -> int:
    from features.synth import synth_market, write_market

    try:
        market = synth_market(args.symbols, args.hours, args.seed, args.signal, gaps=args.gaps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    paths = write_market(market, args.out, args.format)
    for p in paths:
        print(p)
    return EXIT_OK


def cmd_features(args: argparse.Namespace) -> int:
    from features.build import build_features
    from features.ingest import default_cross, load_market
    from tasks.store import write_json, write_parquet

    cross = args.cross if args.cross is not None else default_cross(args.data, args.target)
    config = _config(args, data_dir=args.data, target=args.target, cross=cross)
    market = load_market(args.data, config.target, config.cross or [])
    table = build_features(market, config.features, config.gap_tolerance_hours)
    out = Path(args.out)
    ref = write_parquet(out, table.frame)
    write_json(
        out.with_suffix(".json"),
        {"names": table.names, "fingerprint": table.fingerprint, "n_rows": table.frame.height,
         "target": table.target, "cross": list(table.cross), "sha256": ref.sha256,
         "rows_dropped": table.rows_dropped, "gaps": market.gap_reports()},
    )
    print(f"{out}: {table.frame.height} rows x {len(table.names)} features, fingerprint {table.fingerprint[:12]}")
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    config = _config(
        args, data_dir=args.data, out_dir=args.out, target=args.target, cross=args.cross,
        force=True if args.force else None,
    )
    from tasks.store import new_run_id

    return _run(config, new_run_id())


def _run(config, run_id: str) -> int:
    """Check everything knowable first (exit 2, nothing written, no server started), then run the flow on the
    API named by PREFECT_API_URL or on a temporary local one that dies with this process."""
    from contextlib import nullcontext

    from flows.local_api import api_configured, local_api
    from flows.preflight import preflight
    from tasks.signing import check_key_outside, signing_key

    check_key_outside(config.out_dir)
    signing_key()
    preflight(config)
    with nullcontext() if api_configured() else local_api():
        from flows.retrain import retrain
        from tasks.publish import run_record_path

        try:
            path = retrain(config, run_id=run_id)
        except (DataError, ConfigError):
            raise
        except NothingToShip as exc:
            print(f"macd-ml: run {run_id} refused: {_one_line(exc)}", file=sys.stderr)
            return EXIT_GATE
        except Exception as exc:
            print(f"macd-ml: run {run_id} failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
            if run_record_path(Path(config.out_dir).resolve(), run_id).is_file():
                print(f"macd-ml: finished stages are cached; after fixing the cause, finish it with: "
                      f"macd-ml resume {run_id} --out {config.out_dir}", file=sys.stderr)
            else:
                print("macd-ml: finished stages are cached; after fixing the cause, run the same retrain command "
                      "again", file=sys.stderr)
            return EXIT_ERROR
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    note = "" if Path(path).name == run_id else f"; same artifacts as run {Path(path).name}, published earlier"
    print(f"run folder: {path} ({len(manifest['artifacts'])} artifacts{note})")
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def cmd_resume(args: argparse.Namespace) -> int:
    from flows.config import validate_config
    from tasks.publish import read_run_record, run_record_path
    from tasks.store import IntegrityError, run_dir, validate_run_id, verify_run

    run_id = validate_run_id(args.run_id)
    out = args.out or "out"
    folder = run_dir(out, run_id)
    if folder.exists():
        try:
            verify_run(folder)
            print(f"run {run_id} is already complete: {folder}")
            return EXIT_OK
        except IntegrityError as exc:
            print(f"macd-ml: {_one_line(exc)}; rebuilding run {run_id}", file=sys.stderr)
    record = run_record_path(out, run_id)
    if not record.is_file():
        raise ConfigError(f"{record}: no record of run {run_id} under {out} (is --out right? A run whose record "
                          "could not be written is finished by running the same retrain command again)")
    try:
        config = validate_config(read_run_record(out, run_id))
    except IntegrityError as exc:
        raise ConfigError(str(exc)) from None
    return _run(config, run_id)


def cmd_stack(args: argparse.Namespace) -> int:
    from flows.stages import run_stack

    meta = run_stack(Path(args.run), Path(args.out), args.set)
    for h, m in meta.items():
        print(f"h={h}: ships {m['shipped']}, inner-CV AUC {m['val_auc']:.3f}, holdout AUC {m['test_auc']:.3f}")
    print(f"written to {args.out}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from flows.stages import run_report

    print(run_report(Path(args.run), Path(args.out)))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.nightly import serve

    config = _config(args, data_dir=args.data, out_dir=args.out, target=args.target, cross=args.cross)
    print(f"serving the nightly retrain ({args.cron} UTC); Ctrl-C to stop")
    serve(config, args.cron)
    return EXIT_OK


def _config(args: argparse.Namespace, **fields):
    from flows.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [], **fields)


# --------------------------------------------------------------------------------------------- parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="pipeline config, JSON or TOML (see flows/config.py)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config key, dotted (e.g. folds.n_folds=3, horizons=[5,12]); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="macd-ml", description="Nightly retraining pipeline for the MACD bot's ML gate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("retrain", help="run the retrain flow (Prefect) and publish a run folder",
                       description="Run the whole retrain flow on a data folder (or the built-in synthetic market).")
    p.add_argument("--data", metavar="DIR", help="folder with SYMBOL_1h.csv|parquet files (default: synthetic market)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: out)")
    p.add_argument("--target", metavar="SYMBOL", help="symbol to predict (default ETHUSDT)")
    p.add_argument("--cross", metavar="A,B", type=_csv, help="reference symbols (default BTCUSDT when present)")
    p.add_argument("--force", action="store_true", help="recompute every stage, ignoring the cache")
    _add_config_args(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("resume", help="finish a failed run: only what failed (and what depends on it) runs again",
                       description="Re-run a failed run under its own id. Every task that finished comes back Cached.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--out", metavar="DIR", help="output folder of that run (default: out)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("stack", help="re-run stacking alone against a published run folder",
                       description="Re-choose and refit what ships from a run's OOF rows; writes meta.json, "
                                   "stack.json and shipped_holdout.parquet to --out (runs are immutable).")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--set", action="append", metavar="stacking.KEY=VALUE", help="override a stacking setting")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("report", help="re-render the report of a published run folder",
                       description="Re-render report.md and the plots of a run into --out.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve the nightly deployment from this process (UI runs + schedule)",
                       description="Register the 'retrain/nightly' deployment with the Prefect API (PREFECT_API_URL) "
                                   "and execute its scheduled and UI-triggered runs until interrupted.")
    p.add_argument("--data", metavar="DIR", help="candle folder the runs use by default")
    p.add_argument("--out", metavar="DIR", help="output folder (default: out)")
    p.add_argument("--target", metavar="SYMBOL")
    p.add_argument("--cross", metavar="A,B", type=_csv)
    p.add_argument("--cron", default="30 0 * * *", help="schedule, cron syntax, UTC (default 00:30 daily)")
    _add_config_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("features", help="build the feature table only (no Prefect)",
                       description="Validate the data and write the feature table (parquet) plus FILE.json with names and fingerprint.")
    p.add_argument("--data", metavar="DIR", required=True)
    p.add_argument("--out", metavar="FILE", required=True, help="parquet file to write")
    p.add_argument("--target", metavar="SYMBOL", default="ETHUSDT")
    p.add_argument("--cross", metavar="A,B", type=_csv, help="reference symbols (default BTCUSDT when present)")
    _add_config_args(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("synth", help="write a deterministic synthetic market",
                       description="Write SYMBOL_1h.csv files with volatility clustering, fat tails, a common factor and a planted signal.")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--symbols", type=_csv, default=["ETHUSDT", "BTCUSDT", "SOLUSDT"], metavar="A,B,C")
    p.add_argument("--hours", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--signal", type=float, default=1.0, help="planted-signal strength; 0 = driftless random walk")
    p.add_argument("--gaps", type=int, default=2, help="outage gaps punched into every symbol")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The local ephemeral server must not try to phone home from a machine without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError) as exc:
        print(f"macd-ml: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NothingToShip as exc:
        print(f"macd-ml: refused: {_one_line(exc)}", file=sys.stderr)
        return EXIT_GATE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything else: one line plus where to look
        print(f"macd-ml: failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        if os.environ.get("MACD_ML_DEBUG"):
            raise
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

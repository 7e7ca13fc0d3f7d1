"""``walkforward`` and ``fleet``: many retrains at once (flows/children.py), one table, one exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from macd_ml.errors import one_line
from macd_ml.flows.cli.common import (
    EXIT_ERROR,
    SPAN_IS_SINCE_UNTIL,
    add_config_args,
    add_market_args,
    add_out_arg,
    command,
    config_from,
    iso_time,
    positive_int,
    renamed,
    symbols,
)

EXITS = (
    "Exit code: 0 every child promoted; 3 none failed, one or more refused (published, not promoted); 2 a child "
    "had bad input (and none crashed); 1 a child crashed. Run the same command again to run only what failed."
)


def add_fan_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        metavar="N",
        type=positive_int,
        help="run N children side by side on a local Dask cluster of N worker processes (default: one after another)",
    )
    p.add_argument(
        "--dask-address", metavar="ADDR", help="run the children on the workers of this Dask scheduler (tcp://...)"
    )


def fan_out_update(args: argparse.Namespace) -> list[str]:
    """--workers / --dask-address as ``--set fan_out.*`` items (applied after the config file)."""
    items = []
    if args.workers:
        items += ["fan_out.runner=dask", f"fan_out.dask_workers={args.workers}"]
    if args.dask_address:
        items += ["fan_out.runner=dask", f"fan_out.dask_address={args.dask_address}"]
    return items


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "walkforward",
        "retrain at every cutoff and stitch an out-of-sample track record",
        "Retrain the way a nightly schedule would have: one retrain per cutoff (every --every from --since), "
        "each trading only the bars after its data through its bundle, stitched into one track record (gated vs "
        "ungated vs buy-and-hold, moving-block bootstrap intervals, one row per segment), pooled over --targets. "
        "Report: OUT/walkforward/reports/NAME/track_record.{md,json} and equity PNGs. " + EXITS,
        walkforward,
        group="train",
    )
    add_market_args(p, "folder with SYMBOL_1h.csv|parquet files (default: the synthetic market)")
    p.add_argument("--targets", metavar="A,B", type=symbols, help="several targets, pooled in one record")
    p.add_argument("--every", metavar="N{h,d,w}", default="30d", help="time between cutoffs (default 30d)")
    renamed(
        p,
        "--since",
        "--from",
        why=SPAN_IS_SINCE_UNTIL,
        dest="first",
        metavar="T",
        type=iso_time,
        help="the first cutoff (ISO time, UTC; default 12 cutoffs back from the newest bar)",
    )
    p.add_argument("--until", dest="last", metavar="T", type=iso_time, help="no cutoff after this (default: none)")
    p.add_argument(
        "--profile",
        choices=("light", "full"),
        default="light",
        help="light = LightGBM + XGBoost + reference, no plots (default); full = the config's models",
    )
    add_fan_out_args(p)
    add_out_arg(p)
    p.add_argument("--force", action="store_true", help="recompute every child and stage, ignoring the cache")
    add_config_args(p)

    p = command(
        sub,
        "fleet",
        "retrain every symbol of a watchlist, one bundle each, one fleet report",
        "One retrain per --targets symbol, each published under OUT/fleet/SYMBOL (its runs, current and "
        "bundles), side by side with --workers; a fleet report OUT/fleet/report.{md,json}. The same as "
        "`macd-ml retrain --set targets=[...]`. " + EXITS,
        fleet,
        group="train",
    )
    p.add_argument(
        "--data", metavar="DIR", help="folder with SYMBOL_1h.csv|parquet files (default: the synthetic market)"
    )
    p.add_argument("--targets", metavar="A,B", type=symbols, help="the watchlist (default: the config's targets)")
    p.add_argument("--cross", metavar="A,B", type=symbols, help="reference symbols (default BTCUSDT when present)")
    add_fan_out_args(p)
    add_out_arg(p)
    p.add_argument("--force", action="store_true", help="recompute every stage, ignoring the cache")
    add_config_args(p)


def _config(args: argparse.Namespace, **fields):
    args.set = [*(args.set or []), *fan_out_update(args)]
    return config_from(args, data_dir=args.data, out_dir=args.out, cross=args.cross, force=args.force or None, **fields)


def walkforward(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from macd_ml.errors import ConfigError
    from macd_ml.flows.walkforward import WalkForwardSpec

    config = _config(args, target=args.target)
    try:
        walk = WalkForwardSpec(
            every=args.every, start=args.first, end=args.last, targets=args.targets or [], profile=args.profile
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {"every": "--every", "start": "--since", "end": "--until", "targets": "--targets"}.get(
            str(err["loc"][0]), str(err["loc"][0])
        )
        raise ConfigError(f"walkforward {flag}: {err['msg'].removeprefix('Value error, ')}") from None
    from macd_ml.flows.walkforward import walkforward as flow

    return run_parent(lambda: flow(config, walk), Path(config.out_dir))


def fleet(args: argparse.Namespace) -> int:
    config = _config(args, targets=args.targets)
    if not config.targets:
        from macd_ml.errors import ConfigError

        raise ConfigError("config key 'targets': give the watchlist (--targets A,B,C or --set targets=[...])")
    from macd_ml.flows.fleet import fleet as flow

    return run_parent(lambda: flow(config), Path(config.out_dir))


def run_parent(call, out: Path) -> int:
    """Run a parent flow on the configured API (or a temporary local one); print its table; its exit code."""
    from contextlib import nullcontext

    from macd_ml.artifacts.signing import check_key_outside, signing_key
    from macd_ml.flows.children import ChildrenFailed, exit_code, rows_from_report
    from macd_ml.flows.local_api import api_configured, local_api

    check_key_outside(out)
    signing_key()
    with nullcontext() if api_configured() else local_api():
        try:
            report = Path(call())
        except ChildrenFailed as exc:
            print(f"macd-ml: {one_line(exc)}", file=sys.stderr)
            print(
                "macd-ml: finished children are cached: run the same command again to run only the failed ones",
                file=sys.stderr,
            )
            if exc.report:
                print((Path(exc.report) / "children.md").read_text())
                print(f"macd-ml: or: macd-ml resume {exc.report}", file=sys.stderr)
            return exc.code
        except Exception as exc:
            from macd_ml.errors import ConfigError, DataError

            if isinstance(exc, (ConfigError, DataError)):
                raise
            print(f"macd-ml: failed: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            return EXIT_ERROR
    print((report / "children.md").read_text())
    print(f"report: {report}")
    code = exit_code(rows_from_report(report))
    return code


def resume_parent(folder: Path) -> int:
    """``macd-ml resume REPORT_DIR``: the walk-forward or fleet that wrote ``folder``, again, with the parameters
    it recorded there (signed): finished children come back Cached, failed ones run."""
    from macd_ml.errors import ConfigError
    from macd_ml.flows.children import parent_record
    from macd_ml.flows.config import validate_config

    record = parent_record(folder)
    if record is None:
        raise ConfigError(f"{folder}: no verified record of a walkforward or fleet here (is it a report folder?)")
    params = dict(record["params"])
    config = validate_config(params.pop("config"))
    if record["flow"] == "walkforward":
        from macd_ml.flows.walkforward import WalkForwardSpec
        from macd_ml.flows.walkforward import walkforward as flow

        walk = WalkForwardSpec.model_validate(params["walk"])
        return run_parent(lambda: flow(config, walk), Path(config.out_dir))
    from macd_ml.flows.fleet import fleet

    return run_parent(lambda: fleet(config, **params), Path(config.out_dir))

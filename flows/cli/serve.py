"""``serve``: the nightly deployment run from this process."""

from __future__ import annotations

import argparse

from macd_ml.flows.cli.common import EXIT_OK, add_config_args, add_market_args, add_out_arg, command, config_from


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "serve",
        "serve the nightly deployment from this process (UI runs + schedule)",
        "Register the 'retrain/served' deployment with the Prefect API (PREFECT_API_URL) and execute "
        "its scheduled and UI-triggered runs until interrupted. Without --data it only runs UI runs (on the "
        "synthetic market): the schedule is registered only with a candle folder.",
        serve,
        group="ops",
    )
    add_market_args(p, "candle folder the runs use by default")
    add_out_arg(p)
    p.add_argument("--cron", default="30 0 * * *", help="schedule, cron syntax (default 00:30 daily)")
    p.add_argument("--timezone", default="UTC", help="IANA timezone the cron follows (default UTC)")
    add_config_args(p)


def serve(args: argparse.Namespace) -> int:
    from macd_ml.deployments.nightly import serve as serve_deployment

    config = config_from(args, data_dir=args.data, out_dir=args.out, target=args.target, cross=args.cross)
    when = f"schedule {args.cron} {args.timezone}" if config.data_dir else "no schedule without --data; UI runs only"
    print(f"serving retrain/served ({when}); Ctrl-C to stop")
    serve_deployment(config, args.cron, args.timezone)
    return EXIT_OK

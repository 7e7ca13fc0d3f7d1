"""``features`` and ``synth``: data commands that need no Prefect; each writes what ``--to`` names."""

from __future__ import annotations

import argparse
from pathlib import Path

from macd_ml.errors import ConfigError
from macd_ml.flows.cli.common import (
    EXIT_OK,
    add_config_args,
    add_market_args,
    command,
    config_from,
    renamed,
    symbols,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "features",
        "build the feature table only (no Prefect)",
        "Validate the data and write the feature table (parquet) to the file --to names, and beside it the same "
        "name with a .json suffix (feature names and fingerprint).",
        features,
        group="data",
    )
    add_market_args(p, "folder with SYMBOL_1h.csv|parquet files", target_default="ETHUSDT")
    renamed(p, "--to", "--out", metavar="FILE", required=True, help="parquet file to write")
    add_config_args(p)

    p = command(
        sub,
        "synth",
        "write a deterministic synthetic market",
        "Write SYMBOL_1h.csv files (into the folder --to names) with volatility clustering, fat tails, a common "
        "factor and a planted signal.",
        synth,
        group="data",
    )
    renamed(p, "--to", "--out", metavar="DIR", required=True, help="folder to write the candle files into")
    p.add_argument(
        "--symbols",
        type=symbols,
        default=["ETHUSDT", "BTCUSDT", "SOLUSDT"],
        metavar="A,B,C",
        help="symbols to generate (default ETHUSDT,BTCUSDT,SOLUSDT)",
    )
    p.add_argument("--hours", type=int, default=20_000, help="bars per symbol (default 20000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--signal", type=float, default=1.0, help="planted-signal strength; 0 = driftless random walk")
    p.add_argument("--gaps", type=int, default=2, help="outage gaps punched into every symbol")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format (default csv)")


def synth(args: argparse.Namespace) -> int:
    from macd_ml.features.synth import synth_market, write_market

    try:
        market = synth_market(args.symbols, args.hours, args.seed, args.signal, gaps=args.gaps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for p in write_market(market, args.to, args.format):
        print(p)
    return EXIT_OK


def features(args: argparse.Namespace) -> int:
    from macd_ml.artifacts.store import write_json, write_parquet
    from macd_ml.features.build import build_features
    from macd_ml.features.ingest import default_cross, load_market

    config = config_from(args, data_dir=args.data, target=args.target, cross=args.cross)
    asked = config.cross_symbols()
    market = load_market(
        args.data, config.target, asked if asked is not None else default_cross(args.data, config.target)
    )
    table = build_features(market, config.features, config.gap_tolerance_hours)
    out = Path(args.to)
    ref = write_parquet(out, table.frame)
    write_json(
        out.with_suffix(".json"),
        {
            "names": table.names,
            "fingerprint": table.fingerprint,
            "n_rows": table.frame.height,
            "target": table.target,
            "cross": list(table.cross),
            "sha256": ref.sha256,
            "rows_dropped": table.rows_dropped,
            "gaps": market.gap_reports(),
        },
    )
    print(f"{out}: {table.frame.height} rows x {len(table.names)} features, fingerprint {table.fingerprint[:12]}")
    return EXIT_OK

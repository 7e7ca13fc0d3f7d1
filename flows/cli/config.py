"""``config show``, ``config schema``, ``config example``: the pipeline config a retrain would run, its JSON Schema,
and an example file with every default (the repository's config.example.toml)."""

from __future__ import annotations

import argparse
import json

from macd_ml.flows.cli.common import EXIT_OK, Parser, command
from macd_ml.flows.cli.run import add_retrain_args, retrain_config


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "config",
        "print the effective config (show), its JSON Schema (schema) or an example config file (example)",
        "The pipeline config (flows/config.py): what a retrain with given flags would run, its JSON Schema, or a "
        "TOML file with every key at its default and what it means.",
        None,
        group="ops",
    )
    whats = p.add_subparsers(
        dest="config_command", required=True, metavar="WHAT", parser_class=Parser, help="what to print"
    )

    show_p = whats.add_parser(
        "show",
        help="the effective, validated config as JSON",
        description="Print, as JSON, the validated config a `macd-ml retrain` with the same flags would run: "
        "--config FILE, then the flags (--data, --out, --target, --cross, --force, --force-promote), then every "
        "--set, validated once. Nothing is read but the config file; nothing is written.",
    )
    show_p.set_defaults(func=show)
    add_retrain_args(show_p)

    schema_p = whats.add_parser(
        "schema",
        help="the config's JSON Schema",
        description="Print the JSON Schema of the pipeline config (pydantic's, of RetrainConfig): every key, its "
        "type, default and description; editors validate config files with it.",
    )
    schema_p.set_defaults(func=schema)

    example_p = whats.add_parser(
        "example",
        help="a TOML config with every key at its default, one comment per key",
        description="Print a TOML config file with every section and key at its default and each key's "
        "description as a comment (the repository's config.example.toml is this output). Load one with "
        "--config FILE.",
    )
    example_p.set_defaults(func=example)


def show(args: argparse.Namespace) -> int:
    print(json.dumps(retrain_config(args).model_dump(mode="json"), indent=2))
    return EXIT_OK


def schema(args: argparse.Namespace) -> int:
    from macd_ml.flows.config import RetrainConfig

    print(json.dumps(RetrainConfig.model_json_schema(), indent=2))
    return EXIT_OK


def example(args: argparse.Namespace) -> int:
    from macd_ml.flows.cli.example import example_toml

    print(example_toml(), end="")
    return EXIT_OK

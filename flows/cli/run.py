"""``retrain`` and ``resume``: run the flow, end in one line with the right exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from macd_ml.artifacts import catalog
from macd_ml.errors import ConfigError, DataError, Refused, one_line
from macd_ml.flows.cli.common import (
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_OK,
    add_config_args,
    add_market_args,
    add_out_arg,
    command,
    config_from,
)


def add_retrain_args(p: argparse.ArgumentParser) -> None:
    """What a retrain's config is made of (also ``config show``'s flags)."""
    add_market_args(p, "folder with SYMBOL_1h.csv|parquet files (default: the synthetic market)")
    add_out_arg(p)
    p.add_argument("--force", action="store_true", help="recompute every stage, ignoring the cache")
    p.add_argument(
        "--force-promote",
        action="store_true",
        help="promote even if the current champion scores better (a human override, logged); the health gate "
        "still applies",
    )
    add_config_args(p)


def retrain_config(args: argparse.Namespace):
    """The config a retrain with these arguments runs: --config FILE < flags < --set (common.config_from)."""
    config = config_from(
        args, data_dir=args.data, out_dir=args.out, target=args.target, cross=args.cross, force=args.force or None
    )
    if args.force_promote:
        config = config.model_copy(update={"promotion": config.promotion.model_copy(update={"force": True})})
    return config


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "retrain",
        "run the retrain flow (Prefect) and publish a run folder",
        "Run the whole retrain flow on a data folder (or the built-in synthetic market), publish "
        "OUT/runs/RUN_ID and point OUT/current at it (OUT: --out). `macd-ml config show` with the same flags "
        "prints the config it would run.",
        retrain,
        group="train",
    )
    add_retrain_args(p)

    p = command(
        sub,
        "resume",
        "finish a failed run: only what failed (and what depends on it) runs again",
        "Re-run a failed run under its own id. Every task that finished comes back Cached.",
        resume,
        group="train",
    )
    p.add_argument(
        "run_id",
        metavar="RUN_ID|REPORT_DIR",
        help="the run id a failed run printed (YYYYMMDDTHHMMSSZ-xxxxxxxx), or the report folder a failed walkforward "
        "or fleet printed (only its failed children run again)",
    )
    add_out_arg(p, "the output folder OUT of that run (default: out)")


def retrain(args: argparse.Namespace) -> int:
    from macd_ml.artifacts.store import new_run_id

    config = retrain_config(args)
    if config.targets:  # a watchlist: the fleet flow (flows/cli/many.py)
        from macd_ml.flows.cli.many import run_parent
        from macd_ml.flows.fleet import fleet

        return run_parent(lambda: fleet(config), Path(config.out_dir))
    return run(config, new_run_id())


def resume(args: argparse.Namespace) -> int:
    from macd_ml.artifacts.store import IntegrityError, run_dir, validate_run_id, verify_run
    from macd_ml.flows.config import validate_config
    from macd_ml.tasks.publish import read_run_record, run_record_path

    if Path(args.run_id).is_dir():  # a walk-forward's or fleet's report folder (flows/cli/many.py)
        from macd_ml.flows.cli.many import resume_parent

        return resume_parent(Path(args.run_id))
    run_id = validate_run_id(args.run_id)
    out = args.out or "out"
    folder = run_dir(out, run_id)
    if folder.exists():
        try:
            manifest = verify_run(folder)
        except IntegrityError as exc:
            print(f"macd-ml: {one_line(exc)}; rebuilding run {run_id}", file=sys.stderr)
        else:
            missing = unfinished(folder, manifest)
            if missing is None:
                print(f"run {run_id} is already complete: {folder}")
                return EXIT_OK
            print(f"macd-ml: run {run_id} is published but {missing}; finishing it", file=sys.stderr)
    record = run_record_path(out, run_id)
    if not record.is_file():
        raise ConfigError(
            f"{record}: no record of run {run_id} under {out} (is --out right? A run whose record "
            "could not be written is finished by running the same retrain command again)"
        )
    try:
        config = validate_config(read_run_record(out, run_id))
    except IntegrityError as exc:
        raise ConfigError(str(exc)) from None
    return run(config, run_id)


def unfinished(folder: Path, manifest: dict) -> str | None:
    """What a published run still lacks, or None when it is finished. The flow publishes the run folder, then writes
    its bundle, then moves ``current`` (flows/pipeline.py, ship): a run whose decision was to promote but whose
    bundle is missing failed after publishing, and resuming it writes the bundle and promotes it."""
    from macd_ml.artifacts.store import read_json, run_artifacts
    from macd_ml.serving.bundle import default_bundle_path

    refs = run_artifacts(folder, manifest)
    decision = read_json(refs[catalog.PROMOTION]) if catalog.PROMOTION in refs else {}
    if decision.get("promote") and not default_bundle_path(folder).is_file():
        return f"its bundle {default_bundle_path(folder)} was never written"
    return None


def run(config, run_id: str) -> int:
    """Check everything knowable first (exit 2, nothing written, no server started), then run the flow on the
    API named by PREFECT_API_URL or on a temporary local one that dies with this process."""
    from contextlib import nullcontext

    from macd_ml.artifacts.signing import check_key_outside, signing_key
    from macd_ml.flows.local_api import api_configured, local_api
    from macd_ml.flows.preflight import preflight

    check_key_outside(config.out_dir)
    signing_key()
    if not config.force:  # nothing changed, nothing paid: no server, no task, no training library
        from macd_ml.flows.unchanged import fingerprint, unchanged_run

        same = unchanged_run(config.out_dir, fingerprint(config))
        if same is not None:
            print(f"nothing changed since run {same.name} (same config, code and candles; it is current)")
            return _done(str(same), same.name)
    preflight(config, config.out_dir)

    def import_flow() -> None:  # its imports (Prefect's engine, the tasks) overlap the server's start
        import macd_ml.flows.retrain  # noqa: F401

    with nullcontext() if api_configured() else local_api(while_starting=import_flow):
        from macd_ml.flows.retrain import retrain as retrain_flow
        from macd_ml.tasks.publish import run_record_path

        try:
            path = retrain_flow(config, run_id=run_id)
        except (DataError, ConfigError):
            raise
        except Refused as exc:
            print(f"macd-ml: run {run_id} refused: {one_line(exc)}", file=sys.stderr)
            return EXIT_GATE
        except Exception as exc:
            print(f"macd-ml: run {run_id} failed: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            if run_record_path(Path(config.out_dir).resolve(), run_id).is_file():
                advice = f"finish it with: macd-ml resume {run_id} --out {config.out_dir}"
            else:
                advice = "run the same retrain command again"
            print(f"macd-ml: finished stages are cached; after fixing the cause, {advice}", file=sys.stderr)
            return EXIT_ERROR
    return _done(path, run_id)


def _done(path: str, run_id: str) -> int:
    from macd_ml.serving.bundle import default_bundle_path

    manifest = json.loads((Path(path) / catalog.MANIFEST).read_text())
    note = "" if Path(path).name == run_id else f"; same artifacts as run {Path(path).name}, published earlier"
    print(f"run folder: {path} ({len(manifest['artifacts'])} artifacts{note})")
    bundle = default_bundle_path(path)
    if bundle.is_file():
        print(f"bundle: {bundle} (macd-ml publish {bundle} --to DEST)")
    return EXIT_OK

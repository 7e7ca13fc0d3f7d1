"""``bundle``, ``keys``, ``publish``, ``rollback``, ``fetch``, ``predict``, ``shadow``, ``shadow-report``: from a
run to the bot."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from macd_ml.artifacts import catalog
from macd_ml.flows.cli.common import (
    EXIT_GATE,
    EXIT_OK,
    add_config_args,
    command,
    config_from,
    positive_int,
    renamed,
)


def add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-keys",
        metavar="FILE",
        help="public key file(s) bundles must be signed with (default: MACD_ML_TRUSTED_KEYS, else this machine's own)",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="load a bundle whose signature is missing or unknown (local experiments only; warns on every load)",
    )


def trust_from(args: argparse.Namespace):
    from macd_ml.serving.trust import Trust

    return Trust.resolve(args.trusted_keys, True if args.allow_unsigned else None)


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "bundle",
        "pack a verified run into a reproducible tar.gz for the bot",
        "Write a .tar.gz with ensemble.onnx, every model's ONNX and native files, meta.json, the feature "
        "spec, manifest, metrics, health and report to the file --to names; the same run gives the same bytes. "
        "Prints its sha256.",
        bundle,
        group="ship",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a published run folder (OUT/runs/RUN_ID or OUT/current)")
    renamed(p, "--to", "--out", metavar="FILE", required=True, help="the .tar.gz to write")

    p = command(
        sub,
        "keys",
        "show the publishing key pair (the public key file is what bots hold)",
        "Print where the Ed25519 publishing key is (MACD_ML_PUBLISH_KEY_FILE), its public key file and key id. "
        "The key is made by the first bundle, or here with --create. See README 'Trust'.",
        keys,
        group="ship",
    )
    p.add_argument("--create", action="store_true", help="create the key pair if there is none yet")

    p = command(
        sub,
        "publish",
        "put a signed bundle where bots fetch it and point LATEST at it (signed, versioned, expiring)",
        "Copy a bundle signed by a trusted key to DEST (a folder or an fsspec URL) under bundles/, then sign new "
        "TUF metadata whose LATEST names it (timestamp.json written last); keeps the newest --keep bundles. "
        "--refresh signs the same pointer again with a new expiry.",
        publish,
        group="ship",
    )
    p.add_argument("bundle_file", metavar="BUNDLE", nargs="?", help="a bundle .tar.gz (not with --refresh)")
    p.add_argument("--fleet", metavar="OUT", help="publish every fleet target's current bundle (OUT/fleet/T) to DEST/T")
    p.add_argument("--to", metavar="DEST", required=True, help="folder or fsspec URL (s3://bucket/path, ...)")
    p.add_argument("--keep", type=int, default=5, help="bundles to keep (default 5)")
    p.add_argument("--expires-days", type=float, default=7.0, help="bots refuse the metadata after this (default 7)")
    p.add_argument("--refresh", action="store_true", help="re-sign the current pointer with a new expiry")
    add_trust_args(p)

    p = command(
        sub,
        "rollback",
        "point LATEST back at the previous bundle (a new signed version)",
        "Sign new metadata whose LATEST names the previous bundle of the history, after checking that bundle "
        "(present, the sha256 the signed metadata holds, a valid signature).",
        rollback,
        group="ship",
    )
    p.add_argument("--to", metavar="DEST", required=True, help="folder or fsspec URL the bundles were published to")
    p.add_argument("--expires-days", type=float, default=7.0, help="bots refuse the metadata after this (default 7)")
    add_trust_args(p)

    p = command(
        sub,
        "fetch",
        "what a bot runs: the bundle LATEST names, verified with the public key alone",
        "TUF's client workflow against DEST (refuses rollback, freeze and mix-and-match, says which in one line), "
        "then the bundle LATEST names, checked against the signed metadata and its own signature; written to "
        "the file --to names, atomically.",
        fetch,
        group="bot",
    )
    p.add_argument("--from", dest="source", metavar="DEST", required=True, help="where the bundles are published")
    p.add_argument("--target", metavar="SYMBOL", help="with a fleet destination: the target whose bundle to fetch")
    renamed(p, "--to", "--out", metavar="FILE", required=True, help="the .tar.gz to write")
    p.add_argument("--state", metavar="DIR", help="the metadata this bot has seen (default ~/.cache/macd-ml/bot/...)")
    add_trust_args(p)

    p = command(
        sub,
        "predict",
        "score the newest bars of a candle folder with a bundle (JSON lines)",
        "Print one JSON line per bar: time, probability per horizon, the path taken (stacked / mean / "
        "single / none), the models that scored and each one's output.",
        predict,
        group="bot",
    )
    add_bundle_source(p, watchlist=True)
    add_trust_args(p)
    p.add_argument("--data", metavar="DIR", required=True, help="candle folder (the bundle's target and cross)")
    p.add_argument(
        "--last", type=positive_int, default=1, help="how many of the newest closed bars to score (default 1)"
    )
    p.add_argument(
        "--no-stacking",
        action="store_true",
        help="never take the stacked path (the old ML_ENABLE_STACKING=0; also MACD_ML_STACKING=0)",
    )
    add_guard_args(p)

    p = command(
        sub,
        "shadow",
        "score bars as the bot would and append one JSON line per bar",
        "Replay the bars a candle folder has (or, with --follow, watch it for new rows) and log each bar's "
        "scores, path, base outputs, latency and any error; the format is in the README.",
        shadow,
        group="bot",
    )
    add_bundle_source(p)
    p.add_argument("--data", metavar="DIR", required=True, help="candle folder")
    p.add_argument("--log", metavar="FILE", required=True, help="JSON-lines log to append to")
    p.add_argument("--follow", action="store_true", help="watch the folder and score new bars as they appear")
    p.add_argument("--last", type=positive_int, help="replay only the newest N bars")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between looks at the folder (--follow)")
    p.add_argument("--max-bars", type=int, help="stop after logging this many bars (--follow)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds (--follow)")
    p.add_argument("--no-stacking", action="store_true", help="never take the stacked path")
    add_guard_args(p, replay=True)
    add_trust_args(p)

    p = command(
        sub,
        "shadow-report",
        "check shadow logs against the production targets (exit 0 or 3)",
        "ML coverage, stacking activation, LSTM normal-output rate, errors by kind and latency from shadow "
        "logs, with realised AUC (--data) and drift against the run's holdout (--bundle).",
        shadow_report,
        group="bot",
    )
    p.add_argument("--logs", metavar="FILE|DIR", required=True, help="a shadow log, or a folder of *.jsonl logs")
    p.add_argument("--days", type=float, help="only the newest N days")
    p.add_argument("--min-bars", type=int, help="fewer bars than this fails (config shadow.min_bars, default 1)")
    p.add_argument("--data", metavar="DIR", help="candle folder, for the realised AUC of bars whose outcome is known")
    p.add_argument("--bundle", metavar="FILE", help="the bundle logged, for drift against its holdout")
    p.add_argument(
        "--from", dest="source", metavar="DEST", help="or: the bundle LATEST names at DEST (fetched, verified)"
    )
    p.add_argument("--state", metavar="DIR", help="with --from: the metadata this bot has seen")
    add_trust_args(p)
    p.add_argument("--target", metavar="SYMBOL", help="symbol the logs score (default: the bundle's, else ETHUSDT)")
    p.add_argument("--min-coverage", type=float, help="ML coverage target (config shadow.coverage, default 0.80)")
    p.add_argument(
        "--min-stacking", type=float, help="stacking activation target (config shadow.stacking, default 0.90)"
    )
    p.add_argument(
        "--min-lstm-normal", type=float, help="LSTM normal-output target (config shadow.lstm_normal, default 0.95)"
    )
    p.add_argument("--max-errors", type=int, help="most bars with an ML error (config shadow.max_errors, default 0)")
    p.add_argument(
        "--max-expired", type=int, help="most bars from an expired model (config shadow.max_expired, default 0)"
    )
    p.add_argument(
        "--max-unfamiliar",
        type=float,
        help="most share of bars unlike the training data (config shadow.max_unfamiliar, default 0.25)",
    )
    add_config_args(p)
    p.add_argument("--plot", metavar="PNG", help="write the rates over time to this PNG")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def bundle(args: argparse.Namespace) -> int:
    from macd_ml.serving.bundle import save_bundle

    ref = save_bundle(Path(args.run).resolve(), args.to)
    print(f"{args.to}: {ref.bytes} bytes, sha256 {ref.sha256}")
    return EXIT_OK


def _bundle_bytes(path: str) -> bytes:
    from macd_ml.errors import BundleError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None


def keys(args: argparse.Namespace) -> int:
    from macd_ml.serving.trust import TrustError, private_key_path, public_key_path, publish_signer

    try:
        signer = publish_signer(create=args.create)
    except TrustError as exc:
        if args.create or os.path.lexists(private_key_path()):
            raise
        print(f"no publishing key yet at {private_key_path()} ({exc}); the first bundle makes one, or --create")
        return EXIT_OK
    print(f"private key  {private_key_path()}  (keep it on the training side, mode 0600, outside OUT)")
    print(f"public key   {public_key_path()}  (copy this file to each bot: MACD_ML_TRUSTED_KEYS)")
    print(f"key id       {signer.public_key.keyid}")
    return EXIT_OK


def publish(args: argparse.Namespace) -> int:
    from macd_ml.errors import ConfigError
    from macd_ml.serving.publish import publish as do_publish
    from macd_ml.serving.publish import refresh

    if args.fleet:
        from macd_ml.serving.fleet import publish_fleet

        if args.refresh or args.bundle_file:
            raise ConfigError("publish --fleet OUT publishes the fleet's bundles: no BUNDLE, no --refresh")
        for target, pointer in publish_fleet(
            args.fleet, args.to, keep=args.keep, expires_days=args.expires_days, trust=trust_from(args)
        ).items():
            print(f"{args.to}/{target}: LATEST -> {pointer['bundle']} (run {pointer['run_id']})")
        return EXIT_OK
    if args.refresh == (args.bundle_file is not None):
        raise ConfigError("publish: give a BUNDLE file, or --refresh (not both)")
    if args.refresh:
        pointer = refresh(args.to, expires_days=args.expires_days)
        print(f"{args.to}: LATEST -> {pointer['bundle']} signed again for {args.expires_days:g} days")
        return EXIT_OK
    pointer = do_publish(
        _bundle_bytes(args.bundle_file), args.to, keep=args.keep, expires_days=args.expires_days, trust=trust_from(args)
    )
    print(f"{args.to}: LATEST -> {pointer['bundle']} (run {pointer['run_id']}, sha256 {pointer['sha256'][:12]})")
    return EXIT_OK


def fetch(args: argparse.Namespace) -> int:
    from macd_ml.artifacts.store import write_bytes
    from macd_ml.serving.bundle import read_bundle
    from macd_ml.serving.fleet import resolve
    from macd_ml.serving.publish import fetch_latest

    ((_, dest),) = _one(resolve(args.source, args.target), args.source)
    data = fetch_latest(dest, args.state, trust_from(args))
    ref = write_bytes(args.to, data)
    print(f"{args.to}: run {read_bundle(data, args.to, trust=trust_from(args)).run_id}, sha256 {ref.sha256[:12]}")
    return EXIT_OK


def rollback(args: argparse.Namespace) -> int:
    from macd_ml.serving.publish import rollback as do_rollback

    pointer = do_rollback(args.to, expires_days=args.expires_days, trust=trust_from(args))
    print(
        f"{args.to}: LATEST -> {pointer['bundle']} (run {pointer['run_id']}); rolled back from "
        f"{pointer['rolled_back_from']['bundle']}"
    )
    return EXIT_OK


def _utc_time(text: str):
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time (e.g. 2024-05-01T13:00:00Z)") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def add_guard_args(p: argparse.ArgumentParser, replay: bool = False) -> None:
    """``--now`` and the serving policy (serving/guards.py); the policy's defaults are the bundle's run config."""
    what = "the bars closed by then are replayed" if replay else "only bars closed by then are scored"
    p.add_argument(
        "--now", type=_utc_time, metavar="TIME", help=f"the time it is (ISO, UTC; default the clock): {what}"
    )
    p.add_argument(
        "--max-model-age",
        type=float,
        metavar="HOURS",
        help="a bar more than this after the end of the model's data is expired (default: the bundle's "
        "serving.max_model_age_hours; 0 = never)",
    )
    p.add_argument(
        "--on-expired",
        choices=["fallback", "flag"],
        help="an expired bar: no probability (fallback) or only the flag (default: the bundle's serving.on_expired)",
    )
    p.add_argument(
        "--on-unfamiliar",
        choices=["flag", "fallback", "off"],
        help="a bar unlike the training data: flag it, withhold its probability, or do not measure (default: the "
        "bundle's serving.on_unfamiliar)",
    )


def serving_from(args: argparse.Namespace) -> dict:
    """The serving-policy overrides the flags give (the rest stays the bundle's)."""
    given = {
        "max_model_age_hours": args.max_model_age,
        "on_expired": args.on_expired,
        "on_unfamiliar": args.on_unfamiliar,
    }
    return {k: v for k, v in given.items() if v is not None}


def add_bundle_source(p: argparse.ArgumentParser, watchlist: bool = False) -> None:
    """``--bundle FILE``, or ``--from DEST`` (the bundle LATEST names there, fetched and verified as ``fetch``
    does; a fleet destination with ``--target``)."""
    p.add_argument("--bundle", metavar="FILE", help="a bundle .tar.gz")
    p.add_argument(
        "--from", dest="source", metavar="DEST", help="or: the bundle LATEST names at DEST (fetched, verified)"
    )
    every = "; without it, every target of the fleet (one JSON line per bar per target)" if watchlist else ""
    p.add_argument("--target", metavar="SYMBOL", help=f"with a fleet destination: its target{every}")
    p.add_argument("--state", metavar="DIR", help="with --from: the metadata this bot has seen")


def _one(pairs: list, dest: str) -> list:
    from macd_ml.errors import ConfigError

    if len(pairs) != 1:
        raise ConfigError(f"{dest} is a fleet of {len(pairs)} targets: name one with --target")
    return pairs


def _bundles(args: argparse.Namespace, many: bool = False) -> list:
    """(target, Bundle) pairs from --bundle FILE or --from DEST [--target T], each verified against the trusted
    keys."""
    from macd_ml.errors import ConfigError
    from macd_ml.serving.bundle import open_bundle, read_bundle
    from macd_ml.serving.fleet import fleet_targets, resolve
    from macd_ml.serving.publish import fetch_latest

    if bool(args.bundle) == bool(args.source):
        raise ConfigError("give --bundle FILE or --from DEST (one of them)")
    trust = trust_from(args)
    if args.bundle:
        return [(None, open_bundle(args.bundle, trust))]
    # shadow-report's --target also names the logs' symbol: it selects a fleet's target only where there is a fleet
    pairs = resolve(args.source, args.target if fleet_targets(args.source) is not None else None)
    if not many:
        _one(pairs, args.source)
    state = Path(args.state) if args.state else None
    return [
        (t, read_bundle(fetch_latest(dest, state / (t or "") if state else None, trust), dest, trust=trust))
        for t, dest in pairs
    ]


def _scorer(args: argparse.Namespace):
    from macd_ml.serving import Scorer

    ((_, bundle),) = _bundles(args)
    return _load_scorer(Scorer, bundle, args)


def _load_scorer(cls, bundle, args: argparse.Namespace):
    from pydantic import ValidationError

    from macd_ml.errors import ConfigError

    try:
        return cls(bundle, stacking=False if args.no_stacking else None, serving=serving_from(args))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"serving.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def predict(args: argparse.Namespace) -> int:
    from macd_ml.serving import Scorer

    for target, bundle in _bundles(args, many=True):
        scorer = _load_scorer(Scorer, bundle, args)
        bars = scorer.score(args.data, last=args.last, now=args.now)
        for t in scorer.last_dropped:
            print(f"predict: the bar of {t.isoformat()} is still open; not scored", file=sys.stderr)
        for bar in bars:
            line = bar.to_json()
            print(json.dumps({"target": target, **line} if target else line))
    return EXIT_OK


def shadow(args: argparse.Namespace) -> int:
    from macd_ml.serving.shadow import follow, replay

    scorer = _scorer(args)
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.follow and args.now is not None:
        from macd_ml.errors import ConfigError

        raise ConfigError("shadow: --now replays the bars closed by a time; --follow watches the clock (not both)")
    if args.follow:
        n = follow(scorer, args.data, log, poll_s=args.poll, max_bars=args.max_bars, timeout_s=args.timeout)
    else:
        n = replay(scorer, args.data, log, last=args.last, now=args.now)
    print(f"{n} bars logged to {log}", file=sys.stderr)
    return EXIT_OK


def shadow_report(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from macd_ml.errors import ConfigError
    from macd_ml.serving.shadow import Targets, plot_rates, report

    holdout, target = None, args.target
    if args.bundle or args.source:
        ((_, b),) = _bundles(args)
        holdout = b.frame(catalog.SHIPPED_HOLDOUT)
        target = target or b.json(catalog.FEATURES_META)["target"]
    flags = {
        "coverage": args.min_coverage,
        "stacking": args.min_stacking,
        "lstm_normal": args.min_lstm_normal,
        "max_errors": args.max_errors,
        "max_expired": args.max_expired,
        "max_unfamiliar": args.max_unfamiliar,
        "min_bars": args.min_bars,
    }
    base = config_from(args).shadow  # --config / --set shadow.*; the flags above win
    try:
        targets = Targets.model_validate({**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"shadow.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    rep = report(Path(args.logs), targets, days=args.days, data_dir=args.data, holdout=holdout, target_symbol=target)
    if args.plot:
        plot_rates(Path(args.logs), Path(args.plot), targets)
    print(json.dumps(rep.to_json(), default=str, indent=2) if args.json else rep.table())
    return EXIT_OK if rep.passed else EXIT_GATE

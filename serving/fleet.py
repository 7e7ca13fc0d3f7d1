"""A fleet destination (docs/walkforward.md, "The fleet"): one ordinary destination per target at
``DEST/TARGET`` (each with its own signed metadata, LATEST pointer and bundles: serving/publish.py), and
``DEST/fleet.json`` naming the targets. The index is not signed and needs not be: it only says which
sub-destinations exist; a bot still verifies each bundle it uses against its trusted keys, so a forged index can
hide a target or name one that does not verify, never make a bot score with an untrusted bundle."""

from __future__ import annotations

import json
from pathlib import Path

from macd_ml.errors import BundleError, ConfigError

INDEX = "fleet.json"


def target_dest(dest: str, target: str) -> str:
    """The destination of one target of a fleet destination."""
    return f"{dest.rstrip('/')}/{target.upper()}"


def fleet_targets(dest: str) -> list[str] | None:
    """The targets ``DEST/fleet.json`` names; None when ``dest`` is no fleet destination."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(dest)
    path = f"{root.rstrip('/')}/{INDEX}"
    if not fs.exists(path):
        return None
    try:
        doc = json.loads(fs.cat_file(path))
        targets = [str(t).upper() for t in doc["targets"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{dest}/{INDEX}: not a fleet index ({exc})") from None
    return targets


def resolve(dest: str, target: str | None) -> list[tuple[str | None, str]]:
    """(target, destination) pairs a bot reads: ``dest`` itself when it is a plain destination; for a fleet
    destination the one ``target`` (which it must list) or, with none, every target it lists."""
    targets = fleet_targets(dest)
    if targets is None:
        if target:
            raise ConfigError(f"--target {target}: {dest} is a plain destination, not a fleet ({INDEX} is absent)")
        return [(None, dest)]
    if target:
        if target.upper() not in targets:
            raise ConfigError(f"--target {target}: not in the fleet at {dest} ({', '.join(targets)})")
        return [(target.upper(), target_dest(dest, target))]
    return [(t, target_dest(dest, t)) for t in targets]


def publish_fleet(out_dir: Path | str, dest: str, keep: int = 5, expires_days: float = 7.0, trust=None) -> dict:
    """Publish the current bundle of every target of ``OUT/fleet`` to ``DEST/TARGET``, then write the index.
    Returns target -> the pointer published."""
    import fsspec

    from macd_ml.artifacts import catalog
    from macd_ml.artifacts.store import current_run
    from macd_ml.serving.publish import publish

    homes = sorted(p for p in (Path(out_dir) / catalog.FLEET).glob("*") if (p / "current").is_symlink())
    if not homes:
        raise ConfigError(f"{Path(out_dir) / catalog.FLEET}: no fleet target has a current run to publish")
    pointers = {}
    for home in homes:
        run_id = current_run(home)
        bundle = home / "bundles" / f"{run_id}.tar.gz"
        try:
            data = bundle.read_bytes()
        except OSError as exc:
            raise BundleError(f"{bundle}: cannot read the bundle of {home.name} ({exc.strerror or exc})") from None
        pointers[home.name] = publish(
            data, target_dest(dest, home.name), keep=keep, expires_days=expires_days, trust=trust
        )
    fs, root = fsspec.core.url_to_fs(dest)
    known = set(fleet_targets(dest) or [])
    index = json.dumps({"targets": sorted(known | set(pointers))}, indent=1).encode()
    tmp = f"{root.rstrip('/')}/.{INDEX}.tmp"
    fs.pipe_file(tmp, index)
    fs.mv(tmp, f"{root.rstrip('/')}/{INDEX}")  # a rename where the file system has one
    return pointers

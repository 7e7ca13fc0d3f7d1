"""The fleet: every symbol of a watchlist retrained at once, one bundle per target (docs/walkforward.md, "Fleet").

    one child retrain per target (flows/children.py; the cross symbols' candles stored once for all of them)
    ─► each published under OUT/fleet/TARGET (its runs/, current and bundles/; champion / challenger against its
    own champion) ─► the fleet report: OUT/fleet/report/ (fleet.md, children.json, fleet.png) and a UI artifact.

``macd-ml fleet --targets A,B,C``, ``macd-ml retrain --set targets=[...]`` and the ``fleet-nightly`` deployment
(its config's ``targets``: the watchlist) run this flow; the retrain flow refuses ``targets``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import write_bytes
from macd_ml.flows.children import Child, cross_for, finish, remember_parent, run_children, table, write_children
from macd_ml.flows.config import RetrainConfig, config_parameter, given
from macd_ml.flows.locations import resolve as resolve_locations
from macd_ml.tasks.results import SafeJSONSerializer

FLEET = catalog.FLEET


def fleet_home(out: Path | str, target: str) -> Path:
    """Where a fleet's target publishes: its runs/, current and bundles/."""
    return Path(out).resolve() / FLEET / target.upper()


def child_config(config: RetrainConfig, target: str, data_dir: str, out: Path) -> RetrainConfig:
    """The fleet's config for one target: its own home; a cross symbol that is this target is left out."""
    return RetrainConfig.model_validate(
        {
            **config.model_dump(),
            "target": target,
            "targets": [],
            "cross": cross_for(config, target),
            "data_dir": data_dir,
            "out_dir": str(out),
            "run_home": str(fleet_home(out, target)),
        }
    )


# the UI form: the same shape as the retrain's (flows/config.py); the watchlist is under "Advanced settings"
FLEET_CONFIG = config_parameter("Every target's settings (the watchlist: Advanced settings, Fleet watchlist)")


@flow(
    name="fleet",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=1),  # type: ignore[arg-type]  # threads: children in turn
    result_serializer=SafeJSONSerializer(),
    persist_result=False,
)
def fleet(
    config: RetrainConfig = FLEET_CONFIG,
    require_data: bool = Field(False, json_schema_extra={"title": "Require a candle folder"}),
    skip_unchanged: bool = Field(True, json_schema_extra={"title": "Skip targets where nothing changed"}),
) -> str:
    """Retrain every symbol of ``config.targets``, each published under OUT/fleet/SYMBOL; returns the fleet report
    folder. Fails (after writing the report) when a child failed: a Retry runs only the failed children.

    Args:
        config: the retrain every target runs; ``targets`` is the watchlist.
        require_data: fail at once without a candle folder (the nightly sets it).
        skip_unchanged: a child whose current run is exactly what its config, code and candles produce ends at
            once with that run (flows/unchanged.py); off: every child looks up each of its cached stages.
    """
    from macd_ml.errors import ConfigError
    from macd_ml.tasks.candles import write_synthetic_market

    log = get_run_logger()
    config, require_data, skip_unchanged = given(config), given(require_data), given(skip_unchanged)
    config = resolve_locations(config, require_data)
    out = Path(config.out_dir).resolve()
    data_dir = config.data_dir or str(write_synthetic_market(config.synthetic, out))
    if not config.targets:
        raise ConfigError("config key 'targets': a fleet needs its watchlist (e.g. [BTCUSDT, ETHUSDT])")
    children = [Child(name=t, config=child_config(config, t, data_dir, out)) for t in config.targets]
    log.info("fleet: %d targets (%s)", len(children), ", ".join(config.targets))
    params = {"config": config.model_dump(mode="json"), "require_data": require_data, "skip_unchanged": skip_unchanged}
    remember_parent(out / FLEET / "report", "fleet", params)
    rows = run_children(children, config.fan_out, out, config.force, skip_unchanged)
    report = write_report(out, config, rows)
    finish(rows, report)
    return str(report)


def write_report(out: Path, config: RetrainConfig, rows: list) -> Path:
    from macd_ml.models.evaluation.plots import plot_fleet
    from macd_ml.tasks.report import embed_images

    folder = out / FLEET / "report"
    folder.mkdir(parents=True, exist_ok=True)
    write_children(folder, rows)
    h = config.primary_horizon()
    if config.report.plots:
        plot_fleet(folder / "fleet.png", [r.model_dump(mode="json") for r in rows], h)
    md = "\n".join(
        [
            "# Fleet",
            "",
            f"{len(rows)} targets; each publishes under OUT/fleet/TARGET (current, bundles/). Holdout AUC of what "
            "ships per horizon (the reference's in brackets); gate: gated - ungated long/flat Sharpe on the "
            f"holdout at h={h}.",
            "",
            table(rows),
            "",
            *(["![fleet](fleet.png)", ""] if config.report.plots else []),
        ]
    )
    write_bytes(folder / "fleet.md", md.encode())
    images = {"fleet.png": (folder / "fleet.png").read_bytes()} if config.report.plots else {}
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=embed_images(md, images), key="fleet-report", description="fleet")
    except Exception:  # noqa: BLE001 - the files are written; the UI copy is a convenience
        pass
    return folder

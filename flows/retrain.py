"""The nightly retraining flow: what a run needs before its first stage (the run id, the nothing-changed shortcut,
preflight, the resume record), then the pipeline (flows/pipeline.py) with its stages as cached Prefect tasks
(flows/stages_runner.py).

Every stage is a cached task keyed on the content of its inputs, its config slice and the code version, so an
unchanged re-run reloads everything and a changed parameter recomputes only what depends on it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from macd_ml.artifacts.signing import check_key_outside
from macd_ml.artifacts.store import (
    clean_stale_temp,
    new_run_id,
    validate_run_id,
)
from macd_ml.errors import ConfigError
from macd_ml.flows import logs, stop
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.locations import resolve as resolve_locations
from macd_ml.flows.pipeline import run_pipeline
from macd_ml.flows.preflight import preflight
from macd_ml.flows.stages_runner import prefect_stages
from macd_ml.flows.unchanged import fingerprint, remember, unchanged_run
from macd_ml.models.learners.device import parallel_tasks
from macd_ml.tasks.publish import record_run
from macd_ml.tasks.results import SafeJSONSerializer


def _run_id() -> str:
    """Stable across retries of the same flow run (so a resumed run finishes its own folder)."""
    fid = flow_run.get_id()
    when = flow_run.get_scheduled_start_time()
    if fid and when:
        return f"{when:%Y%m%dT%H%M%SZ}-{fid[:8]}"
    return new_run_id()


@flow(
    name="retrain",
    log_prints=False,  # tasks log through their run logger; print() stays print()
    task_runner=ThreadPoolTaskRunner(max_workers=parallel_tasks()),  # type: ignore[arg-type]
    result_serializer=SafeJSONSerializer(),
    persist_result=False,
)
def retrain(
    config: RetrainConfig = RetrainConfig(),  # noqa: B008 (the UI form)
    run_id: str = "",
    require_data: bool = False,
    skip_unchanged: bool = False,
) -> str:
    """Retrain the ensemble on the candles in ``config.data_dir`` (or a generated market), publish the run
    folder ``OUT/runs/RUN_ID`` and promote it to ``OUT/current``. Returns the run folder's path.

    An unchanged re-run publishes nothing new: it returns the earlier run folder with identical content
    (verified first).

    Args:
        config: what to train on and how; every field is described in the form. ``targets`` (a watchlist) is
            the fleet flow's (flows/fleet.py): here it is refused.
        run_id: leave empty for a new run. To finish a failed run, its id (YYYYMMDDTHHMMSSZ-xxxxxxxx): every
            task that finished comes back Cached, and only what failed, and what depends on it, runs again.
        require_data: fail at once when no candle folder is given (config.data_dir or the Prefect Variable
            macd_ml_data_dir) instead of training on the synthetic market; the nightly deployment sets it.
        skip_unchanged: when the current run is exactly what this config, code and candle folder produce (and
            still verifies), end here with that run instead of looking up every cached task (flows/unchanged.py);
            the nightly deployment sets it. Ignored with config.force.
    """
    stop.inside_flow()  # run by the command: SIGTERM ends it at once (flows/stop.py); by a worker: Prefect's way
    logs.install()
    log = get_run_logger()
    if config.targets:
        raise ConfigError(
            f"config key 'targets' ({', '.join(config.targets)}) makes this a fleet: run the fleet flow "
            "(deployment fleet-nightly, `macd-ml fleet`), or leave targets empty for one retrain"
        )
    config = resolve_locations(config, require_data)
    out, home = Path(config.out_dir).resolve(), config.home()
    run_id = validate_run_id(run_id) if run_id else _run_id()
    check_key_outside(out)
    check_key_outside(home)
    fp = fingerprint(config)
    if skip_unchanged and not config.force and (same := unchanged_run(home, fp)) is not None:
        log.info("nothing changed since run %s (same config, code and candles; it is current): %s", same.name, same)
        return str(same)
    preflight(config, out)  # everything knowable from the config and the data's shape, before the first write
    for folder in dict.fromkeys([out, home]):
        for p in clean_stale_temp(folder):
            log.info("removed %s, left by a writer that was killed", p)
    _record(log, out, run_id, config)
    s = prefect_stages(config, out)
    run = run_pipeline(config, out, run_id, s)
    try:
        remember(home, fp, run.run_id)
    except OSError as exc:  # only a shortcut for the next unchanged run: never fail a promoted run over it
        log.warning("could not record run %s for the nothing-changed shortcut (%s)", run.run_id, exc)
    log.info("run folder: %s", run.path)
    return run.path


def _record(log, out: Path, run_id: str, config: RetrainConfig) -> None:
    """Write the run's config so `macd-ml resume RUN_ID` can finish it, then say how to resume; if the record
    cannot be written, say the command that does work for this run instead."""
    try:
        record_run(
            out, run_id, config.model_copy(update={"out_dir": str(out)}).model_dump(mode="json", exclude={"force"})
        )
    except OSError as exc:
        log.warning(
            "could not record run %s for `macd-ml resume` (%s); to finish it after a failure use: "
            "prefect flow-run retry %s",
            run_id,
            exc,
            flow_run.get_id(),
        )
        return
    log.info("run id %s (resume with: macd-ml resume %s --out %s)", run_id, run_id, out)

"""The nightly retraining flow: what a run needs before its first stage (the run id, the nothing-changed shortcut,
preflight, the resume record), then the pipeline (flows/pipeline.py) with its stages as cached Prefect tasks
(flows/stages_runner.py).

Every stage is a cached task keyed on the content of its inputs, its config slice and the code version, so an
unchanged re-run reloads everything and a changed parameter recomputes only what depends on it.

In this order, so that a bad run ends at once and a good one waits only for what it needs:

1. the parameters are validated here (``validate_parameters=False``: Prefect's own check would end a bad config
   with pydantic's multi-line report), the locations resolved, preflight run: bad input ends the flow run with one
   line naming the key (``config key 'horizons': ...``), before it waits for anything;
2. a run of a deployment then takes its output folder's slot (:func:`output_slot`, a Prefect global concurrency
   limit of 1 named after the resolved OUT): two runs never write one OUT at once, and a run waits only behind a
   run writing the same OUT. The deployments carry no ``concurrency_limit`` of their own: that one made a run wait
   before any of this code ran;
3. then, and only then, the first write: stale temp files cleaned, the resume record, the pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from macd_ml.artifacts.signing import check_key_outside
from macd_ml.artifacts.store import (
    clean_stale_temp,
    new_run_id,
    validate_run_id,
)
from macd_ml.errors import ConfigError, DataError, one_line
from macd_ml.flows import logs, stop
from macd_ml.flows.config import RetrainConfig, config_parameter, given, validate_config
from macd_ml.flows.locations import resolve as resolve_locations
from macd_ml.flows.pipeline import run_pipeline
from macd_ml.flows.preflight import preflight
from macd_ml.flows.stages_runner import prefect_stages
from macd_ml.flows.unchanged import fingerprint, remember, unchanged_run
from macd_ml.models.learners.device import parallel_tasks
from macd_ml.tasks.publish import record_run
from macd_ml.tasks.results import SafeJSONSerializer

# how long a run's hold on its output folder outlives the run when its process dies without releasing it (SIGKILL,
# a lost machine): the lease is renewed every 0.75 of this while the run lives; Prefect's server revokes an
# expired lease (its repossessor service looks every 15 s). 60 s is the least the API takes.
SLOT_LEASE_SECONDS = 120
# the UI form: the config opens on its defaults in the form's shape (flows/config.py); each parameter titled
CONFIG_PARAMETER = config_parameter()


def _run_id() -> str:
    """Stable across retries of the same flow run (so a resumed run finishes its own folder)."""
    fid = flow_run.get_id()
    when = flow_run.get_scheduled_start_time()
    if fid and when:
        return f"{when:%Y%m%dT%H%M%SZ}-{fid[:8]}"
    return new_run_id()


def run_name() -> str:
    """The flow run's name: what it trains and which run it is, e.g. ``ETHUSDT 20261207T003000Z-1a2b3c4d`` (the
    run id names the run folder, OUT/runs/RUN_ID). Never fails: a config too bad to read is named by its default
    target, and the run then ends saying what is wrong."""
    params = flow_run.parameters or {}
    config = params.get("config")
    asked = (
        config.target
        if isinstance(config, RetrainConfig)
        else config.get("target")
        if isinstance(config, dict)
        else None
    )
    target = asked if isinstance(asked, str) and asked.strip() else str(RetrainConfig.model_fields["target"].default)
    run_id = params.get("run_id")
    return f"{target.strip().upper()} {run_id if isinstance(run_id, str) and run_id else _run_id()}"


def deployment_run() -> bool:
    """This flow run was started from a deployment (the UI's form, a schedule, ``prefect deployment run``): not
    by the CLI, and not as the child of a fleet or walk-forward (a subflow, whose parent holds the output folder)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


def slot_name(out: Path) -> str:
    """The global concurrency limit of one output folder (its resolved path's hash: a name Prefect accepts)."""
    return "macd-ml-out-" + hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]


@contextmanager
def output_slot(out: Path, log: Any) -> Iterator[str | None]:
    """Hold the output folder ``out`` for the block: the one slot of a Prefect global concurrency limit named by
    :func:`slot_name` (created with limit 1 on first use), waiting while another run holds it. Only for a
    deployment run (:func:`deployment_run`); the CLI's run and a fleet's children run as before (the CLI's
    temporary API is its own, and a parent holds the folder for its children). Yields the limit's name or None.

    The hold is a lease the run renews while it lives; a run that dies without releasing it (killed, its machine
    lost) holds the folder at most ``SLOT_LEASE_SECONDS`` longer. Leases live in the server's lease storage: with
    the default (in memory) a restarted server forgets them and a slot held at the restart stays taken until
    ``prefect gcl update NAME --active-slots 0`` (docs/operations.md, "One run per output folder")."""
    if not deployment_run():
        yield None
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = slot_name(out)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another run created it first
            limit = client.read_global_concurrency_limit_by_name(name)
    if limit.active_slots >= limit.limit:
        log.info("another run is writing %s: waiting for its slot (global concurrency limit %s)", out, name)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run.get_id()))
    with concurrency(
        name, occupy=1, lease_duration=SLOT_LEASE_SECONDS, strict=True, holder=holder,
        raise_on_lease_renewal_failure=False,  # a renewal the API missed: a warning, not a killed run
    ):  # fmt: skip
        log.info("output folder %s is this run's (global concurrency limit %s)", out, name)
        yield name


@flow(
    name="retrain",
    flow_run_name=run_name,
    log_prints=False,  # tasks log through their run logger; print() stays print()
    task_runner=ThreadPoolTaskRunner(max_workers=parallel_tasks()),  # type: ignore[arg-type]
    result_serializer=SafeJSONSerializer(),
    persist_result=False,
    validate_parameters=False,  # validated in the flow: one line naming the key (module docstring)
)
def retrain(
    config: RetrainConfig = CONFIG_PARAMETER,
    run_id: str = Field("", json_schema_extra={"title": "Finish a failed run (its run id)"}),
    require_data: bool = Field(False, json_schema_extra={"title": "Require a candle folder"}),
    skip_unchanged: bool = Field(False, json_schema_extra={"title": "Skip when nothing changed"}),
) -> str:
    """Retrain the ensemble on the candles in ``config.data_dir`` (or a generated market), publish the run
    folder ``OUT/runs/RUN_ID``, pack its bundle and promote it to ``OUT/current``. Returns the run folder's path.
    A bad config or bad input ends a deployment run FAILED with one line naming the key (module docstring).

    An unchanged re-run publishes nothing new: it returns the earlier run folder with identical content
    (verified first).

    Args:
        config: what to train on and how: the fields a run changes on top, everything else under "Advanced
            settings" (each section at its defaults until opened with "Edit"); every field is described.
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
    try:
        return _retrain(log, given(config), given(run_id), given(require_data), given(skip_unchanged))
    except (ConfigError, DataError) as exc:
        if not deployment_run():
            raise  # the CLI prints it (exit 2); a fleet's or walk-forward's table reports it
        # the flow run's final state says it in one line, with no traceback in the log: nothing ran, nothing waited
        log.error("%s", one_line(exc))
        return Failed(message=one_line(exc))  # type: ignore[return-value]  # Prefect ends the flow run in it


def _retrain(log: Any, config: Any, run_id: str, require_data: bool, skip_unchanged: bool) -> str:
    if not isinstance(config, RetrainConfig):  # from the API: the form's values (or a config file's keys)
        config = validate_config(config if config is not None else {})
    if not isinstance(run_id, str) or not isinstance(require_data, bool) or not isinstance(skip_unchanged, bool):
        raise ConfigError(
            f"parameters: run_id must be text, require_data and skip_unchanged true or false (got {run_id!r}, "
            f"{require_data!r}, {skip_unchanged!r})"
        )
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
        _unchanged_outputs(config, same, home)
        return str(same)
    preflight(config, out)  # everything knowable from the config and the data's shape, before the first write
    with output_slot(out, log):  # a deployment run waits here, behind a run writing the same OUT
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


def _unchanged_outputs(config: RetrainConfig, run: Path, home: Path) -> None:
    """The outputs artifact of a run that ended at the nothing-changed check: the current run's outputs."""
    from macd_ml.artifacts import catalog
    from macd_ml.serving.bundle import default_bundle_path
    from macd_ml.tasks.report import RunOutputs, publish_outputs

    bundle = default_bundle_path(run)
    publish_outputs(
        RunOutputs(
            target=config.target,
            run_id=run.name,
            status="nothing changed",
            why="same config, code and candles",
            run_folder=str(run),
            report=str(run / catalog.REPORT),
            bundle=str(bundle) if bundle.is_file() else None,
            home=str(home),
            current=run.name,
        )
    )


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

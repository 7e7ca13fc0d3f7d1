"""Helpers to run the retrain flow in tests and read what Prefect recorded about its task runs."""

from __future__ import annotations

import re

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

# The markets of these tests are tiny (3,000-12,000 h): their holdout AUCs cannot clear the production gates
# (0.52 and 0.5 + 2 SE), and the live check costs a process per run. Runs made here relax both unless a test asks
# for the real gate (``strict=True``, the health-gate tests); every integrity, collapse and parity check still runs.
# A challenger is also kept from losing to an earlier run of another test's config (a margin of 1000 SE). The
# report's PNGs (a second of CPU per run) are drawn only where a test reads them (``plots=True``, strict runs).
# The same relaxation as flags, for a retrain through the CLI: tests/cliutil.py (LENIENT, NO_PLOTS).


# Tasks that run on every run, by design: they act on OUT/current, which is not part of any cache key.
ALWAYS_RUN = {"champion-challenger", "promote"}


def lenient(config, plots: bool = False):
    health = config.health.model_copy(update={"auc_gates": False, "live_check": False})
    promotion = config.promotion.model_copy(update={"margin_se": 1000})
    report = config.report.model_copy(update={"plots": plots})
    return config.model_copy(update={"health": health, "promotion": promotion, "report": report})


def run_flow(config, strict: bool = False, plots: bool = False):
    """Run the retrain flow; return (run folder path, flow run id). Lenient unless ``strict``; no PNGs unless
    ``plots`` (or ``strict``)."""
    from macd_ml.flows.retrain import retrain

    state = retrain(config if strict else lenient(config, plots), return_state=True)
    path = state.result()
    return path, state.state_details.flow_run_id


def forget_unchanged(out) -> None:
    """Drop the nothing-changed records (flows/unchanged.py), so that the same command runs the flow again: for
    tests about what the flow's own cache does on an unchanged run (the CLI would otherwise answer at once)."""
    import shutil
    from pathlib import Path

    shutil.rmtree(Path(out) / "cache" / "unchanged", ignore_errors=True)


def _task_runs(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _name(run) -> str:
    """Task run name without Prefect's random suffix ('features-626' -> 'features'; 'lgb-fold0' stays)."""
    return re.sub(r"-[0-9a-f]{3}$", "", run.name)


def task_states(flow_run_id) -> dict[str, str]:
    """Task run name -> final state name, e.g. {'features': 'Cached', 'xgb-fold0': 'Completed'}."""
    return {_name(r): (r.state.name if r.state else "?") for r in _task_runs(flow_run_id)}


def task_tags(flow_run_id) -> dict[str, set[str]]:
    return {_name(r): set(r.tags) for r in _task_runs(flow_run_id)}


def latest_flow_run_id():
    """The most recently started flow run on the current API."""
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return run.id


def flow_run_of(run_id: str):
    """The flow run of the run ``run_id`` (flow runs are named ``TARGET RUN_ID``): unlike the latest one, not
    confused by a run another test left on the shared API."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run_id)))
        found = [r for r in runs if r.name.endswith(f" {run_id}")]
        if len(found) != 1:
            names = [r.name for r in client.read_flow_runs(limit=10)]
            raise AssertionError(f"{len(found)} flow runs of run {run_id} on {client.api_url}; some: {names}")
    return found[0].id


def flow_run_since(when) -> object:
    """The one flow run created at or after ``when`` (a UTC datetime taken just before the command started it)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=when))
        )
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0].id


def flow_logs(flow_run_id) -> list[str]:
    """Every log message the API holds for a flow run (its tasks' included), oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in sorted(logs, key=lambda e: e.timestamp)]


def spawn_cli(
    args: list[str],
    log,
    home=None,
    shared_api: bool = False,
    strict: bool = False,
    plots: bool = False,
    **env_extra: str,
):
    """``macd-ml ARGS`` in its own process and session, like a user's shell (tests/cliutil.py ``spawn``), with
    its own Prefect home and its own temporary Prefect server, or (``shared_api``) the session's test server, which
    saves a server start when the test is not about the server. Output goes to the file ``log``, never a pipe: an
    orphaned server child would hold a pipe open and hang a reader."""
    import subprocess
    from pathlib import Path

    from tests.cliutil import spawn

    log = Path(log)
    home = Path(home) if home is not None else log.with_suffix(".prefect-home")
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home), "PREFECT_API_URL": None}
    if shared_api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    with open(log, "w") as fh:
        return spawn(
            *args,
            env={**env, **env_extra},
            cwd=Path(__file__).parents[1],
            stdout=fh,
            stderr=subprocess.STDOUT,
            new_session=True,
            strict=strict,
            plots=plots,
        )

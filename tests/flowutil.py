"""Helpers to run the retrain flow in tests and read what Prefect recorded about its task runs."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def run_flow(config):
    """Run the retrain flow; return (run folder path, flow run id)."""
    from flows.retrain import retrain

    state = retrain(config, return_state=True)
    path = state.result()
    return path, state.state_details.flow_run_id


def task_states(flow_run_id) -> dict[str, str]:
    """Task name (without the run suffix) -> final state name, e.g. {'features': 'Cached'}."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, str] = {}
    for r in runs:
        name = r.name.rsplit("-", 1)[0]
        out[name] = r.state.name if r.state else "?"
    return out

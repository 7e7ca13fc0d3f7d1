"""`macd-ml serve`: one long-running process that registers its own deployment, ``retrain/served``, with the
Prefect API named by ``PREFECT_API_URL`` (start one with ``prefect server start``; it binds to 127.0.0.1) and runs
that deployment's scheduled and UI-triggered runs itself. Simplest for one machine.

The production layout is ``prefect.yaml`` (deployments ``retrain``, ``retrain-nightly`` and the stages) with a
``process`` work pool and ``prefect worker start --pool macd-ml``; the two never share a deployment, so
deploying does not take over the served one and stopping ``serve`` leaves the others alone.
"""

from __future__ import annotations

from typing import Any

from macd_ml.flows.config import RetrainConfig, form_values

DEPLOYMENT_NAME = "served"
DEFAULT_CRON = "30 0 * * *"  # 00:30 UTC, after the day's last hourly candle has closed
TIMEZONE = "UTC"
# the runner checks for runs to start this often (Prefect's default, 10 s, made UI runs start 10-14 s late)
POLL_SECONDS = 2


def deployment_parameters(config: RetrainConfig, require_data: bool = False) -> dict[str, Any]:
    """A scheduled run on real candles must have them (``require_data``) and ends at once when nothing changed
    since the current run (``skip_unchanged``, flows/unchanged.py). The config in the run form's shape
    (flows/config.py, ``form_values``: what differs from the defaults, the rest of the form at its defaults), so
    the form opens on it; unset optional fields are left out (a ``null`` fails the API's schema check: 422)."""
    return {"config": form_values(config), "require_data": require_data, "skip_unchanged": require_data}


def build(config: RetrainConfig, cron: str = DEFAULT_CRON, timezone: str = TIMEZONE):
    """The RunnerDeployment object (schedule, form defaults). One run at a time per output folder: the flow
    holds its OUT's global concurrency limit (flows/retrain.py, ``output_slot``), after checking its input, so a
    bad run fails at once instead of waiting behind a good one."""
    from prefect.schedules import Cron

    from macd_ml.flows.retrain import retrain

    return retrain.to_deployment(
        name=DEPLOYMENT_NAME,
        # without a candle folder only UI runs (on the synthetic market): a schedule never trains on it
        schedules=[Cron(cron, timezone=timezone)] if config.data_dir else [],
        parameters=deployment_parameters(config, require_data=bool(config.data_dir)),
        description="Retrain of the MACD gate ensemble served by `macd-ml serve` (schedule + UI runs).",
        tags=["macd-ml", "served"],
    )


def serve(config: RetrainConfig, cron: str = DEFAULT_CRON, timezone: str = TIMEZONE) -> None:
    """Register the deployment and run it from this process until interrupted; stopping it leaves the
    deployment's schedule active (runs wait for the next `serve`)."""
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_RUNNER_POLL_FREQUENCY: POLL_SECONDS}):
        prefect_serve(build(config, cron, timezone), pause_on_shutdown=False)

"""The nightly deployment of the retrain flow.

Two ways to run it on a schedule:

- ``macd-ml serve`` (this module's :func:`serve`): one long-running process that registers the deployment with
  the Prefect API named by ``PREFECT_API_URL`` (start one with ``prefect server start``; it binds to
  127.0.0.1) and runs scheduled and UI-triggered runs itself. Simplest for one machine.
- ``prefect --no-prompt deploy --all`` with ``prefect.yaml`` + a ``process`` work pool and ``prefect worker
  start --pool macd-ml``: the production layout (see README).
"""

from __future__ import annotations

from typing import Any

from macd_ml.flows.config import RetrainConfig

DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "30 0 * * *"  # 00:30 UTC, after the day's last hourly candle has closed
TIMEZONE = "UTC"


def deployment_parameters(config: RetrainConfig) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json")}


def build(config: RetrainConfig, cron: str = DEFAULT_CRON):
    """The RunnerDeployment object (schedule, form defaults, one run at a time)."""
    from prefect.schedules import Cron

    from macd_ml.flows.retrain import retrain

    return retrain.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=TIMEZONE)],
        parameters=deployment_parameters(config),
        concurrency_limit=1,
        description="Nightly retrain of the MACD gate ensemble on fresh candles.",
        tags=["macd-ml", "nightly"],
    )


def serve(config: RetrainConfig, cron: str = DEFAULT_CRON) -> None:
    """Register the deployment and run it from this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(build(config, cron))

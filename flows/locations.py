"""Where a deployment run reads candles and writes its outputs.

A run started by the CLI uses exactly what its config says. A run of a deployment (the UI form, the nightly
schedule) runs on a worker whose code may live anywhere (a checkout, ``/app`` in the image), so:

- its working directory is the worker's home: ``MACD_ML_HOME``, else the Prefect Variable ``macd_ml_home``, else
  ``~/macd-ml`` (the pull step :func:`macd_ml.deployments.steps.enter_home` moves there before the flow loads);
- an empty ``data_dir`` is the Prefect Variable ``macd_ml_data_dir``; the default ``out_dir`` ("out") gives way to
  the Prefect Variable ``macd_ml_out_dir``;
- a run that must train on real candles (the nightly: ``require_data``) and has no data location fails at once,
  before anything is written, instead of training on the synthetic market.
"""

from __future__ import annotations

from macd_ml.errors import ConfigError
from macd_ml.flows.config import RetrainConfig

DATA_VARIABLE = "macd_ml_data_dir"
OUT_VARIABLE = "macd_ml_out_dir"
DEFAULT_OUT = RetrainConfig.model_fields["out_dir"].default


def _variable(name: str) -> str:
    from prefect.variables import Variable

    value = Variable.get(name, default=None)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"Prefect Variable {name} must be a string (a folder or URL), got {value!r}")
    return value.strip()


def in_deployment() -> bool:
    from prefect.runtime import deployment

    return bool(deployment.id)


def resolve(config: RetrainConfig, require_data: bool = False, deployment: bool | None = None) -> RetrainConfig:
    """The config with its data and output locations settled (see the module docstring)."""
    deployment = in_deployment() if deployment is None else deployment
    update: dict[str, str] = {}
    if deployment:
        if not config.data_dir:
            update["data_dir"] = _variable(DATA_VARIABLE)
        if config.out_dir == DEFAULT_OUT:
            update["out_dir"] = _variable(OUT_VARIABLE) or DEFAULT_OUT
    data_dir = update.get("data_dir", config.data_dir)
    if require_data and not data_dir:
        raise ConfigError(
            "no candle folder for this run: it must train on real candles (require_data), so set the deployment "
            f"parameter config.data_dir or the Prefect Variable {DATA_VARIABLE} "
            f"(prefect variable set {DATA_VARIABLE} /path/to/candles); nothing was trained or written"
        )
    return config.model_copy(update=update) if update else config

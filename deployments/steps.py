"""The pull step of every deployment in prefect.yaml: move into the worker's home before the flow loads.

The flows are imported by module path (``macd_ml.flows.retrain.retrain``) from the installed package, so no
step has to find a checkout: a deployment registered from one checkout runs on a worker whose code lives
anywhere (another checkout, ``/app`` in the image). What a run still needs is a working directory for relative
paths (``out``); Prefect's process worker would otherwise run each flow in a temporary folder it deletes.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MACD_ML_HOME"
HOME_VARIABLE = "macd_ml_home"


def home() -> Path:
    """``MACD_ML_HOME``, else the Prefect Variable ``macd_ml_home``, else ``~/macd-ml``."""
    where = os.environ.get(HOME_ENV, "").strip()
    if not where:
        from prefect.variables import Variable

        value = Variable.get(HOME_VARIABLE, default=None)
        where = value.strip() if isinstance(value, str) else ""
    return Path(where or Path.home() / "macd-ml").expanduser()


def enter_home() -> dict[str, str]:
    """Create the home folder if needed and make it the working directory; returns ``{"directory": path}``."""
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    print(f"macd-ml: working directory {folder}")
    return {"directory": str(folder)}

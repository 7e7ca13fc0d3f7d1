"""Where the training tasks run: the flow's own thread pool (the default) or a Dask cluster (prefect-dask).

``scale.runner = "dask"`` sends every (model, fold) fit and every refit to a ``DaskTaskRunner``: a temporary
``LocalCluster`` of ``dask_workers`` processes started for the training stage and closed after it, or an existing
scheduler at ``dask_address`` (``dask scheduler`` + ``dask worker`` on other machines). Every other stage stays in
the flow's thread pool. The tasks are the same ones with the same options (signed result storage, content cache
key, ``gpu``/``cpu`` tags where a limit for them exists, such as the ``gpu`` concurrency limit, which Prefect
enforces through its API in any process): what they receive and return are small pydantic references that
pickle, and their files go to ``OUT/cache`` (a folder every worker must see at the same path).

Where the tasks run is not content: this section is no parameter of a training task, so it never enters their
cache keys, and a run on Dask reuses the fits of a run on threads and the other way round (tests/test_dask.py).

Threads inside a model: each model sizes its thread pool with :func:`macd_ml.models.learners.device.cpu_threads`
(cores // ``MACD_ML_PARALLEL_TASKS``). The workers of a local cluster get the flow's own value of
``MACD_ML_PARALLEL_TASKS`` and its own ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` (Dask's
nanny would otherwise set these to 1 in every worker), so LightGBM, XGBoost and torch run with exactly the
threads they have in threads mode and produce the same predictions. Workers started by hand read these variables
from their own environment (see docs/operations.md, "Scale-out").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from macd_ml.models.learners.device import parallel_tasks

# Dask's nanny sets these to 1 in each worker process it spawns (distributed.nanny.pre-spawn-environ); None leaves
# the flow's own environment in place, as in threads mode (the models set their thread counts explicitly)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ScaleOut(BaseModel):
    """Where the training tasks (one per model and fold, and the refits) run."""

    model_config = ConfigDict(extra="forbid")

    runner: Literal["threads", "dask"] = Field(
        default="threads",
        title="Runner",
        description="'threads' = the flow's thread pool (MACD_ML_PARALLEL_TASKS tasks at once); 'dask' = a Dask "
        "cluster through prefect-dask (pip install 'macd-ml[dask]')",
    )
    dask_address: str = Field(
        default="",
        title="Dask scheduler address",
        description="with runner 'dask': address of a running Dask scheduler, e.g. 'tcp://10.0.0.5:8786'; "
        "empty = start a local cluster for the training stage",
        json_schema_extra={"pattern": r"^\s*\S*\s*$"},  # no space inside (the validator below)
    )
    dask_workers: int = Field(
        default=2, ge=1, title="Local Dask workers", description="worker processes of the local cluster"
    )
    dask_threads_per_worker: int = Field(
        default=1, ge=1, title="Tasks per Dask worker", description="tasks each local worker process runs at once"
    )

    @field_validator("dask_address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if any(c.isspace() for c in v):
            raise ValueError(f"not a scheduler address: {v!r}")
        return v

    @model_validator(mode="after")
    def _dask_installed(self) -> "ScaleOut":
        if self.runner == "dask" and importlib.util.find_spec("prefect_dask") is None:
            raise ValueError("runner 'dask' needs prefect-dask: pip install 'macd-ml[dask]'")
        return self


def local_cluster_kwargs(spec: ScaleOut) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments: processes (the GIL stays out of the way), a dashboard on a free port,
    and the flow's thread settings for the models (see the module docstring)."""
    return {
        "n_workers": spec.dask_workers,
        "threads_per_worker": spec.dask_threads_per_worker,
        "processes": True,
        "dashboard_address": ":0",
        "env": {"MACD_ML_PARALLEL_TASKS": str(parallel_tasks())},
    }


@contextmanager
def task_runner(spec: ScaleOut) -> Iterator[Any]:
    """For the block's duration: None (submit to the flow's thread pool), or a started ``DaskTaskRunner`` whose
    cluster is up (a local one is closed when the block ends)."""
    if spec.runner == "threads":
        yield None
        return
    import dask
    from prefect_dask import DaskTaskRunner

    if spec.dask_address:
        runner = DaskTaskRunner(address=spec.dask_address)
    else:
        runner = DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(spec))
    with runner:
        # the nanny reads its spawn environment when it is created: create the cluster now, under this setting
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": None for k in _THREAD_VARS}):
            runner.client  # noqa: B018 (starts the local cluster, or connects to the scheduler)
        yield runner


def submit(runner: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
    """``task.submit(*args, **kwargs)`` on the flow's task runner (``runner`` None) or on ``runner``."""
    if runner is None:
        return task.submit(*args, **kwargs)
    from prefect.utilities.callables import get_call_parameters

    return runner.submit(task, parameters=get_call_parameters(task.fn, args, kwargs))

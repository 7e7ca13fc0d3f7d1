"""How the pipeline's stages run (docs/architecture.md, "Stages as plain functions").

Every stage is a plain function in ``tasks/`` (its arguments in, a small reference out; it reads and writes
through the artifact layer and logs with the standard library) that ``tasks/`` wraps as a Prefect task in one
decorator line. :class:`Stages` runs them for :func:`macd_ml.flows.pipeline.run_pipeline`, two ways:

- :func:`prefect_stages`: as the cached, retried Prefect tasks, results persisted signed, the training fits fanned
  out on the flow's task runner (or Dask: flows/scale.py), UI artifacts at the end: the retrain flow;
- :func:`direct_stages`: each function called directly with the cache key (so the folders) Prefect would give it,
  fits on a thread pool, no API, cache or UI: what the stages cost without orchestration (bench/bench_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from macd_ml.flows import scale
from macd_ml.flows.config import RetrainConfig
from macd_ml.models.learners.device import cuda_available, parallel_tasks
from macd_ml.tasks.policy import run_direct
from macd_ml.tasks.report import RunOutputs, publish_outputs, publish_ui_artifacts
from macd_ml.tasks.results import result_storage_block

# tasks whose result is not cached (they act on OUT/current, which is no part of any key) or cached on other terms
UNCACHED = {"champion-challenger", "promote"}
STORAGE_ONLY = {"publish-run"}  # content-addressed publication: --force recomputes stages, never re-publishes


@dataclass(frozen=True)
class Call:
    """One training fit for :meth:`Stages.fan_out`: a task, its arguments, and whether it takes the GPU slot."""

    task: Any
    args: tuple
    kwargs: dict
    gpu: bool = False


@dataclass
class Stages:
    """Runs stage tasks: ``run(task, *args)`` one at a time, ``fan_out(calls)`` in parallel (results in order),
    ``ui_artifacts(...)`` publishes the run's report to the UI and ``outputs(RunOutputs)`` the artifact saying where
    its outputs are (or nothing, both)."""

    run: Callable[..., Any]
    fan_out: Callable[[Sequence[Call]], list]
    ui_artifacts: Callable[..., None] = field(default=lambda *a, **k: None)
    outputs: Callable[[RunOutputs], None] = field(default=lambda o: None)


def cache_options(config: RetrainConfig, out: Path) -> dict:
    """Task results (small JSON references) persist, signed, under ``OUT/cache/results`` or ``result_storage``."""
    location = config.result_storage or str(out / "cache" / "results")
    return {"result_storage": result_storage_block(location), "refresh_cache": config.force or None}


def prefect_stages(config: RetrainConfig, out: Path) -> Stages:
    cached = cache_options(config, out)

    def options(task: Any) -> dict:
        if task.name in UNCACHED:
            return {}
        if task.name in STORAGE_ONLY:
            return {"result_storage": cached["result_storage"]}
        return cached

    def run(task: Any, *args: Any, **kwargs: Any) -> Any:
        return task.with_options(**options(task))(*args, **kwargs)

    def fan_out(calls: Sequence[Call]) -> list:
        tags = concurrency_tags(gpu_tasks=any(c.gpu for c in calls))
        with scale.task_runner(config.scale) as runner:
            futures = [
                scale.submit(
                    runner,
                    c.task.with_options(**options(c.task), tags=tags["gpu"] if c.gpu else tags["cpu"]),
                    *c.args,
                    **c.kwargs,
                )
                for c in calls
            ]
            return [f.result() for f in futures]

    return Stages(run=run, fan_out=fan_out, ui_artifacts=publish_ui_artifacts, outputs=publish_outputs)


def direct_stages(workers: int | None = None) -> Stages:
    pool = ThreadPoolExecutor(workers or parallel_tasks())

    def fan_out(calls: Sequence[Call]) -> list:
        futures = [pool.submit(run_direct, c.task, *c.args, **c.kwargs) for c in calls]
        return [f.result() for f in futures]

    return Stages(run=run_direct, fan_out=fan_out)


def concurrency_tags(gpu_tasks: bool = True) -> dict[str, list[str]]:
    """The tags of the training tasks, by kind: ``gpu`` (LSTM, TFT) and ``cpu`` (the rest), each only when the API
    holds a concurrency limit for it. With a GPU in this process and ``gpu_tasks`` (a sequence model trains), the
    ``gpu`` limit (1) is created first; without ``gpu_tasks`` no GPU is probed (that imports torch: ~1 s).

    Why not always: Prefect asks the API for concurrency slots at the start of every tagged task (it remembers "no
    limit" for 5 s only), and on the SQLite server two such calls at once are refused as busy (503) and retried
    after about 2 s: 25 s of worker time in a cold run measured on 2 cores, a task start in three. A tag without
    a limit orders nothing, so a CPU run without limits carries none. Create the limit before the run to have
    it enforced (``prefect concurrency-limit create gpu 1``, docs/operations.md, "Scale-out"); an API that cannot
    answer keeps the tags (Prefect then enforces whatever exists)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound

    tags: dict[str, list[str]] = {"gpu": [], "cpu": []}
    if FlowRunContext.get() is None:  # no flow run: no API to ask
        return tags
    with get_client(sync_client=True) as client:
        if gpu_tasks and cuda_available():
            try:
                client.read_concurrency_limit_by_tag("gpu")
            except ObjectNotFound:
                client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
        for tag in tags:
            try:
                client.read_concurrency_limit_by_tag(tag)
                tags[tag] = [tag]
            except ObjectNotFound:
                pass
            except Exception:  # noqa: BLE001 - cannot tell: keep the tag, as before this check existed
                tags[tag] = [tag]
    return tags

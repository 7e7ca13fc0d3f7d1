"""Training tasks on Dask (``scale.runner = "dask"``, flows/scale.py): a local cluster of worker processes runs every
(model, fold) fit and refit, the predictions equal those of the flow's thread pool exactly, and the section never
enters a cache key."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from macd_ml.flows.config import load_config
from macd_ml.flows.scale import ScaleOut, local_cluster_kwargs
from macd_ml.tasks.keys import canonical
from tests.cliutil import cli
from tests.flowutil import forget_unchanged, latest_flow_run_id, task_states

pytest.importorskip("prefect_dask")

MODELS = ["lgb", "xgb", "lstm"]
N_FOLDS = 3
SMALL = [
    "--set",
    f"models.enabled={','.join(MODELS)}",
    "--set",
    f"folds.n_folds={N_FOLDS}",
    "--set",
    "models.lstm.max_epochs=2",
    "--set",
    "models.lstm.max_train_rows=1000",
]
TRAINED = [*MODELS, "reference"]  # the reference model trains in every run, by the same tasks
TASK_RUNS = {f"{m}-fold{k}" for m in TRAINED for k in range(N_FOLDS)} | {f"{m}-refit" for m in TRAINED}

# Loaded by every Dask worker process at start-up (distributed.worker.preload accepts a script's text): it records,
# per worker process, each log line of a Prefect task run (the run's name comes with every record of the run
# logger). Nothing in the flow or the tasks writes these files, and no worker process exists in threads mode.
PROBE = """
import json, logging, os
import prefect.main  # configures Prefect's logging now (dictConfig), so it does not drop the handler below later

class _Probe(logging.Handler):
    def emit(self, record):
        name = getattr(record, "task_run_name", None)
        if name:
            line = {"pid": os.getpid(), "task_run": name, "message": record.getMessage()}
            path = os.path.join(os.environ["MACD_ML_TEST_DASK_PROBE"], f"worker-{os.getpid()}.jsonl")
            with open(path, "a") as fh:
                fh.write(json.dumps(line) + "\\n")

def dask_setup(worker):
    logging.getLogger("prefect.task_runs").addHandler(_Probe())
"""


def _probe_lines(folder: Path) -> list[dict]:
    return [json.loads(ln) for p in sorted(folder.glob("worker-*.jsonl")) for ln in p.read_text().splitlines()]


def _run(market: Path, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    code, _, err = cli("retrain", "--data", str(market), "--out", str(out), *SMALL, *extra)
    assert code == 0, err
    return time.perf_counter() - t0


def test_scale_section_defaults_and_validation():
    assert ScaleOut().runner == "threads"
    cfg = load_config(overrides=["scale.runner=dask", "scale.dask_workers=3", "scale.dask_address=tcp://h:8786"])
    assert (cfg.scale.runner, cfg.scale.dask_workers, cfg.scale.dask_address) == ("dask", 3, "tcp://h:8786")
    from macd_ml.errors import ConfigError

    with pytest.raises(ConfigError, match="scale.runner"):
        load_config(overrides=["scale.runner=ray"])
    with pytest.raises(ConfigError, match="scale.bogus"):
        load_config(overrides=["scale.bogus=1"])
    # the workers of a local cluster size their models' thread pools like the flow does (cores // parallel tasks)
    from macd_ml.models.learners.device import parallel_tasks

    assert local_cluster_kwargs(ScaleOut(runner="dask"))["env"] == {"MACD_ML_PARALLEL_TASKS": str(parallel_tasks())}


def test_scale_is_not_in_the_training_tasks_inputs():
    """The training tasks receive model parameters, feature set and references, never the scale section: their
    cache keys are the same whichever runner ran them."""
    import inspect

    from macd_ml.tasks.train import fit_fold_task, refit_task

    for task in (fit_fold_task, refit_task):
        params = set(inspect.signature(task.fn).parameters)
        assert not params & {"config", "scale"}, params
    threads, dask = ScaleOut(), ScaleOut(runner="dask", dask_workers=4)
    cfg_t = load_config(scale=threads.model_dump())
    cfg_d = load_config(scale=dask.model_dump())
    for name in cfg_t.models.enabled:
        assert canonical(cfg_t.models.params_for(name)) == canonical(cfg_d.models.params_for(name))


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a local Dask cluster: worker processes that import the training stack
def test_dask_runner_matches_threads(market, tmp_path, monkeypatch):
    import dask

    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("MACD_ML_TEST_DASK_PROBE", str(probe))  # inherited by the worker processes

    with dask.config.set({"distributed.worker.preload": [PROBE]}):
        t_threads = _run(market, tmp_path / "threads")
        assert _probe_lines(probe) == []  # threads mode starts no worker process
        t_dask = _run(market, tmp_path / "dask", "--set", "scale.runner=dask", "--set", "scale.dask_workers=2")
        dask_states = task_states(latest_flow_run_id())
        dask_run = (tmp_path / "dask" / "current").resolve()
        # the runner is not part of any training task's cache key: threads reuse what the Dask workers computed
        forget_unchanged(tmp_path / "dask")  # (the flow must run for that, not the nothing-changed shortcut)
        _run(market, tmp_path / "dask")
        again = task_states(latest_flow_run_id())
    assert {t: dask_states[t] for t in TASK_RUNS} == dict.fromkeys(TASK_RUNS, "Completed")
    assert {t: again[t] for t in TASK_RUNS} == dict.fromkeys(TASK_RUNS, "Cached")
    print(
        f"\nretrain, {len(TASK_RUNS)} training tasks: threads {t_threads:.1f} s, dask (2 local workers) {t_dask:.1f} s"
    )

    # every fit and refit ran in a Dask worker process, none in this one (the flow's), and both workers had work
    lines = _probe_lines(probe)
    ran = {ln["task_run"] for ln in lines}
    assert ran == TASK_RUNS, ran
    pids = {ln["pid"] for ln in lines}
    assert os.getpid() not in pids and len(pids) == 2, pids
    finished = {ln["task_run"] for ln in lines if ln["message"].startswith("Finished in state Completed")}
    assert finished == TASK_RUNS, finished

    # the same predictions, bit for bit: the workers fit with the flow's seeds and thread counts
    for name in ("oof.parquet", "holdout_predictions.parquet"):
        threads = pl.read_parquet(tmp_path / "threads" / "current" / name)
        on_dask = pl.read_parquet(dask_run / name)
        assert {f"{m}_h5" for m in MODELS} <= set(threads.columns)
        assert_frame_equal(threads, on_dask, check_exact=True)

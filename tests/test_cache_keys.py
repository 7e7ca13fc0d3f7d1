"""Cache validity that cannot go stale: each task's code version is derived from the source of the
project modules it runs, and every key is made in one CachePolicy. Tested on a copy of the package, edited
between runs of the real flow (each run a separate process on the session's Prefect server)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macd_ml.artifacts.codehash import closure, code_version
from macd_ml.features.synth import synth_market, write_market
from tests.cliutil import cli, environment, package_copy
from tests.flowutil import ALWAYS_RUN, latest_flow_run_id, task_states

UPSTREAM_OF_STACK = (
    "ingest",
    "features",
    "labels",
    "folds",
    "lgb-fold0",
    "lgb-fold1",
    "lgb-fold2",
    "lgb-refit",
    "assemble-predictions",
)


def test_code_versions_follow_imports():
    assert "macd_ml.models.ensemble.stacking" not in closure("macd_ml.tasks.train")
    assert "macd_ml.features.indicators" in closure("macd_ml.tasks.features")
    assert "macd_ml.features.indicators" not in closure("macd_ml.tasks.train")  # it reads the table, not the code
    assert "macd_ml.features.indicators" not in closure("macd_ml.tasks.ingest")
    assert "macd_ml.models.evaluation.plots" in closure("macd_ml.tasks.report")
    assert "macd_ml.flows.cli" not in closure("macd_ml.tasks.stack")
    assert code_version("macd_ml.tasks.stack") != code_version("macd_ml.tasks.report")
    # the registry imports the learners lazily (inside a function, so that an unchanged run loads no training
    # library): their sources still count for every task that trains, so editing a learner re-runs its fits
    learners = {"gbdt", "lstm", "tft", "sequence", "params", "reference"}
    assert {f"macd_ml.models.learners.{m}" for m in learners} <= set(closure("macd_ml.tasks.train"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.heavy  # a copy of the package and three CLI runs in subprocesses
def test_editing_the_code_reruns_exactly_what_depends_on_it(tmp_path):
    from prefect.settings import PREFECT_API_URL

    copy = package_copy(tmp_path / "pkg")
    data = tmp_path / "data"
    write_market(synth_market(hours=3_000, seed=9, gaps=1), data)
    env = {"PYTHONPATH": str(copy.parent), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    # the command's process imports the copy (PYTHONPATH first), never the checkout
    where = subprocess.run(
        [sys.executable, "-P", "-c", "import macd_ml.flows.cli as c; print(c.__file__)"],
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(copy)), where.stdout + where.stderr

    def run() -> dict[str, str]:
        proc = cli(  # relaxed for a small run (tests/cliutil.py)
            "retrain",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--set",
            "folds.n_folds=3",
            "--set",
            'models.enabled=["lgb"]',
            subprocess=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert proc.code == 0, proc.err[-3000:]
        run.stdout = proc.out  # type: ignore[attr-defined]
        return task_states(latest_flow_run_id())

    first = run()
    assert first["stack"] == "Completed"

    # a constant in the stacker: the stacker (and what its output feeds) runs again, nothing before it
    _edit(copy / "models" / "ensemble" / "stacking.py", "MIN_INNER_BLOCK = 20", "MIN_INNER_BLOCK = 19")
    states = run()
    assert all(states[t] == "Cached" for t in UPSTREAM_OF_STACK), states
    assert states["stack"] == "Completed", states

    # an indicator: features change, so everything after them runs again (a change trees are not invariant to)
    _edit(
        copy / "features" / "indicators.py",
        "return (close / close.shift(window)).log()",
        "return (close / close.shift(window + 1)).log()",
    )
    states = run()
    assert states["ingest"] == "Cached", states
    assert all(v == "Completed" for k, v in states.items() if k != "ingest"), sorted(states.items())

    # a module no task uses: the CLI sees nothing changed and starts no flow run (flows/unchanged.py) ...
    _edit(copy / "deployments" / "nightly.py", "DEFAULT_CRON = ", "# edited\nDEFAULT_CRON = ")
    before = latest_flow_run_id()
    run()
    assert "nothing changed since run" in run.stdout and latest_flow_run_id() == before, run.stdout  # type: ignore
    # ... and without that shortcut's record, the flow runs and nothing in it runs again (champion/challenger
    # and promotion always do)
    shutil.rmtree(tmp_path / "out" / "cache" / "unchanged")
    states = run()
    assert {k for k, v in states.items() if v != "Cached"} == ALWAYS_RUN, states

"""Many retrains at once (docs/walkforward.md, "Fan-out"): one child retrain per (target, cutoff), each the
``retrain`` flow itself run as a subflow inside a Prefect task, fanned out on Prefect's task runner (the flow's
threads, or Dask worker processes through prefect-dask: a local cluster, or a scheduler whose workers run on
other machines: flows/scale.py). No scheduler of our own: Prefect tracks every child as a task run with its
subflow run, Dask places them.

- **Shared work once.** Every child writes its cache to the parent's ``OUT/cache``: candles validated once per
  file, the feature table built once per market (a cutoff slices it), a cross symbol's candles stored once for
  the fleet; each child publishes under a home of its own (``run_home``), so children never race for one
  ``current``.
- **Isolation.** A child's bad data (exit 2), refusal (exit 3) or crash is its own row in the parent's table;
  the other children run on. A refused child is an outcome (the run is published, the bot keeps its champion);
  a failed one is a failure: the parent ends failed, and a Retry of the parent (or ``macd-ml resume``) runs
  only the failed children again, the others come back Cached (their key: the child's config, the code and
  the candle files; a cached child whose run folder no longer verifies runs again).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import RunRef, read_json, run_ref
from macd_ml.errors import ConfigError, DataError, PromotionRefused, Refused
from macd_ml.flows import scale
from macd_ml.flows.config import RetrainConfig
from macd_ml.tasks.policy import ContentKey
from macd_ml.tasks.results import SafeJSONSerializer, result_storage_block, result_type

log = logging.getLogger(__name__)

Status = Literal["promoted", "refused", "bad-input", "failed"]
# the parent's exit code (docs/cli.md): the worst child decides
EXIT_FOR: dict[str, int] = {"promoted": 0, "refused": 3, "bad-input": 2, "failed": 1}


def cross_for(config: RetrainConfig, target: str) -> list[str]:
    """``config.cross`` for a child predicting ``target``: a cross symbol that is the target itself is left out
    (its own candles are the target block); none left of an explicit list means no reference symbol."""
    cross = [c for c in config.cross if c != target]
    return ["NONE"] if config.cross and not cross else cross


class Child(BaseModel):
    """One child retrain: a name for tables and the UI, and its full config (target, cutoff, home)."""

    name: str
    config: RetrainConfig


@result_type
class ChildResult(BaseModel):
    """A finished child (promoted or refused) as the parent's table shows it."""

    name: str
    target: str
    until: datetime | None = None
    status: Status
    run: RunRef | None = None
    detail: str = ""
    shipped: dict[str, str] = {}  # horizon -> what ships ("meta", "best:reference", ...)
    holdout_auc: dict[str, float] = {}
    reference_auc: dict[str, float] = {}
    health_passed: bool | None = None
    gate_sharpe_diff: float | None = None  # gated - ungated long/flat Sharpe on the child's holdout
    worker: str = ""  # host:pid of the process that ran it (a Dask worker, or the flow's own process)
    seconds: float = 0.0  # wall-clock time of the child (reported, never a cache key)
    # a cached child is used only while its run folder verifies (tasks/results.py verifies every RunRef)


class ChildKey(ContentKey):
    """A child is keyed on its config as published (where tasks run and --force are not content; its home is),
    the code of the retrain flow and everything it imports, and the bytes of the candle files it reads (its
    target's, its cross symbols', a pooled panel's): another target's new candles leave it Cached."""

    def compute_key(self, task_ctx: Any, inputs: dict, flow_parameters: dict, **kwargs: Any) -> str | None:
        from macd_ml.artifacts.codehash import code_version
        from macd_ml.flows.preflight import input_files
        from macd_ml.flows.unchanged import FLOW_MODULE, published_config
        from macd_ml.tasks.keys import make_key

        config: RetrainConfig = inputs["child"].config
        try:
            files = input_files(config) if config.data_dir else {}
        except (DataError, OSError):
            return None  # the child runs, and says what is wrong with its files
        return make_key("child", code_version(FLOW_MODULE), {"config": published_config(config), "files": files})


def _worker() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def summarise(child: Child, run: Path, status: Status, detail: str = "") -> ChildResult:
    """The table row of a child whose run folder is ``run``."""
    metrics = read_json(run / catalog.METRICS)
    bt = metrics.get("backtest") or {}
    diff = ((bt.get("gated_minus_ungated") or {}).get("long_flat") or {}).get("sharpe")
    return ChildResult(
        name=child.name,
        target=child.config.target,
        until=child.config.until,
        status=status,
        run=run_ref(run),
        detail=detail,
        shipped={h: m["shipped"] for h, m in metrics["meta"].items()},
        holdout_auc={h: m["test_auc"] for h, m in metrics["meta"].items()},
        reference_auc={h: r["test_auc"] for h, r in (metrics.get("reference") or {}).items()},
        health_passed=(metrics.get("health") or {}).get("passed"),
        gate_sharpe_diff=diff,
        worker=_worker(),
    )


def run_child(child: Child, skip_unchanged: bool = True) -> ChildResult:
    """The retrain flow for ``child`` (a subflow of the calling task). A refusal is a result; bad input and
    crashes raise (the task fails; the parent's table says which)."""
    import time

    from macd_ml.flows.retrain import retrain

    t0 = time.perf_counter()
    try:
        path = retrain(config=child.config, skip_unchanged=skip_unchanged)
        result = summarise(child, Path(path), "promoted")
    except PromotionRefused as exc:
        run = getattr(exc, "run", None)
        if run is None:
            raise
        # the table says why: the message after "run X published but not promoted (PATH): "
        result = summarise(child, Path(run), "refused", str(exc).split("): ", 1)[-1])
    except Refused as exc:  # nothing may ship (every model of a horizon collapsed): no run folder
        result = ChildResult(
            name=child.name,
            target=child.config.target,
            until=child.config.until,
            status="refused",
            detail=str(exc),
            worker=_worker(),
        )
    return result.model_copy(update={"seconds": round(time.perf_counter() - t0, 2)})


def child_task(options: dict[str, Any]) -> Any:
    """The Prefect task one child runs in (its run named after the child)."""
    from prefect import task

    return task(
        name="child",
        task_run_name="{child.name}",
        cache_policy=ChildKey(),
        persist_result=True,
        result_serializer=SafeJSONSerializer(),
        retries=0,
        **options,
    )(run_child)


class Failure(BaseModel):
    """A child that raised: its name and one line saying why."""

    name: str
    target: str
    until: datetime | None = None
    status: Status
    detail: str


def share_inputs(children: list[Child], out: Path) -> int:
    """Before the fan-out: each distinct market (target and cross symbols) validated once and its whole feature
    table built once, both stored under ``OUT/cache`` where every child's preflight and stages find them (children
    side by side would otherwise build the same table each). A market with bad input is left to its children,
    which report it. Returns how many tables were built."""
    from macd_ml.features.ingest import default_cross, load_market
    from macd_ml.tasks.candles import COUNTS, candle_reader
    from macd_ml.tasks.table import feature_table

    built, seen = COUNTS["built"], set()
    for child in children:
        c = child.config
        if not c.data_dir:
            continue
        try:
            asked = c.cross_symbols()
            cross = asked if asked is not None else default_cross(c.data_dir, c.target)
            key = (c.data_dir, c.target, tuple(cross), c.features.model_dump_json(), c.gap_tolerance_hours)
            if key in seen:
                continue
            seen.add(key)
            market = load_market(c.data_dir, c.target, cross, read=candle_reader(out))
            feature_table(market, c.features, c.gap_tolerance_hours, out)
        except (DataError, ConfigError, OSError):
            continue
    return COUNTS["built"] - built


def run_children(
    children: list[Child], fan_out: scale.ScaleOut, out: Path, force: bool = False, skip_unchanged: bool = True
) -> list:
    """Every child on ``fan_out``'s runner at once; one :class:`ChildResult` or :class:`Failure` per child,
    in order. Never raises for a child."""
    names = [c.name for c in children]
    if len(set(names)) != len(names):
        raise ConfigError(f"two children share a name: {sorted(n for n in names if names.count(n) > 1)}")
    share_inputs(children, out)
    options = {"result_storage": result_storage_block(str(out / "cache" / "results")), "refresh_cache": force or None}
    t = child_task(options)
    with scale.task_runner(fan_out) as runner:
        futures = [scale.submit(runner, t, child=c, skip_unchanged=skip_unchanged) for c in children]
        for f in futures:
            f.wait()
        states = [f.state for f in futures]
    rows: list[ChildResult | Failure] = []
    for child, state in zip(children, states):
        if state.is_completed():
            rows.append(state.result())
            continue
        exc = state.result(raise_on_failure=False)
        bad = isinstance(exc, (DataError, ConfigError))
        rows.append(
            Failure(
                name=child.name,
                target=child.config.target,
                until=child.config.until,
                status="bad-input" if bad else "failed",
                detail=(str(exc) if isinstance(exc, BaseException) else state.message or state.name)[:400],
            )
        )
    return rows


def exit_code(rows: list) -> int:
    """0 every child promoted; 3 none failed but one was refused; 2 one had bad input (none crashed); 1 a child
    crashed. docs/cli.md, "Exit codes"."""
    statuses = {r.status for r in rows}
    for status in ("failed", "bad-input", "refused"):
        if status in statuses:
            return EXIT_FOR[status]
    return 0


def table(rows: list) -> str:
    """The parent's table in Markdown (child, status, what shipped, holdout AUC vs reference, gate)."""
    lines = [
        "| child | status | shipped | holdout AUC (reference) | gated − ungated Sharpe | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if isinstance(r, ChildResult) and r.run is not None:
            shipped = ", ".join(f"h={h}: {r.shipped[h]}" for h in sorted(r.shipped, key=int))
            auc = ", ".join(
                f"{r.holdout_auc[h]:.3f} ({r.reference_auc[h]:.3f})"
                if h in r.reference_auc
                else f"{r.holdout_auc[h]:.3f}"
                for h in sorted(r.holdout_auc, key=int)
            )
            gate = "" if r.gate_sharpe_diff is None else f"{r.gate_sharpe_diff:+.2f}"
        else:
            shipped = auc = gate = ""
        detail = r.detail.replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {r.name} | {r.status} | {shipped} | {auc} | {gate} | {detail} |")
    return "\n".join(lines)


class ChildrenFailed(RuntimeError):
    """Some children failed; the others finished and the report says which (``code``: the parent's exit code).
    Raised by a parent flow after its report is written, so that its flow run ends Failed and a Retry runs
    only the failed children again."""

    def __init__(self, message: str = "", report: str | None = None, code: int = 1):
        super().__init__(message)
        self.report, self.code = report, code


def write_children(folder: Path, rows: list) -> None:
    """``children.md`` (the table) and ``children.json`` (one object per child) in ``folder``."""
    from macd_ml.artifacts.store import write_bytes, write_json

    write_bytes(folder / "children.md", (table(rows) + "\n").encode())
    write_json(folder / "children.json", [r.model_dump(mode="json") for r in rows])


def rows_from_report(folder: Path) -> list[Failure]:
    """The children of a written report, as rows carrying their status (for the exit code)."""
    return [Failure.model_validate({**r, "detail": r.get("detail", "")}) for r in read_json(folder / "children.json")]


def finish(rows: list, report: Path) -> None:
    """Raise :class:`ChildrenFailed` when a child failed or had bad input (after the report is written)."""
    failed = [r for r in rows if r.status in ("failed", "bad-input")]
    if failed:
        raise ChildrenFailed(
            f"{len(failed)} of {len(rows)} children failed ({', '.join(r.name for r in failed)}); report {report}",
            report=str(report),
            code=exit_code(rows),
        )


PARENT = "parent"  # the record a parent flow leaves in its report folder, for `macd-ml resume REPORT_DIR`


def remember_parent(folder: Path, flow: str, params: dict[str, Any]) -> None:
    """Record (signed) which parent flow wrote ``folder`` and with what parameters, before its children run."""
    from macd_ml.artifacts.records import save_signed

    save_signed(folder, PARENT, {"flow": flow, "params": params})


def parent_record(folder: Path) -> dict | None:
    """The parent record of a report folder, when it verifies; else None."""
    from macd_ml.artifacts.records import load_signed

    return load_signed(folder, PARENT)

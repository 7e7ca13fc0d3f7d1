"""Benchmark: cold run vs unchanged re-run vs resume after one failed write, on the real candles.

    python bench/bench_resume.py [--data ../shared/data/binance_spot_1h] [--models lgb,xgb,...]

One process, one Prefect server (so the ~10 s server start-up is paid once and is not in the figures).
1. cold: a fresh output folder, every stage computed;
2. unchanged: the same config again (every task should come back Cached);
3. resume: a run whose stacking parameters changed (training cached) while ``OUT/runs`` is immutable, so the
   publish write fails for real; the block is lifted and the run resumed (``retrain(config, run_id=...)``, what
   ``macd-ml resume`` does). Target: unchanged <= 5 % of cold; resume <= the publish task's own time + 15 s.
Needs root and chattr for step 3 (a real permission failure); prints figures only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    ap.add_argument("--models", default="lgb,xgb,lgb_cross,lstm,tft")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"real candles not found at {args.data}; nothing to measure")
        return 0
    from prefect.testing.utilities import prefect_test_harness

    from macd_ml.artifacts.store import new_run_id
    from macd_ml.flows.config import RetrainConfig
    from macd_ml.flows.retrain import retrain
    from tests.flowutil import task_states

    out = Path(tempfile.mkdtemp(prefix="macd-bench-resume-"))
    base = {"data_dir": args.data, "out_dir": str(out), "models": {"enabled": args.models.split(",")}}
    cfg = RetrainConfig.model_validate(base)

    def timed(config, run_id=None):
        t0 = time.perf_counter()
        state = retrain(config, run_id=run_id, return_state=True)
        return time.perf_counter() - t0, state

    with prefect_test_harness(server_startup_timeout=120):
        cold, s1 = timed(cfg)
        unchanged, s2 = timed(cfg)
        states2 = task_states(s2.state_details.flow_run_id)
        cached = sum(v == "Cached" for v in states2.values())

        changed = RetrainConfig.model_validate({**base, "stacking": {"c_grid": [0.01, 0.1]}})
        runs = out / "runs"
        resume = publish_own = None
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(runs)]).returncode == 0:
            run_id = new_run_id()
            try:
                failed, s3 = timed(changed, run_id)
            finally:
                subprocess.run(["chattr", "-i", str(runs)], check=True)
            assert s3.is_failed(), "the blocked publish should have failed the run"
            resume, s4 = timed(changed, run_id)
            states4 = task_states(s4.state_details.flow_run_id)
            publish_own = _task_seconds(s4.state_details.flow_run_id, "publish-run")
        else:
            print("step 3 skipped: needs root and chattr for a real permission failure")

    print(f"\nreal candles, models {args.models}, machine: {os.cpu_count()} cores")
    print("| run | wall s | vs cold |")
    print("|---|---|---|")
    print(f"| cold | {cold:.1f} | 1.00 |")
    print(f"| unchanged re-run ({cached}/{len(states2)} tasks Cached) | {unchanged:.1f} | {unchanged / cold:.3f} |")
    if resume is not None:
        reran = sorted(k for k, v in states4.items() if v != "Cached")
        print(f"| resume after a failed publish (ran: {', '.join(reran)}) | {resume:.1f} | {resume / cold:.3f} |")
        print(
            f"\npublish task's own time {publish_own:.1f} s; resume overhead {resume - publish_own:.1f} s "
            f"(target <= 15 s); unchanged re-run {100 * unchanged / cold:.1f} % of cold (target <= 5 %)"
        )
    return 0


def _task_seconds(flow_run_id, name: str) -> float:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    for r in runs:
        if r.name.startswith(name):
            return float(r.total_run_time.total_seconds())
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())

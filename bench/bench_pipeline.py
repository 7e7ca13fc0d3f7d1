"""Benchmark: the whole nightly job on the real candles, against the targets in docs/performance.md.

    python bench/bench_pipeline.py [--data DIR] [--no-deployment] [--json FILE]

Default config (every model, 5 folds, export, health, bundle), ETHUSDT target, BTCUSDT cross; a temporary
PREFECT_HOME whose database exists before the first timing (a nightly's server is not new).

1. **cold**: ``macd-ml retrain --data DIR --out OUT`` on a fresh output folder: wall time of the command
   (imports, its temporary server, the flow) and the peak RSS of the command and its server;
2. **unchanged**: the same command again (every task comes back Cached): its share of the cold run;
3. **orchestration overhead**: the same flow body with every task called as a plain function (no Prefect
   engine, API, cache or UI artifacts: ``--mode direct``) against the flow through Prefect (``--mode prefect``,
   its server already up), each on a fresh output folder in its own process;
4. **deployment** (unless ``--no-deployment``): ``prefect server start`` and ``macd-ml serve`` running, a run of
   ``retrain/served`` on a fresh output folder, then the same again: submission to final state.

Prints one table with the targets; figures only (never a pass/fail), as every bench here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return seconds


def _children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------- one flow, timed


def _direct(config, run_id: str) -> str:
    """The pipeline with every stage called directly (flows/stages_runner.py: ``direct_stages``): the same stage
    functions and cache folders as the flow, without Prefect's engine, API, result cache or UI artifacts; what the
    stages cost without orchestration."""
    from pathlib import Path

    from macd_ml.flows.pipeline import run_pipeline
    from macd_ml.flows.preflight import preflight
    from macd_ml.flows.stages_runner import direct_stages

    out = Path(config.out_dir).resolve()
    preflight(config, out)
    return run_pipeline(config, out, run_id, direct_stages()).path


def one_flow(mode: str, data: str, out: str) -> None:
    """``--mode``: run the flow once in this process and print {"seconds": ...} (the flow call only)."""
    from macd_ml.artifacts.store import new_run_id
    from macd_ml.flows.config import RetrainConfig

    config = RetrainConfig.model_validate({"data_dir": data, "out_dir": out})
    if mode == "direct":
        import macd_ml.flows.pipeline  # noqa: F401  (imports are not the flow's cost)

        t0 = time.perf_counter()
        _direct(config, new_run_id())
    else:
        from macd_ml.flows.local_api import local_api
        from macd_ml.flows.retrain import retrain

        with local_api():
            t0 = time.perf_counter()
            retrain(config, run_id=new_run_id())
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def _flow_seconds(mode: str, data: str, out: Path, env: dict, log: Path) -> float:
    with log.open("a") as f:
        proc = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--data", data, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            cwd=ROOT,
        )
    if proc.returncode != 0:
        raise SystemExit(f"--mode {mode} exited {proc.returncode}; see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


# ------------------------------------------------------------------------------------------- deployment


def _deployment(data: str, base: Path, env: dict, log: Path) -> tuple[float, float, float]:
    """(cold, unchanged, start delay) seconds from submission to a final state of ``retrain/served`` runs."""
    import httpx

    from macd_ml.flows.local_api import free_port

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**env, "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "0"}
    procs = []
    with log.open("a") as f:
        procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        try:
            _wait(lambda: _ok(httpx, f"{api}/health"), 120, "the Prefect server")
            out = base / "deploy-out"
            cmd = [str(BIN / "macd-ml"), "serve", "--data", data, "--out", str(out)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
            dep = _wait(lambda: _deployment_id(httpx, api), 180, "the served deployment")
            runs = []
            for _ in range(2):
                r = _post_retrying(httpx, f"{api}/deployments/{dep}/create_flow_run")
                run_id = r.json()["id"]
                t0 = time.perf_counter()
                final = _wait(lambda r=run_id: _final(httpx, api, r), 900, "the deployment's run")
                if final["state"]["type"] != "COMPLETED":
                    raise SystemExit(f"deployment run ended {final['state']['type']}; see {log}")
                delay = _seconds(final["start_time"]) - _seconds(final["created"])
                runs.append((time.perf_counter() - t0, delay))
        finally:
            for p in reversed(procs):
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    return runs[0][0], runs[1][0], max(d for _, d in runs)


def _post_retrying(httpx, url: str, tries: int = 5):
    """POST, retried on 503: the SQLite server answers 503 while another writer holds the database (Prefect's
    own client retries these the same way)."""
    for attempt in range(tries):
        r = httpx.post(url, json={}, timeout=30)
        if r.status_code != 503 or attempt == tries - 1:
            r.raise_for_status()
            return r
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _ok(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _deployment_id(httpx, api: str):
    r = httpx.get(f"{api}/deployments/name/retrain/served", timeout=5)
    return r.json()["id"] if r.status_code == 200 else None


def _final(httpx, api: str, run_id: str):
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()
    return run if run.get("state") and run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None


def _wait(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer within {timeout:.0f} s")


# ------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "binance_spot_1h"))
    ap.add_argument("--no-deployment", action="store_true", help="skip step 4 (a server and a served deployment)")
    ap.add_argument("--only-deployment", action="store_true", help="step 4 alone")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--mode", choices=["direct", "prefect"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        one_flow(args.mode, args.data, args.out)
        return 0
    if not Path(args.data).is_dir():
        print(f"real candles not found at {args.data}; nothing to measure")
        return 0

    base = Path(tempfile.mkdtemp(prefix="macd-bench-pipeline-"))
    log = base / "bench.log"
    env = {**os.environ, "PREFECT_HOME": str(base / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    print(f"working in {base} (log: {log})", flush=True)
    if args.only_deployment:
        d_cold, d_unchanged, delay = _deployment(args.data, base, env, log)
        print(f"deployment: cold {d_cold:.1f} s, unchanged {d_unchanged:.1f} s (start delay <= {delay:.1f} s)")
        return 0
    _timed([str(BIN / "prefect"), "server", "database", "upgrade", "-y"], env, log)

    out = base / "cli-out"
    cli = [str(BIN / "macd-ml"), "retrain", "--data", args.data, "--out", str(out)]
    cold = _timed(cli, env, log)
    peak = _children_peak_mib()
    print(f"cold CLI run {cold:.1f} s, peak RSS {peak:.0f} MiB", flush=True)
    unchanged = _timed(cli, env, log)
    print(f"unchanged CLI re-run {unchanged:.1f} s", flush=True)
    direct = _flow_seconds("direct", args.data, base / "direct-out", env, log)
    through = _flow_seconds("prefect", args.data, base / "prefect-out", env, log)
    print(f"flow body: direct {direct:.1f} s, through Prefect {through:.1f} s", flush=True)
    deployment = None
    if not args.no_deployment:
        deployment = _deployment(args.data, base, env, log)
        print(f"deployment: cold {deployment[0]:.1f} s, unchanged {deployment[1]:.1f} s", flush=True)

    rows = [
        ("cold retrain, CLI (export + health + bundle)", f"{cold:.1f} s", "<= 90 s"),
        ("unchanged re-run, CLI", f"{unchanged:.1f} s = {100 * unchanged / cold:.1f} % of cold", "<= 5 %"),
        ("orchestration overhead (flow via Prefect vs direct)", f"{100 * (through / direct - 1):+.1f} %", "<= 10 %"),
        ("peak RSS (command + its server)", f"{peak:.0f} MiB", "<= 2048 MiB"),
    ]
    if deployment is not None:
        d_cold, d_unchanged, delay = deployment
        rows.append(
            (
                "unchanged re-run, deployment on a running server",
                f"{d_unchanged:.1f} s = {100 * d_unchanged / d_cold:.1f} % of its cold {d_cold:.1f} s "
                f"(start delay <= {delay:.1f} s)",
                "<= 5 %",
            )
        )
    print(f"\nreal candles {args.data}, ETHUSDT + BTCUSDT, default config; {os.cpu_count()} cores")
    print("| figure | measured | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "direct_s": direct, "prefect_s": through}, indent=1))
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

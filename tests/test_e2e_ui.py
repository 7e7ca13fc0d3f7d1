"""End to end through the real parts, as a user runs it: `prefect server start` on 127.0.0.1 (temporary
PREFECT_HOME), a `process` work pool, `prefect deploy --all` from prefect.yaml, `prefect worker start`, and the
Prefect UI driven in the system's Chromium by Playwright (no browser download).

- a Custom run of the `retrain` deployment from the UI's form (JSON tab), waited on to Completed; its report
  artifact shows its plots (every <img> decoded);
- a run whose bundle write fails (a file stands where the `bundles` folder must be) is fixed and retried with the
  UI's Retry button: only the failed task runs again, every other task comes back Cached;
- the nightly cron is registered; a nightly run with no candle folder fails at once;
- the same deploy-and-run against PostgreSQL (Debian's postgresql, started here) as the server's database.

Screenshots go to E2E_ARTIFACTS (default .ci/artifacts), which CI keeps. CI runs this module after the unit tests
(`make test`); it skips itself, naming what is missing, where Chromium or PostgreSQL is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from macd_ml.features.synth import synth_market, write_market

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", ROOT / ".ci" / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# a small run that passes the health gate on the generated market: the pipeline's behaviour, not its models
SMALL_CONFIG = {
    "target": "ETHUSDT",
    "folds": {"n_folds": 3},
    "models": {"enabled": ["lgb", "xgb"]},
    "health": {"auc_gates": False, "live_check": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


class Stack:
    """A Prefect server + pool + deployments + worker, all real processes, torn down at the end."""

    def __init__(self, base: Path, database_url: str | None = None):
        self.base = base
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.ui = f"http://127.0.0.1:{self.port}"
        self.home = base / "home"
        self.home.mkdir(parents=True)
        self.logs = base / "logs"
        self.logs.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PREFECT_HOME=str(base / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_LOGGING_LEVEL="INFO",
            PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",  # a busy SQLite shows in the server log, not only as a 503
            MACD_ML_HOME=str(self.home),
        )
        if database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            args, cwd=cwd or self.base, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(p)
        return p

    def cli(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=cwd or self.base,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def get(self, path: str):
        with urllib.request.urlopen(self.api + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            self.api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def start(self) -> Stack:
        self.spawn("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
        _wait("the Prefect server", lambda: self.get("/health"), timeout=120)
        self.cli("work-pool", "create", "macd-ml", "--type", "process")
        self.cli("--no-prompt", "deploy", "--all", cwd=ROOT)  # from the checkout; runs from MACD_ML_HOME
        self.spawn("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "macd-ml", "--type", "process"])
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str, timeout: float = 420) -> dict:
        def final():
            fr = self.flow_run(run_id)
            return fr if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        return _wait(f"flow run {run_id} to finish", final, timeout, every=1.0)

    def runs_of(self, deployment_id: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200})

    def task_runs(self, run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})

    def artifacts(self, run_id: str) -> list[dict]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 50})

    def log_tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def candles(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("e2e-candles")
    write_market(synth_market(hours=3_000, seed=5, gaps=1), d)
    return d


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("e2e-sqlite"))
    try:
        yield s.start()
    except Exception:
        print(s.log_tail("server"), s.log_tail("worker") if (s.logs / "worker.log").exists() else "")
        raise
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.set_default_timeout(30_000)
    # what the UI asked the API and did not get: shown when a UI step fails
    p.api_failures = []  # type: ignore[attr-defined]
    p.on(
        "response",
        lambda r: r.status >= 400 and p.api_failures.append(r),
    )
    p.on("requestfailed", lambda r: p.api_failures.append(f"FAILED {r.method} {r.url}: {r.failure}"))
    p.on("console", lambda m: m.type == "error" and p.api_failures.append(f"console: {m.text}"))
    yield p
    ctx.close()


def _failures(page) -> str:
    """The UI's failed requests (status, URL, body) and console errors, newest last."""
    lines = []
    for f in page.api_failures[-20:]:
        if isinstance(f, str):
            lines.append(f)
            continue
        try:
            body = f.text()[:500]
        except Exception as exc:  # noqa: BLE001 - the body may be gone by now
            body = f"(no body: {exc})"
        lines.append(f"{f.status} {f.request.method} {f.url}: {body}")
    return "\n".join(lines) or "(none)"


def _busy_answers(page) -> int:
    return sum(1 for f in page.api_failures if not isinstance(f, str) and f.status == 503)


def _click_until(page, button, done, timeout: float = 90, attempts: int = 3) -> bool:
    """Click ``button`` until ``done()``. On SQLite, Prefect's server answers 503 ("Service Unavailable", its code
    for "retry") when a write meets a busy database (PrefectHQ/prefect#18934, #16102); its Python client retries,
    its UI only shows "Oops. Something went wrong." A user clicks again, and so does this; any other failure is
    not retried and fails the test."""
    for _ in range(attempts):
        busy = _busy_answers(page)
        button.click()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            if _busy_answers(page) > busy:
                break
            page.wait_for_timeout(250)
        else:
            return False
    return done()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def postgres():
    """Debian's PostgreSQL, started for this test as the `postgres` user on a free port; yields the URL."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("starting Debian's PostgreSQL here needs root (to run it as the postgres user)")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="macd-ml-e2e-pg-"))  # not under pytest's 0700 folders: postgres reads it
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(sock, "postgres")
    port = _free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w", "start")
    try:
        as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect")

        def query(sql: str) -> str:
            r = subprocess.run(
                [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "prefect"]
                + ["-tAc", sql],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return r.stdout.strip()

        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect", query
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------- the UI


def _custom_run(page, stack: Stack, deployment: str, parameters: dict) -> str:
    """Open the deployment's Custom run page, enter the parameters in its JSON tab, submit; the flow run id."""
    dep = stack.get(f"/deployments/name/retrain/{deployment}")
    page.goto(f"{stack.ui}/deployments/deployment/{dep['id']}/run")
    page.get_by_text("Parameters", exact=True).locator("xpath=..").locator("button").first.click()
    page.get_by_text("Use JSON input").click()
    page.locator("textarea.p-code-input__textarea").fill(json.dumps(parameters, indent=2))
    _shot(page, f"{deployment}-custom-run")
    before = {r["id"] for r in stack.runs_of(dep["id"])}
    # the UI validates the parameters against the API before it creates the run: on a loaded machine that
    # takes a while; it then leaves the form for the deployment's page
    if not _click_until(
        page, page.get_by_role("button", name="Submit"), lambda: not page.url.rstrip("/").endswith("/run")
    ):
        _shot(page, f"{deployment}-submit-stuck")
        raise AssertionError(
            f"the Custom run form did not submit; the page says:\n{page.inner_text('body')[-600:]}\n"
            f"failed UI requests:\n{_failures(page)}\nserver log:\n{stack.log_tail('server')}"
        )
    new = _wait(
        "the submitted flow run", lambda: [r["id"] for r in stack.runs_of(dep["id"]) if r["id"] not in before], 60
    )
    assert len(new) == 1, new
    return new[0]


def _states(stack: Stack, run_id: str, since: str | None = None) -> dict[str, str]:
    """Task run name -> state name (for task runs that started at or after ``since``, an ISO time)."""
    out = {}
    for tr in stack.task_runs(run_id):
        if since and (tr.get("start_time") or tr.get("expected_start_time") or "") < since:
            continue
        name = re.sub(r"-[0-9a-f]{3}$", "", tr["name"])  # Prefect's default run names end in -xyz
        out[name] = tr["state"]["name"] if tr.get("state") else "?"
    return out


def _report_images_load(page, stack: Stack, run_id: str) -> int:
    """Open the run's report artifact in the UI; every image must decode (no broken links). Returns how many."""
    report = next(a for a in stack.artifacts(run_id) if (a.get("key") or "").endswith("-report"))
    page.goto(f"{stack.ui}/artifacts/artifact/{report['id']}")
    page.wait_for_selector("img[src^='data:image/png']", timeout=30_000)
    images = page.locator("img[src^='data:image/png']")
    n = images.count()
    broken = page.evaluate(
        "() => [...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png')"
        " && !(i.complete && i.naturalWidth > 0)).length"
    )
    _shot(page, "report-artifact")
    assert broken == 0, f"{broken} of {n} report images did not load"
    return n


def test_ui_custom_run_completes_and_its_report_shows_its_plots(stack, page, candles):
    out = stack.base / "out-ui"
    params = {"config": {**SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}
    run_id = _custom_run(page, stack, "retrain", params)
    run = stack.wait_final(run_id)
    page.reload()
    page.wait_for_timeout(1500)
    _shot(page, "ui-run-final")
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.log_tail('worker')}"
    assert (out / "current" / "manifest.json").is_file()
    assert any((out / "bundles").glob("*.tar.gz"))
    assert _report_images_load(page, stack, run_id) >= 3


def test_ui_retry_reruns_only_the_failed_write(stack, page, candles):
    """The same config as a finished run, but a file stands where the bundles folder goes: every stage comes
    back Cached, the bundle write fails; fixed and retried from the UI, only the bundle task runs again."""
    out = stack.base / "out-retry"
    params = {"config": {**SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}
    first = _custom_run(page, stack, "retrain", params)
    assert stack.wait_final(first)["state"]["type"] == "COMPLETED"

    shutil.rmtree(out / "bundles")
    (out / "bundles").write_text("not a folder")
    run_id = _custom_run(page, stack, "retrain", params)
    failed = stack.wait_final(run_id)
    assert failed["state"]["type"] == "FAILED", failed["state"]
    states = _states(stack, run_id)
    assert states.get("bundle") == "Failed", states
    assert {s for n, s in states.items() if n != "bundle"} <= {"Cached", "Completed"}, states

    (out / "bundles").unlink()
    page.goto(f"{stack.ui}/runs/flow-run/{run_id}")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    failed_state = failed["state"]["id"]
    confirm = page.get_by_role("dialog").get_by_role("button", name="Retry")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def retry_accepted() -> bool:
        if confirm.is_visible():  # some UI versions ask again in a dialog
            try:  # the dialog may close (or re-render) between the check and the click; the next round looks again
                confirm.click(timeout=2000)
            except PlaywrightTimeout:
                pass
        return stack.flow_run(run_id)["state"]["id"] != failed_state

    assert _click_until(page, page.get_by_role("button", name="Retry").first, retry_accepted, timeout=60), (
        f"the UI's Retry did not retry the run; failed UI requests:\n{_failures(page)}"
    )
    retried = _wait(
        "the retried run to finish",
        lambda: (
            (fr := stack.flow_run(run_id))["state"]["id"] != failed_state
            and fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
            and fr
        ),
        timeout=300,
        every=1.0,
    )
    page.reload()
    _shot(page, "ui-retry-final")
    assert retried["state"]["type"] == "COMPLETED", (
        f"{retried['state']['type']}: {retried['state'].get('message')}\n{_states(stack, run_id, since)}\n"
        f"{stack.log_tail('worker')}"
    )
    assert retried["run_count"] >= 2
    again = _states(stack, run_id, since)
    # champion-challenger and promote are never cached by design (they read the current champion, which may
    # have changed between two attempts) and cost milliseconds; every computing stage must come back Cached
    ran = sorted(n for n, s in again.items() if s != "Cached")
    assert ran == ["bundle", "champion-challenger", "promote"], f"the retry re-executed {ran}; all: {again}"
    assert again["bundle"] == "Completed" and len(again) == len(states)
    assert any((out / "bundles").glob("*.tar.gz"))


def test_nightly_cron_is_registered_and_refuses_to_run_without_candles(stack, page):
    nightly = stack.get("/deployments/name/retrain/retrain-nightly")
    crons = [(s["schedule"].get("cron"), s["schedule"].get("timezone")) for s in nightly["schedules"]]
    assert crons == [("30 0 * * *", "UTC")] and all(s["active"] for s in nightly["schedules"])
    assert nightly["parameters"] == {"require_data": True, "skip_unchanged": True}
    page.goto(f"{stack.ui}/deployments/deployment/{nightly['id']}")
    page.get_by_text("At 12:30 AM every day").first.wait_for(timeout=30_000)  # the schedule as the UI shows it
    _shot(page, "nightly-deployment")
    fr = stack.post(f"/deployments/{nightly['id']}/create_flow_run", {"parameters": {}})
    final = stack.wait_final(fr["id"], timeout=180)
    assert final["state"]["type"] == "FAILED"
    assert "macd_ml_data_dir" in (final["state"].get("message") or ""), final["state"]
    assert _states(stack, fr["id"]) == {}  # failed before the first task


def test_same_deploy_and_run_on_postgresql(postgres, tmp_path_factory, candles):
    url, query = postgres
    s = Stack(tmp_path_factory.mktemp("e2e-pg"), database_url=url)
    try:
        s.start()
        dep = s.get("/deployments/name/retrain/retrain")
        out = s.base / "out"
        fr = s.post(
            f"/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"config": {**SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}},
        )
        final = s.wait_final(fr["id"])
        assert final["state"]["type"] == "COMPLETED", f"{final['state']}\n{s.log_tail('worker')}"
        assert (out / "current" / "manifest.json").is_file()
        assert s.get("/deployments/name/retrain/retrain-nightly")["schedules"]
        # the server really kept its state in PostgreSQL: the run and every deployment of prefect.yaml are rows there
        assert query(f"select state_type from flow_run where id = '{fr['id']}'") == "COMPLETED"
        import yaml

        deployments = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
        assert int(query("select count(*) from deployment")) == len(deployments) == 8
    finally:
        s.stop()

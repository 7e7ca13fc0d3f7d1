"""End to end through the real parts, as a user runs it: `prefect server start` on 127.0.0.1 (temporary
PREFECT_HOME), a `process` work pool, `prefect deploy --all` from prefect.yaml, `prefect worker start`, and the
Prefect UI driven in the system's Chromium by Playwright (no browser download).

- the run form: short (the fields a run changes on top, everything else folded under "Advanced settings"), no two
  fields with one title, and it refuses a bad value at Submit (a zero horizon at its field, a repeated one with
  the API's answer) without creating a run; what it sends when filled in is the config it shows;
- a Custom run of the `retrain` deployment from the UI's form (JSON tab): it checks its input, then waits while
  another run holds its output folder; meanwhile a run with a rule across keys broken fails at once, its state one
  line naming the key; released, the first runs to Completed. Its flow run is named by its target and run id, its
  outputs artifact is the first of its Artifacts tab and lists paths that exist; its report shows its plots;
- a run whose bundle write fails (a file stands where the `bundles` folder must be) leaves `current` where it was,
  is fixed and retried with the UI's Retry button: only the bundle task (and the never-cached
  champion/challenger and promote) runs again, every other task comes back Cached;
- the nightly cron is registered; a nightly run with no candle folder fails at once, in one line;
- the same deploy-and-run against PostgreSQL (Debian's postgresql, started here) as the server's database, with
  the config in the flat shape of config files (accepted beside the form's).

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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from macd_ml.features.synth import synth_market, write_market
from macd_ml.flows.config import ADVANCED, validate_config
from macd_ml.flows.retrain import slot_name

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", ROOT / ".ci" / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# a small run that passes the health gate on the generated market: the pipeline's behaviour, not its models; in
# the run form's shape (flows/config.py: the fields a run changes on top, the rest under "advanced")
SMALL_CONFIG = {
    "target": "ETHUSDT",
    ADVANCED: {
        "folds": {"n_folds": 3},
        "models": {"enabled": ["lgb", "xgb"]},
        "health": {"auc_gates": False, "live_check": False},
    },
}
# the same in the flat shape of config files (and of runs started before the form had its sections)
FLAT_SMALL_CONFIG = {"target": "ETHUSDT", **SMALL_CONFIG[ADVANCED]}
# the form's fields before anything is opened, in order (the few a run changes, then the flow's other parameters)
FORM_TOP = [
    "Run settings",
    "Symbol to predict",
    "Candle folder",
    "Horizons (hours ahead)",
    "Train as of (UTC)",
    "Recompute every stage (ignore the cache)",
    "Output folder (OUT)",
    "Advanced settings",
    "Finish a failed run (its run id)",
    "Require a candle folder",
    "Skip when nothing changed",
]


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

    @staticmethod
    def _send(req: urllib.request.Request | str, timeout: float) -> bytes:
        """One API call, retried while the server answers 503: Prefect's own client does the same, since a busy
        SQLite database (another writer holding the lock) is answered with 503 "retry later", not a failure."""
        for attempt in range(10):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == 9:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def get(self, path: str):
        return json.loads(self._send(self.api + path, timeout=10))

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            self.api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        return json.loads(self._send(req, timeout=30))

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

    def artifacts_shown(self, run_id: str) -> list[dict]:
        """The artifacts the flow run page's Artifacts tab lists, in its order (the UI's own query)."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"not_any_": ["result"]}}, "limit": 50}
        return self.post("/artifacts/filter", body)

    def delete(self, path: str) -> None:
        self._send(urllib.request.Request(self.api + path, method="DELETE"), timeout=30)

    def logs_of(self, run_id: str) -> str:
        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return "\n".join(entry["message"] for entry in logs)

    def hold_slot(self, out: Path) -> str:
        """Hold the output folder ``out`` as a running retrain does (its global concurrency limit, a lease)."""
        name = slot_name(out)
        try:
            self.post("/v2/concurrency_limits/", {"name": name, "limit": 1})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there
                raise
        body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 900}
        return self.post("/v2/concurrency_limits/increment-with-lease", body)["lease_id"]

    def release_slot(self, lease_id: str) -> None:
        req = urllib.request.Request(
            self.api + "/v2/concurrency_limits/decrement-with-lease",
            data=json.dumps({"lease_id": lease_id}).encode(),
            headers={"Content-Type": "application/json"},
        )
        self._send(req, timeout=30)

    def slot(self, out: Path) -> dict:
        return self.get(f"/v2/concurrency_limits/{slot_name(out)}")

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


def _shot_all(page, name: str) -> None:
    """The whole page, as tall as its content (the UI scrolls inside a panel, which full_page does not see)."""
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 50, 16_000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)


def _labels(page) -> list[str]:
    """The form's field labels as drawn, top to bottom, without Prefect's " (Optional)"."""
    return [t.removesuffix(" (Optional)") for t in page.locator(".schema-form-property__label").all_inner_texts()]


def _field(page, title: str):
    """The form field titled ``title`` (the innermost one: a section's field holds its fields' labels too)."""
    label = page.get_by_text(f"{title} (Optional)", exact=True)
    return page.locator(".schema-form-property").filter(has=label).last


def _leaves_run_page(page) -> bool:
    return not page.url.rstrip("/").endswith("/run")


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


def test_ui_form_is_short_titled_and_refuses_bad_values_at_submit(stack, page, candles):
    """What a person sees on the Custom run page: the fields a run changes on top and one folded "Advanced
    settings" (before: 211 fields at once, "Force" and "Stacking" twice each); a bad value refused at Submit, the
    page staying and saying why, no run created; filled in, it sends the config it shows."""
    dep = stack.get("/deployments/name/retrain/retrain")
    assert dep["enforce_parameter_schema"] is True and dep.get("concurrency_limit") is None
    before = {r["id"] for r in stack.runs_of(dep["id"])}
    page.goto(f"{stack.ui}/deployments/deployment/{dep['id']}/run")
    horizons = _field(page, "Horizons (hours ahead)")
    horizons.wait_for()
    assert _labels(page) == FORM_TOP
    _shot_all(page, "form")

    # a zero horizon: refused at its field
    hours = horizons.locator("input")
    assert hours.count() == 3  # 5, 12, 24
    hours.nth(0).fill("0")
    page.get_by_role("button", name="Submit").click()
    horizons.get_by_text("0 is less than the minimum of 1").wait_for(timeout=30_000)
    assert not _leaves_run_page(page)
    _shot(page, "form-refused-zero-horizon")
    # a repeated horizon: refused (the API's schema check answers; the page stays and shows it)
    hours.nth(0).fill("12")
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("has non-unique elements").first.wait_for(timeout=30_000)
    assert not _leaves_run_page(page)
    _shot(page, "form-refused-repeated-horizon")
    assert {r["id"] for r in stack.runs_of(dep["id"])} == before, "a refused form created a run"

    # filled in: the candle folder, a folder of its own, and one setting under Advanced settings -> Folds
    hours.nth(0).fill("5")
    _field(page, "Candle folder").locator("textarea, input").first.fill(str(candles))
    _field(page, "Output folder (OUT)").locator("textarea, input").first.fill(str(stack.base / "out-form"))
    _field(page, "Advanced settings").get_by_role("button", name="Edit", exact=True).first.click()
    folds = _field(page, "Walk-forward folds and holdout")
    folds.get_by_role("button", name="Edit", exact=True).first.click()
    _field(page, "Number of folds").locator("input").first.fill("3")
    opened = _labels(page)
    assert len(opened) > len(FORM_TOP) + 25 and len(set(opened)) == len(opened), opened
    _shot_all(page, "form-advanced-folds")
    stack.cli("work-pool", "pause", "macd-ml")  # what the form sends is the point here, not another run
    try:
        assert _click_until(page, page.get_by_role("button", name="Submit"), lambda: _leaves_run_page(page)), (
            f"the form did not submit:\n{page.inner_text('body')[-600:]}\nfailed UI requests:\n{_failures(page)}"
        )
        (new,) = _wait("the form's run", lambda: [r for r in stack.runs_of(dep["id"]) if r["id"] not in before], 60)
        sent = new["parameters"]["config"]
        assert sent["horizons"] == [5, 12, 24] and sent[ADVANCED]["folds"]["n_folds"] == 3, sent
        assert sent[ADVANCED]["models"] is None  # a section left at "Defaults"
        config = validate_config(sent)
        assert (config.data_dir, config.folds.n_folds, config.models.enabled) == (
            str(candles),
            3,
            ["lgb", "xgb", "lgb_cross", "lstm", "tft"],
        )
        stack.delete(f"/flow_runs/{new['id']}")
    finally:
        stack.cli("work-pool", "resume", "macd-ml")


def _outputs(stack: Stack, run_id: str) -> dict:
    """The flow run's outputs artifact: the only artifact of its own that its Artifacts tab lists (the report's
    belong to a task run; the tab leaves out Prefect's records of results)."""
    own = [a for a in stack.artifacts_shown(run_id) if a.get("task_run_id") is None]
    assert [a["key"] for a in own] == ["macd-ml-ethusdt-outputs"], [(a["key"], a.get("task_run_id")) for a in own]
    return own[0]


def test_ui_custom_run_waits_for_its_folder_completes_and_shows_its_outputs_first(stack, page, candles):
    out = stack.base / "out-ui"
    params = {"config": {**SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}
    lease = stack.hold_slot(out)  # another run is writing this output folder
    try:
        run_id = _custom_run(page, stack, "retrain", params)
        # it checks its input, then waits for the folder, having written nothing and started no task
        _wait("the run to wait for its output folder", lambda: "waiting for its slot" in stack.logs_of(run_id), 240)
        assert stack.task_runs(run_id) == [] and not (out / "runs").exists()
        # meanwhile a run the form cannot refuse (a rule across keys): it fails at once, in one line, not waiting
        bad = json.loads(json.dumps(params))
        bad["config"]["horizons"] = [5, 24]
        bad["config"][ADVANCED]["folds"]["embargo_hours"] = 6
        dep = stack.get("/deployments/name/retrain/retrain")
        fr = stack.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": bad})
        final = stack.wait_final(fr["id"], timeout=180)
        message = final["state"].get("message") or ""
        assert final["state"]["type"] == "FAILED", final["state"]
        assert message.startswith("config key 'folds.embargo_hours': ") and "\n" not in message, message
        assert stack.task_runs(fr["id"]) == [] and "Traceback" not in stack.logs_of(fr["id"])
        assert stack.flow_run(run_id)["state"]["type"] == "RUNNING" and stack.slot(out)["active_slots"] == 1
    finally:
        stack.release_slot(lease)
    run = stack.wait_final(run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.log_tail('worker')}"
    assert (out / "current" / "manifest.json").is_file()
    assert stack.slot(out)["active_slots"] == 0  # released

    # named by what it does: target and run id (the run folder's name)
    current = os.readlink(out / "current").rsplit("/", 1)[-1]
    assert run["name"] == f"ETHUSDT {current}", run["name"]
    page.goto(f"{stack.ui}/runs/flow-run/{run_id}")
    page.get_by_text(run["name"]).first.wait_for(timeout=30_000)
    _shot(page, "ui-run-final")

    # one artifact, first on the Artifacts tab: the run folder, the report, the bundle, current, the decision
    outputs = _outputs(stack, run_id)
    paths = re.findall(r"`([^`]+)`", outputs["data"])
    assert str(out / "runs" / current) in paths and str(out / "bundles" / f"{current}.tar.gz") in paths, paths
    assert all(Path(p).exists() for p in paths), paths
    assert ": promoted" in outputs["description"] and "**Promotion:** promoted" in outputs["data"]
    page.get_by_text("Artifacts", exact=True).first.click()
    cards = page.locator(".flow-run-artifacts a")
    cards.first.wait_for(timeout=30_000)
    assert "outputs" in cards.first.inner_text() or current in cards.first.inner_text(), cards.first.inner_text()
    _shot(page, "ui-run-artifacts")
    page.goto(f"{stack.ui}/artifacts/artifact/{outputs['id']}")
    page.get_by_text(str(out / "runs" / current)).first.wait_for(timeout=30_000)
    _shot(page, "outputs-artifact")
    assert any((out / "bundles").glob("*.tar.gz"))
    assert _report_images_load(page, stack, run_id) >= 3


def test_ui_retry_reruns_only_the_failed_write(stack, page, candles):
    """The same config as a finished run, but a file stands where the bundles folder goes: every stage comes
    back Cached, the bundle write fails; fixed and retried from the UI, only the bundle task runs again."""
    out = stack.base / "out-retry"
    params = {"config": {**SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}
    first = _custom_run(page, stack, "retrain", params)
    assert stack.wait_final(first)["state"]["type"] == "COMPLETED"

    current = os.readlink(out / "current")
    shutil.rmtree(out / "bundles")
    (out / "bundles").write_text("not a folder")
    run_id = _custom_run(page, stack, "retrain", params)
    failed = stack.wait_final(run_id)
    assert failed["state"]["type"] == "FAILED", failed["state"]
    states = _states(stack, run_id)
    assert states.get("bundle") == "Failed", states
    assert {s for n, s in states.items() if n != "bundle"} <= {"Cached", "Completed"}, states
    # the bundle is written before current moves: a failed bundle write never moved it
    assert "promote" not in states and os.readlink(out / "current") == current
    assert ": failed" in _outputs(stack, run_id)["description"]

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
    assert again["bundle"] == "Completed" and len(again) == len(states) + 1  # + promote, never reached before
    assert any((out / "bundles").glob("*.tar.gz"))
    assert ": promoted" in _outputs(stack, run_id)["description"]  # the same artifact, rewritten by the Retry


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
    message = final["state"].get("message") or ""
    assert "macd_ml_data_dir" in message and "\n" not in message, final["state"]
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
            {"parameters": {"config": {**FLAT_SMALL_CONFIG, "data_dir": str(candles), "out_dir": str(out)}}},
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

"""Shared fixtures: a session-wide Prefect test server, real-data location, small synthetic markets."""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import pytest

# The helpers here are imported as ``tests.cliutil``, ``tests.flowutil``...: the folder is registered as the
# package ``tests`` without putting the repository root on sys.path, where its macd_ml/ would shadow a copy of the
# package first on PYTHONPATH (tests/mutations.py runs with PYTHONSAFEPATH=1, so nothing else adds the root).
if "tests" not in sys.modules:
    _tests = types.ModuleType("tests")
    _tests.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules["tests"] = _tests

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MACD_ML_WRITE_RETRY_BASE", "0.01")  # fast back-off in tests (in-place write retries)
os.environ.setdefault("MACD_ML_RETRY_BACKOFF_S", "0.05")  # and between Prefect's task retries
# the signing key of cache records and manifests: one per test session, outside every output folder
_KEYS = tempfile.mkdtemp(prefix="macd-ml-key-")
os.environ.setdefault("MACD_ML_KEY_FILE", os.path.join(_KEYS, "signing.key"))
# the Ed25519 publishing key bundles are signed with (its public key beside it), and what a bot has seen
os.environ.setdefault("MACD_ML_PUBLISH_KEY_FILE", os.path.join(_KEYS, "publish-ed25519.pem"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_KEYS, "cache"))

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "binance_spot_1h"


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "ETHUSDT_1h.csv").is_file():
        pytest.skip(f"real candles not found at {REAL_DATA} (they live in ../shared/data next to the repo)")
    return REAL_DATA


@pytest.fixture(scope="session")
def prefect_server():
    """One ephemeral Prefect API (SQLite) for the whole session; start-up costs several seconds.

    Its event services that no test here reads (automations, their actions, the event history) are off: they
    take about a quarter of the server's CPU. Task runs' states still reach the API (the task run recorder stays
    on). The end-to-end module starts its own servers with everything on."""
    from prefect.testing.utilities import prefect_test_harness

    for service in ("TRIGGERS", "ACTIONS", "EVENT_PERSISTER"):
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def market(tmp_path_factory) -> Path:
    """A 3,000 h market for end-to-end runs that are about the pipeline's behaviour, not its models."""
    from macd_ml.features.synth import synth_market, write_market

    d = tmp_path_factory.mktemp("trust-market")
    write_market(synth_market(hours=3_000, seed=5, gaps=1), d)
    return d


@pytest.fixture(scope="session")
def small_market_dir(tmp_path_factory) -> Path:
    """A small deterministic synthetic market on disk (3 symbols, planted signal, 2 gaps)."""
    from macd_ml.features.synth import synth_market, write_market

    d = tmp_path_factory.mktemp("small-market")
    write_market(synth_market(hours=4_000, seed=11, gaps=2), d)
    return d


# modules whose flow runs cost the most CPU (a minute or more each on 2 cores), longest first
LONGEST_FIRST = ("test_training_flow", "test_faults", "test_blindness")


def pytest_collection_modifyitems(config, items):
    """Every test that runs the flow on a Prefect server is an end-to-end run: marked ``slow`` (make test-fast
    leaves them out; make test runs them).

    Modules with flow runs are also moved to the front, the longest (measured: ``LONGEST_FIRST``) first, then by
    their number of flow tests: pytest-xdist hands whole modules to its workers in collection order (``--dist
    loadfile``), so the long modules start at once and the many quick ones fill the workers' ends, instead of one
    long module alone at the end of the suite. Only the order changes, never what runs."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    slow_per_module: dict[str, int] = {}
    for item in items:
        slow_per_module.setdefault(item.path.stem, 0)
        if item.get_closest_marker("slow") is not None:
            slow_per_module[item.path.stem] += 1
    order = {name: i for i, name in enumerate(slow_per_module)}

    def rank(item) -> tuple:
        name = item.path.stem
        first = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return (first, -slow_per_module[name], order[name])

    items.sort(key=rank)

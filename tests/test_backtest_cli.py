"""``macd-ml backtest``: a run's holdout backtest reproduced from its bundle, spans it trained on refused, and the
chain of promoted runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macd_ml.artifacts import store
from tests.cliutil import cli

pytestmark = pytest.mark.usefixtures("prefect_server")

HOURS, CUT_A, CUT_B = 4_000, 3_300, 3_650
FAST = [
    "--set",
    "folds.n_folds=3",
    "--set",
    'models.enabled=["lgb","xgb"]',
    "--set",
    "backtest.bootstrap=200",
]


def _prefix(src: Path, dest: Path, rows: int) -> Path:
    """The first ``rows`` bars of every symbol file: the data a run had on an earlier night."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        lines = f.read_text().splitlines(keepends=True)
        (dest / f.name).write_text("".join(lines[: rows + 1]))
    return dest


@pytest.fixture(scope="module")
def nights(tmp_path_factory, prefect_server):
    """Two promoted runs on two nights' data (the second forced over the first), and the full data after them."""
    from macd_ml.features.synth import synth_market, write_market

    base = tmp_path_factory.mktemp("bt")
    full = base / "full"
    write_market(synth_market(hours=HOURS, seed=11), full)
    out = base / "out"
    runs = []
    for cut in (CUT_A, CUT_B):
        data = _prefix(full, base / f"night{cut}", cut)
        code, _, err = cli("retrain", "--data", str(data), "--out", str(out), *FAST, "--set", "promotion.force=true")
        assert code == 0, err
        runs.append((data, out / "runs" / store.current_run(out)))
    return full, out, runs


def test_the_bundle_reproduces_the_runs_own_holdout_backtest(nights, tmp_path):
    """Scored again from raw candles by ensemble.onnx (the bot's path), the holdout gives the flow's figures."""
    _, out, runs = nights
    data, run = runs[0]
    recorded = json.loads((run / "backtest.json").read_text())
    bundle = next((out / "bundles").glob(f"{run.name}.tar.gz"))
    for source in (run, bundle):
        result = tmp_path / f"{source.name}.json"
        code, text, err = cli("backtest", str(source), "--data", str(data), "--result", str(result))
        assert code == 0, err
        got = json.loads(result.read_text())
        assert (got["first"], got["last"], got["threshold"]) == (
            recorded["first"],
            recorded["last"],
            recorded["threshold"],
        )
        for name, v in recorded["variants"].items():
            assert got["variants"][name]["trades"] == v["trades"], name
            assert got["variants"][name]["sharpe"] == pytest.approx(v["sharpe"], abs=1e-6), name
        assert "MACD long/flat, gated" in text


def test_a_span_the_run_trained_on_is_refused(nights):
    _, _, runs = nights
    data, run = runs[0]
    holdout_first = json.loads((run / "metrics.json").read_text())["holdout"]["first"]
    code, _, err = cli("backtest", str(run), "--data", str(data), "--since", "2020-01-01T00:00")
    assert code == 3 and "would score bars it learned from" in err and holdout_first[:10] in err


def test_a_later_span_of_new_data_is_backtested(nights, tmp_path):
    full, _, runs = nights
    _, run = runs[0]
    code, _, err = cli("backtest", str(run), "--data", str(full), "--result", str(tmp_path / "r.json"))
    assert code == 0, err
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["bars"] > HOURS - CUT_A  # the holdout and every bar after the run's data


def test_the_chain_switches_to_each_promoted_run_after_its_data(nights, tmp_path):
    full, out, runs = nights
    png = tmp_path / "chain.png"
    code, text, err = cli(
        "backtest", "--chain", str(out), "--data", str(full), "--result", str(tmp_path / "c.json"), "--plot", str(png)
    )
    assert code == 0, err
    got = json.loads((tmp_path / "c.json").read_text())
    segs = got["segments"]
    assert [s["run_id"] for s in segs] == [r.name for _, r in runs]
    ends = [json.loads((r / "metrics.json").read_text())["input"]["span"]["ETHUSDT"][1] for _, r in runs]
    assert segs[0]["first"] > ends[0] and segs[0]["last"] == ends[1]  # run A until run B's data ends
    assert segs[1]["first"] > ends[1]  # then run B, to the newest bar
    assert sum(s["bars"] for s in segs) == got["bars"] == HOURS - CUT_A
    assert png.stat().st_size > 1000 and "run " + runs[1][1].name in text

"""Many retrains at once (docs/walkforward.md): cutoffs that share one feature table, a walk-forward on two Dask
worker processes whose stitched track record equals replaying each segment by hand, an extension by new candles
that trains only the new cutoff, and a fleet in which one target's bad data never stops the others."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.features.build import build_features, table_until
from macd_ml.features.ingest import Candles, Market
from macd_ml.features.spec import FeatureSpec
from macd_ml.features.synth import synth_market, write_market
from macd_ml.flows.children import Failure, exit_code
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.walkforward import WalkForwardSpec, cutoffs
from tests.flowutil import lenient

HOURS = 4_000  # 2022-01-01 .. 2022-06-16
START = datetime(2022, 4, 20, tzinfo=UTC)
OLD_END = datetime(2022, 5, 26, tzinfo=UTC)  # the candles of the first walk-forward end here


def _mem(frames: dict[str, pl.DataFrame], file: str = "v1") -> Market:
    """The market as if read from files whose sha256 is ``file`` (another version of a file: another sha)."""

    def c(sym: str) -> Candles:
        return Candles(sym, None, f"{file}-{sym}", frames[sym])

    return Market(c("ETHUSDT"), (c("BTCUSDT"),))


# --------------------------------------------------------------------------------------------- pure parts


def test_a_cutoff_slices_the_whole_table_and_names_its_content():
    """Every cutoff's table is the whole table's prefix, equal to building on the cut candles (gaps included);
    a cut's fingerprint follows its content, so candles appended later leave it as it was."""
    frames = synth_market(symbols=("ETHUSDT", "BTCUSDT"), hours=2_500, seed=11, gaps=3)
    whole = _mem(frames)
    table = build_features(whole)
    ts = whole.target.frame["timestamp"]
    for i in (400, 1_200, len(ts) - 30, len(ts) - 1):
        cut = whole.until(ts[i])
        assert cut.target.frame["timestamp"][-1] == ts[i] and cut.cross[0].frame["timestamp"][-1] <= ts[i]
        sliced = table_until(table, cut, FeatureSpec(), 1)
        built = build_features(cut)
        assert sliced.frame.equals(built.frame) and sliced.fingerprint == built.fingerprint
    shorter = _mem({s: f.head(2_000) for s, f in frames.items()}, "v0")  # the same files, 500 hours shorter
    t = ts[1_500]
    assert shorter.until(t).fingerprint() == whole.until(t).fingerprint()
    assert whole.until(ts[1_501]).fingerprint() != whole.until(t).fingerprint()
    with pytest.raises(Exception, match="no ETHUSDT candle at or before the cutoff"):
        whole.until(ts[0] - timedelta(hours=1))


def test_cutoffs_every_step_while_a_bar_is_left():
    first, last = datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 6, 16, 15, tzinfo=UTC)
    got = cutoffs(WalkForwardSpec(every="30d", start="2022-04-20"), first, last)
    assert got == [datetime(2022, 4, 20, tzinfo=UTC), datetime(2022, 5, 20, tzinfo=UTC)]
    assert len(cutoffs(WalkForwardSpec(every="1w", start="2022-04-20", end="2022-05-04"), first, last)) == 3
    assert len(cutoffs(WalkForwardSpec(every="7d"), first, last)) == 12  # default: 12 back from the newest bar
    for bad in ("0d", "30", "2m", "d"):
        with pytest.raises(ValueError, match="every"):
            WalkForwardSpec(every=bad)
    with pytest.raises(Exception, match="not after the first bar"):
        cutoffs(WalkForwardSpec(start="2021-01-01"), first, last)


def test_the_worst_child_decides_the_exit_code():
    def row(status):
        return Failure(name=status, target="X", status=status, detail="")

    assert exit_code([row("promoted"), row("promoted")]) == 0
    assert exit_code([row("promoted"), row("refused")]) == 3
    assert exit_code([row("refused"), row("bad-input")]) == 2
    assert exit_code([row("bad-input"), row("failed"), row("promoted")]) == 1


def test_the_pool_averages_targets_hour_by_hour_with_shared_blocks():
    from macd_ml.serving.track_record import pool

    rng = np.random.default_rng(3)
    hours = [f"2023-01-01T{h:02d}:00:00+00:00" for h in range(24)] + [
        f"2023-01-{d:02d}T{h:02d}:00:00+00:00" for d in range(2, 30) for h in range(24)
    ]

    def record(shift: float, n: int):
        returns = {v: rng.normal(shift, 0.01, n) for v in ("buy_and_hold", "ungated_long_flat", "gated_long_flat")}
        return {"timestamps": hours[:n], "equity": {v: np.cumprod(1 + r).tolist() for v, r in returns.items()}}, returns

    a, ra = record(0.001, len(hours))
    b, rb = record(-0.001, len(hours) - 48)  # ends two days earlier: the pool covers the hours both have
    got = pool({"A": a, "B": b}, block_hours=24, draws=200, seed=0)
    assert got["bars"] == len(hours) - 48 and got["targets"] == ["A", "B"]
    mean = (ra["gated_long_flat"][: got["bars"]] + rb["gated_long_flat"]) / 2
    np.testing.assert_allclose(
        np.diff(np.concatenate([[1.0], got["equity"]["gated_long_flat"]]))
        / np.concatenate([[1.0], got["equity"]["gated_long_flat"][:-1]]),
        mean,
        rtol=1e-9,
    )
    lo, hi = got["gated_minus_ungated"]["long_flat"]["sharpe_interval"]
    assert lo < got["gated_minus_ungated"]["long_flat"]["sharpe"] < hi
    same = pool({"A": a, "B": a}, block_hours=24, draws=200, seed=0)
    assert same["variants"]["gated_long_flat"]["sharpe"] == pytest.approx(
        pool({"A": a}, 24, 200, 0)["variants"]["gated_long_flat"]["sharpe"]
    )


def test_a_fleet_destination_names_its_targets_and_a_plain_one_does_not(tmp_path):
    from macd_ml.errors import ConfigError
    from macd_ml.serving.fleet import INDEX, resolve, target_dest

    plain, fleet = tmp_path / "plain", tmp_path / "fleet"
    plain.mkdir(), fleet.mkdir()
    (fleet / INDEX).write_text(json.dumps({"targets": ["ethusdt", "SOLUSDT"]}))
    assert resolve(str(plain), None) == [(None, str(plain))]
    assert resolve(str(fleet), "solusdt") == [("SOLUSDT", target_dest(str(fleet), "SOLUSDT"))]
    assert [t for t, _ in resolve(str(fleet), None)] == ["ETHUSDT", "SOLUSDT"]
    with pytest.raises(ConfigError, match="plain destination"):
        resolve(str(plain), "ETHUSDT")
    with pytest.raises(ConfigError, match="not in the fleet"):
        resolve(str(fleet), "BTCUSDT")
    (fleet / INDEX).write_text("{}")
    with pytest.raises(Exception, match="not a fleet index"):
        resolve(str(fleet), None)


def test_the_commands_take_workers_and_refuse_a_fleet_without_targets():
    from macd_ml.flows.cli import build_parser
    from macd_ml.flows.cli.many import fan_out_update
    from tests.cliutil import cli

    args = build_parser().parse_args(["walkforward", "--workers", "3", "--since", "2023-01-01", "--every", "7d"])
    assert fan_out_update(args) == ["fan_out.runner=dask", "fan_out.dask_workers=3"]
    assert (args.first, args.every, args.profile) == ("2023-01-01", "7d", "light")
    r = cli("fleet")
    assert r.code == 2 and "targets" in r.err
    r = cli("walkforward", "--every", "30", "--since", "2023-01-01")
    assert r.code == 2 and "every" in r.err


def test_a_target_that_is_a_cross_symbol_leaves_its_own_cross_block(tmp_path):
    from macd_ml.flows.fleet import child_config as fleet_child
    from macd_ml.flows.walkforward import child_config as walk_child

    config = RetrainConfig.model_validate({"cross": ["BTCUSDT"], "out_dir": str(tmp_path)})
    assert fleet_child(config, "BTCUSDT", "d", tmp_path).cross_symbols() == []
    assert fleet_child(config, "ETHUSDT", "d", tmp_path).cross_symbols() == ["BTCUSDT"]
    walk = walk_child(config, WalkForwardSpec(), "BTCUSDT", START, tmp_path)
    assert walk.cross_symbols() == [] and walk.until == START and walk.models.enabled == ["lgb", "xgb"]
    assert Path(walk.run_home).parts[-4:-2] == ("walkforward", "BTCUSDT")


@pytest.mark.usefixtures("prefect_server")
def test_the_retrain_flow_refuses_a_watchlist_and_names_the_fleet(tmp_path):
    from macd_ml.errors import ConfigError
    from macd_ml.flows.retrain import retrain

    config = RetrainConfig.model_validate({"targets": ["ETHUSDT", "SOLUSDT"], "out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="fleet"):
        retrain(config)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------- the flows


def _config(data: Path, out: Path, **fan_out) -> RetrainConfig:
    config = RetrainConfig.model_validate(
        {
            "data_dir": str(data),
            "out_dir": str(out),
            "folds": {"n_folds": 3},
            "fan_out": fan_out or {"runner": "threads"},
        }
    )
    return lenient(config)


def _children(report: Path) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads((report / "children.json").read_text())}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    frames = synth_market(symbols=("ETHUSDT", "BTCUSDT", "SOLUSDT"), hours=HOURS, seed=21, gaps=1)
    root = tmp_path_factory.mktemp("walk")
    old = {s: f.filter(pl.col("timestamp") < OLD_END) for s, f in frames.items()}
    write_market(old, root / "data")
    return root, frames


@pytest.mark.usefixtures("prefect_server")
def test_walkforward_on_two_workers_then_extended_trains_only_the_new_cutoff(market):
    pytest.importorskip("prefect_dask")
    from macd_ml.flows.walkforward import walkforward
    from macd_ml.serving.backtest import Source, backtest_span

    root, frames = market
    data, out = root / "data", root / "out"
    walk = WalkForwardSpec(every="15d", start=START)
    state = walkforward(_config(data, out, runner="dask", dask_workers=2), walk, return_state=True)
    report = Path(state.result())
    children = _children(report)
    assert list(children) == ["ETHUSDT@2022-04-20T00:00", "ETHUSDT@2022-05-05T00:00", "ETHUSDT@2022-05-20T00:00"]
    assert {c["status"] for c in children.values()} == {"promoted"}
    workers = {c["worker"] for c in children.values()}
    assert len(workers) == 2, f"the children ran in {workers}, not on two worker processes"

    # each child saw only the bars up to its cutoff: features, labels (masked where the horizon passes it), span
    for c in children.values():
        run, until = Path(c["run"]["path"]), datetime.fromisoformat(c["until"])
        feats = pl.read_parquet(run / "features.parquet")
        labels = pl.read_parquet(run / "labels.parquet")
        assert feats["timestamp"].max() <= until and feats.height > 2_000
        for h in (5, 12, 24):
            late = labels.filter(pl.col("timestamp") > until - timedelta(hours=h))
            assert late.height >= h - 1 and late[f"y_{h}"].null_count() == late.height, f"h={h} labels pass the cutoff"
        metrics = json.loads((run / "metrics.json").read_text())
        assert datetime.fromisoformat(metrics["input"]["span"]["ETHUSDT"][1]) <= until

    # the stitched record is each segment replayed by hand (`macd-ml backtest RUN --since --until`)
    record = json.loads((report / "track_record.json").read_text())["targets"]["ETHUSDT"]
    segments = record["segments"]
    assert [s["run_id"] for s in segments] == [Path(c["run"]["path"]).name for c in children.values()]
    for seg, c in zip(segments, children.values()):
        source = Source.load(c["run"]["path"])
        assert datetime.fromisoformat(seg["first"]) > max(source.data_last, datetime.fromisoformat(c["until"]))
        by_hand = backtest_span(source, str(data), seg["first"], seg["last"])
        assert by_hand["bars"] == seg["bars"]
        v = by_hand["variants"]
        assert (seg["trades_ungated"], seg["trades_gated"]) == (
            v["ungated_long_flat"]["trades"],
            v["gated_long_flat"]["trades"],
        )
        assert seg["sharpe_gated"] == pytest.approx(v["gated_long_flat"]["sharpe"], abs=1e-12)
    assert record["bars"] == sum(s["bars"] for s in segments)
    assert (report / "equity_ETHUSDT.png").stat().st_size > 10_000
    assert "gated - ungated" in (report / "track_record.md").read_text()
    assert "![equity ETHUSDT](equity_ETHUSDT.png)" in (report / "track_record.md").read_text()
    assert "](data:image/png;base64," in _artifact("walkforward-track-record")  # the UI serves no files

    # a refused cutoff leaves the bot on the model it had; before any model shipped there is nothing to gate with
    from macd_ml.flows.children import ChildResult
    from macd_ml.flows.walkforward import plan, record_of

    config = _config(data, out)
    planned = plan(config, walk, str(data), out)
    rows = [ChildResult.model_validate(c) for c in children.values()]
    refused = [rows[0], rows[1].model_copy(update={"status": "refused"}), rows[2]]
    doc = record_of(planned, refused, config, out)
    assert [s["run_id"] for s in doc["targets"]["ETHUSDT"]["segments"]] == [rows[0].run.run_id] * 2 + [
        rows[2].run.run_id
    ]
    doc = record_of(planned, [rows[0].model_copy(update={"status": "refused"}), *rows[1:]], config, out)
    assert doc["untraded"] == {"ETHUSDT": [rows[0].name]}
    assert doc["targets"]["ETHUSDT"]["first"] > rows[1].until.isoformat()

    # the same walk-forward again, in threads this time: every child comes back from the cache (its row still names
    # the Dask worker that ran it, and its time), and no fit is made (no new folder of fold or refit results)
    def fits() -> set[Path]:
        return {d for stage in ("oof", "models") for d in (out / "cache" / stage).iterdir()}

    before = fits()
    again = walkforward(_config(data, out), walk, return_state=True)
    assert _children(Path(again.result())) == children
    assert fits() == before

    # a month of new candles: one more cutoff trains; the earlier ones publish the runs they published
    write_market(frames, data)
    extended = walkforward(_config(data, out), walk, return_state=True)
    new = _children(Path(extended.result()))
    assert list(new)[:3] == list(children) and len(new) == 4
    for name, c in children.items():
        assert new[name]["run"]["path"] == c["run"]["path"], f"{name} retrained on the appended candles"
    made = fits() - before  # the new cutoff's fits only: 3 folds and a refit of each of the light profile's models
    assert sorted(d.parent.name for d in made) == ["models"] * 3 + ["oof"] * 9, made


def _artifact(key: str) -> str:
    """The newest markdown artifact under ``key`` on the test API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return str(max(found, key=lambda a: a.created).data)


@pytest.mark.heavy  # a fleet of two full-profile retrains, a resume, publish and a bot reading the watchlist
@pytest.mark.usefixtures("prefect_server")
def test_a_fleet_target_with_bad_data_never_stops_the_others_and_a_rerun_runs_only_it(market, tmp_path):
    from macd_ml.flows.children import ChildrenFailed
    from macd_ml.flows.fleet import fleet, fleet_home

    _, frames = market
    data, out = tmp_path / "data", tmp_path / "out"
    short = {s: f.head(3_000) for s, f in frames.items()}
    write_market(short, data)
    sol = data / "SOLUSDT_1h.csv"
    good = sol.read_text()
    lines = good.splitlines()
    lines[1500] = lines[1500].rsplit(",", 1)[0] + ",-5"  # a negative volume
    sol.write_text("\n".join(lines) + "\n")

    config = _config(data, out)
    plots = config.report.model_copy(update={"plots": True})  # the fleet's plot (and the runs')
    config = config.model_copy(update={"targets": ["ETHUSDT", "SOLUSDT"], "report": plots})
    state = fleet(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(ChildrenFailed) as err:
        state.result()
    assert err.value.code == 2
    report = Path(err.value.report)
    rows = _children(report)
    assert rows["ETHUSDT"]["status"] == "promoted" and rows["SOLUSDT"]["status"] == "bad-input"
    assert "SOLUSDT_1h.csv" in rows["SOLUSDT"]["detail"] and "volume" in rows["SOLUSDT"]["detail"]
    assert (fleet_home(out, "ETHUSDT") / "current").exists() and not (fleet_home(out, "SOLUSDT") / "current").exists()
    assert "| SOLUSDT | bad-input |" in (report / "fleet.md").read_text()
    assert (report / "fleet.png").stat().st_size > 5_000 and "](data:image/png;base64," in _artifact("fleet-report")

    sol.write_text(good)  # fixed: `macd-ml resume REPORT_DIR` runs the same fleet again: SOLUSDT only
    from tests.cliutil import cli

    r = cli("resume", report)
    assert r.code == 0, r.err
    assert "| SOLUSDT | promoted |" in r.out and f"report: {report}" in r.out
    again = _children(report)
    assert again["ETHUSDT"] == rows["ETHUSDT"], "ETHUSDT ran again (a cached child keeps its row, time included)"
    rows = again
    assert rows["SOLUSDT"]["status"] == "promoted"
    assert Path(rows["SOLUSDT"]["run"]["path"]).parent.parent == fleet_home(out, "SOLUSDT")
    bundles = sorted((fleet_home(out, "SOLUSDT") / "bundles").glob("*.tar.gz"))
    assert len(bundles) == 1
    # what the fleet publishes: one destination per target, and a bot reading one target or its whole watchlist
    dest = tmp_path / "dest"
    r = cli("publish", "--fleet", out, "--to", dest)
    assert r.code == 0, r.err
    assert json.loads((dest / "fleet.json").read_text()) == {"targets": ["ETHUSDT", "SOLUSDT"]}
    r = cli("predict", "--from", dest, "--data", data, "--last", "2", "--state", tmp_path / "bot")
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert [x["target"] for x in lines] == ["ETHUSDT", "ETHUSDT", "SOLUSDT", "SOLUSDT"]
    r = cli("fetch", "--from", dest, "--target", "SOLUSDT", "--to", tmp_path / "sol.tar.gz", "--state", tmp_path / "b2")
    assert r.code == 0 and rows["SOLUSDT"]["run"]["path"].endswith(r.out.split("run ")[1].split(",")[0]), r.out + r.err
    r = cli("fetch", "--from", dest, "--to", tmp_path / "x.tar.gz")
    assert r.code == 2 and "fleet of 2 targets: name one with --target" in r.err
    r = cli("predict", "--from", dest, "--target", "DOGEUSDT", "--data", data)
    assert r.code == 2 and "not in the fleet" in r.err


@pytest.mark.heavy  # two retrains on mirrored markets
@pytest.mark.usefixtures("prefect_server")
def test_a_cutoff_run_is_blind_to_every_bar_after_its_cutoff(market, tmp_path):
    """The walk-forward's leak net, on the whole retrain flow: a run cut at T on a market and on the same market
    mirrored from the bar after T on (every later return flips sign, tests/mirror.py) publishes byte-identical
    files: no stage (features, labels, folds, fits, stack, backtest, drift, export, the health gate's live check,
    the report) reads a bar after its cutoff."""
    from macd_ml.flows.retrain import retrain
    from tests.mirror import mirror_market

    _, frames = market
    cut = START + timedelta(days=10)
    write_market(frames, tmp_path / "a")
    write_market(mirror_market(frames, cut + timedelta(hours=1)), tmp_path / "b")
    runs = {}
    for name in ("a", "b"):
        config = _config(tmp_path / name, tmp_path / f"out-{name}").model_copy(update={"until": cut})
        light = config.models.model_copy(update={"enabled": ["lgb", "xgb"]})
        runs[name] = Path(retrain(config.model_copy(update={"models": light})))
    files = {
        n: {str(p.relative_to(r)): p.read_bytes() for p in sorted(r.rglob("*")) if p.is_file()} for n, r in runs.items()
    }
    assert len(files["a"]) > 30 and files["a"].keys() == files["b"].keys()
    # the documents name the data folder and the run id; timings are wall-clock seconds
    documents = {"config.json", "manifest.json", "metrics.json", "promotion.json", "timings.json"}
    differ = sorted(k for k in files["a"] if files["a"][k] != files["b"][k] and k not in documents)
    assert differ == [], f"these read bars after the cutoff: {differ}"
    ma, mb = (json.loads(files[n]["metrics.json"]) for n in "ab")
    for m in (ma, mb):
        m.pop("run_id"), m["input"].pop("data_dir")
    assert ma == mb
    pa, pb = (json.loads(files[n]["promotion.json"]) for n in "ab")
    assert {k: v for k, v in pa.items() if k != "challenger"} == {k: v for k, v in pb.items() if k != "challenger"}
    # and the mirror did move the bars after the cutoff
    fa, fb = (pl.read_csv(tmp_path / n / "ETHUSDT_1h.csv") for n in "ab")
    assert not fa.equals(fb) and fa.head(2_000).equals(fb.head(2_000))

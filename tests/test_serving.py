"""The second half of the DAG, part 2: bundles, publish and rollback, scoring with fallbacks, shadow
mode and the shadow report."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from macd_ml.artifacts import store
from macd_ml.features.ingest import load_market
from macd_ml.serving import BundleError, InsufficientData, Scorer, read_bundle
from macd_ml.serving.bundle import build_bundle
from macd_ml.serving.publish import fetch_latest, publish, read_pointer, rollback
from macd_ml.serving.shadow import Targets, report
from tests.cliutil import cli, spawn
from tests.conftest import real_data_or_skip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(market, tmp_path_factory, prefect_server):
    """A promoted run with trees on the target's own features (lgb, xgb) and an LSTM on all features."""
    out = tmp_path_factory.mktemp("serving-out")
    code, _, err = cli(
        "retrain",
        "--data",
        str(market),
        "--out",
        str(out),
        "--set",
        "folds.n_folds=3",
        "--set",
        'models.enabled=["lgb","xgb","lstm"]',
        "--set",
        "models.lstm.max_epochs=2",
        "--set",
        "models.lstm.max_train_rows=1500",
    )
    assert code == 0, err
    return out, out / "runs" / store.current_run(out)


@pytest.fixture(scope="module")
def bundle_bytes(run) -> bytes:
    return build_bundle(run[1])


# --------------------------------------------------------------------------------------------- bundles


@pytest.mark.usefixtures("prefect_server")
def test_bundle_is_reproducible_and_verified(run, bundle_bytes, tmp_path):
    out, folder = run
    assert build_bundle(folder) == bundle_bytes, "the same run gives the same bytes"
    b = read_bundle(bundle_bytes)
    assert b.run_id == folder.name
    assert {
        "onnx/ensemble.onnx",
        "meta.json",
        "features.json",
        "manifest.json",
        "metrics.json",
        "health.json",
        "report.md",
        "models/lgb/lgb_h5.txt",
        "onnx/lstm.onnx",
    } <= set(b.members)
    code, stdout, _ = cli("bundle", str(folder), "--to", str(tmp_path / "b.tar.gz"))
    assert code == 0 and (tmp_path / "b.tar.gz").read_bytes() == bundle_bytes
    assert store.sha256_file(tmp_path / "b.tar.gz") in stdout
    flow_bundle = out / "bundles" / f"{folder.name}.tar.gz"
    assert flow_bundle.read_bytes() == bundle_bytes, "the flow bundles the promoted run"


def _rewrite(bundle: bytes, edit) -> bytes:
    """Re-pack a bundle's members through ``edit(name, data) -> [(name, data, kind)]``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as src, tarfile.open(fileobj=raw, mode="w:gz") as dst:
        for info in src:
            data = src.extractfile(info).read()
            for name, payload, kind in edit(info.name, data):
                new = tarfile.TarInfo(name)
                if kind == "link":
                    new.type, new.linkname = tarfile.SYMTYPE, "/etc/passwd"
                else:
                    new.size = len(payload)
                dst.addfile(new, io.BytesIO(payload) if kind != "link" else None)
    return raw.getvalue()


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    "case,match",
    [
        ("tampered", "models/lgb/lgb_h5.txt does not match its sha256"),
        ("dotdot", "escapes the bundle folder"),
        ("absolute", "escapes the bundle folder"),
        ("link", "link or special file"),
        ("extra", "not listed in bundle.json"),
    ],
)
def test_unsafe_or_tampered_bundles_are_refused(case, match, bundle_bytes, tmp_path):
    def edit(name, data):
        if case == "tampered" and name == "bundle/models/lgb/lgb_h5.txt":
            return [(name, data.replace(b"leaf_value", b"leaf_valuf", 1), "file")]
        extra = {
            "dotdot": ("bundle/../../evil.txt", b"x", "file"),
            "absolute": ("/tmp/evil.txt", b"x", "file"),
            "link": ("bundle/onnx/evil", b"", "link"),
            "extra": ("bundle/evil.py", b"import os", "file"),
        }
        if name == "bundle/meta.json" and case in extra:
            return [(name, data, "file"), extra[case]]
        return [(name, data, "file")]

    bad = _rewrite(bundle_bytes, edit)
    with pytest.raises(BundleError, match=match):
        read_bundle(bad)
    (tmp_path / "bad.tar.gz").write_bytes(bad)
    code, _, err = cli("predict", "--bundle", str(tmp_path / "bad.tar.gz"), "--data", str(tmp_path))
    assert code == 3 and "refused" in err, err
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


# --------------------------------------------------------------------------------------------- publish, rollback


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("where", ["folder", "memory"])
def test_publish_is_atomic_keeps_n_and_rolls_back(where, bundle_bytes, tmp_path):
    dest = str(tmp_path / "dest") if where == "folder" else f"memory://macd-ml-pub-{tmp_path.name}"
    # three distinct, valid bundles: the real one and two copies whose manifest and index name another run
    bundles = [bundle_bytes, _variant(bundle_bytes, 0), _variant(bundle_bytes, 1)]
    publish(bundles[0], dest, keep=2)
    seen: list[bytes] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(fetch_latest(dest))
            except Exception as exc:  # pragma: no cover - the assertion reports it
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for b in bundles[1:] * 3:
        publish(b, dest, keep=2)
    stop.set()
    t.join()
    assert not errors and seen and all(s in bundles for s in seen), "a reader saw a partial or unknown bundle"
    pointer = read_pointer(dest)
    assert pointer["sha256"] == hashlib.sha256(bundles[2]).hexdigest()
    import fsspec

    fs, root = fsspec.core.url_to_fs(dest)
    kept = [p for p in fs.ls(f"{root.rstrip('/')}/bundles", detail=False) if p.endswith(".tar.gz")]
    assert len(kept) == 2, kept
    back = rollback(dest)
    assert fetch_latest(dest) == bundles[1] and back["rolled_back_from"]["bundle"] == pointer["bundle"]
    with pytest.raises(BundleError, match="no earlier bundle"):
        rollback(dest)

    # the same through the CLI
    (tmp_path / "c.tar.gz").write_bytes(bundles[0])
    code, stdout, err = cli("publish", str(tmp_path / "c.tar.gz"), "--to", dest, "--keep", "2")
    assert code == 0 and fetch_latest(dest) == bundles[0], err
    code, stdout, err = cli("rollback", "--to", dest)
    assert code == 0 and fetch_latest(dest) == bundles[1] and "rolled back from" in stdout, err


class _Killed(BaseException):
    """A publisher that dies mid-write (nothing of the publish's own code runs after it)."""


@pytest.mark.usefixtures("prefect_server")
def test_a_publish_killed_mid_write_leaves_the_pointer_on_a_complete_bundle(bundle_bytes, tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    dest = str(tmp_path / "dest")
    old, new = bundle_bytes, _variant(bundle_bytes, 0)
    publish(old, dest)
    real_pipe = LocalFileSystem.pipe_file

    def dies_halfway(self, path, value, **kwargs):
        Path(path).write_bytes(value[: len(value) // 2])
        raise _Killed

    monkeypatch.setattr(LocalFileSystem, "pipe_file", dies_halfway)
    with pytest.raises(_Killed):
        publish(new, dest)
    monkeypatch.setattr(LocalFileSystem, "pipe_file", real_pipe)
    # a bot that looks now gets the old bundle, complete; no file under a bundle's name is partial
    assert fetch_latest(dest) == old
    for path in (tmp_path / "dest" / "bundles").glob("*.tar.gz"):
        read_bundle(path.read_bytes())
    # and publishing again puts the whole new bundle there
    publish(new, dest)
    assert fetch_latest(dest) == new


def _repack(members: dict[str, bytes], sign: bool = True) -> bytes:
    """A bundle of these members with a consistent index (what someone rewriting a bundle would do), signed with
    this machine's publishing key when ``sign`` (what only the publisher can do)."""
    from macd_ml.serving.trust import publish_signer, sign_index

    members = {p: d for p, d in members.items() if p not in ("bundle.json", "bundle.sig")}
    manifest = json.loads(members["manifest.json"])
    index = {
        "format": 1,
        "run_id": manifest["run_id"],
        "manifest_sha256": hashlib.sha256(members["manifest.json"]).hexdigest(),
        "members": [
            {"path": p, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in sorted(members.items())
        ],
    }
    members["bundle.json"] = json.dumps(index).encode()
    if sign:
        members["bundle.sig"] = sign_index(members["bundle.json"], publish_signer())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for p, d in sorted(members.items()):
            info = tarfile.TarInfo(f"bundle/{p}")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    return raw.getvalue()


def _variant(bundle: bytes, n: int, sign: bool = True) -> bytes:
    """A valid bundle with the ``n``-th other run id (its index and manifest name a different run)."""
    members = dict(read_bundle(bundle).members)
    manifest = json.loads(members["manifest.json"])
    run_id = manifest["run_id"]
    manifest["run_id"] = run_id[:-1] + [c for c in "0123456789abcdef" if c != run_id[-1]][n]
    members["manifest.json"] = json.dumps(store.sign_manifest(manifest) if sign else manifest).encode()
    return _repack(members)


@pytest.mark.usefixtures("prefect_server")
def test_a_consistently_rewritten_bundle_is_still_refused(bundle_bytes, tmp_path):
    members = dict(read_bundle(bundle_bytes).members)
    members["meta.json"] = members["meta.json"].replace(b"0", b"1", 1)  # index rewritten to match
    with pytest.raises(BundleError, match="meta.json is not the run's artifact"):
        read_bundle(_repack(members))
    # the same rewrite by someone without the publishing key: refused by every reader, never published
    with pytest.raises(BundleError, match="not signed"):
        read_bundle(_repack(members, sign=False))
    with pytest.raises(BundleError, match="not signed"):
        publish(_repack(dict(read_bundle(bundle_bytes).members), sign=False), str(tmp_path / "dest"))
    assert not (tmp_path / "dest" / "metadata").exists()
    # a manifest edited with the index and signed by the publisher, but not by the training side's HMAC key: the
    # training machine's own check of a run it made (``signed=True``) still refuses it
    unsigned = _variant(bundle_bytes, 2, sign=False)
    assert read_bundle(unsigned).run_id != read_bundle(bundle_bytes).run_id
    with pytest.raises(BundleError, match="not signed by this installation"):
        read_bundle(unsigned, signed=True)


# --------------------------------------------------------------------------------------------- scoring


@pytest.mark.usefixtures("prefect_server")
def test_predict_equals_the_runs_own_holdout_predictions(run, bundle_bytes, market, tmp_path):
    out, folder = run
    (tmp_path / "b.tar.gz").write_bytes(bundle_bytes)
    code, stdout, err = cli("predict", "--bundle", str(tmp_path / "b.tar.gz"), "--data", str(market), "--last", "120")
    assert code == 0, err
    lines = [json.loads(x) for x in stdout.strip().splitlines()]
    assert len(lines) == 120 and all(x["path"] == "stacked" for x in lines)
    every = {"lgb", "xgb", "lstm", "reference"}  # the reference model ships in every bundle as a base model
    assert set(lines[-1]["models"]) == every and set(lines[-1]["base"]) == every
    own = pl.read_parquet(folder / "shipped_holdout.parquet")
    got = pl.DataFrame({"timestamp": [x["time"] for x in lines], "p": [x["probabilities"]["5"] for x in lines]})
    got = got.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC", time_unit="us"))
    both = got.join(own, on="timestamp")
    assert both.height == 120
    assert float((both["p"] - both["shipped_h5"]).abs().max()) < 1e-5


@pytest.mark.slow  # a retrain on the real candles in a subprocess
@pytest.mark.heavy  # a retrain on the real candles in a subprocess
def test_predict_on_the_real_candles_equals_the_run(tmp_path):
    data = real_data_or_skip()
    pytest.importorskip("prefect")
    # a small real run: lgb only, 3 folds (the real candles' holdout, the real feature code)
    out = tmp_path / "out"
    proc = cli(  # relaxed for a small run (tests/cliutil.py)
        "retrain",
        "--data",
        data,
        "--out",
        out,
        "--set",
        "folds.n_folds=3",
        "--set",
        'models.enabled=["lgb"]',
        subprocess=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.code == 0, proc.err[-2000:]
    folder = out / "runs" / store.current_run(out)
    scorer = Scorer(read_bundle(build_bundle(folder)))
    bars = scorer.score(data, last=200)
    own = pl.read_parquet(folder / "shipped_holdout.parquet")
    got = pl.DataFrame({"timestamp": [b.timestamp for b in bars], "p": [b.probabilities["12"] for b in bars]})
    both = got.join(own, on="timestamp")
    assert both.height >= 199  # the newest bar has no holdout row when its BTC bar is missing
    assert float((both["p"] - both["shipped_h12"]).abs().max()) < 1e-5


@pytest.mark.usefixtures("prefect_server")
def test_a_bot_scores_beside_its_own_models_and_features_packages(bundle_bytes, market, tmp_path):
    """The scoring API never needs our packages under the names `models` or `features`."""
    bot = tmp_path / "bot"
    for pkg in ("models", "features"):
        (bot / pkg).mkdir(parents=True)
        (bot / pkg / "__init__.py").write_text("WHOSE = 'the bot'\n")
    (tmp_path / "b.tar.gz").write_bytes(bundle_bytes)
    code = (
        "import sys, models, features\n"
        "from macd_ml.serving import Scorer\n"
        f"(bar,) = Scorer.load({str(tmp_path / 'b.tar.gz')!r}).score({str(market)!r})\n"
        "assert models.WHOSE == features.WHOSE == 'the bot'\n"
        "assert sys.modules['models'] is models and sys.modules['features'] is features\n"
        "print(bar.path, sorted(bar.probabilities))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=bot, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["stacked", "['12',", "'24',", "'5']"]


def _frames(market_dir: Path) -> dict[str, pl.DataFrame]:
    m = load_market(market_dir, "ETHUSDT", ["BTCUSDT"])
    return {"ETHUSDT": m.target.frame, "BTCUSDT": m.cross[0].frame}


@pytest.mark.usefixtures("prefect_server")
def test_each_fallback_path(bundle_bytes, market):
    frames = _frames(market)
    scorer = Scorer(read_bundle(bundle_bytes))
    (bar,) = scorer.score(frames)
    assert bar.path == "stacked" and set(bar.probabilities) == {"5", "12", "24"}

    # the reference symbol's newest bar is missing: the LSTM (all features) cannot score, the trees (own) can
    no_btc = {**frames, "BTCUSDT": frames["BTCUSDT"].head(frames["BTCUSDT"].height - 1)}
    (bar,) = scorer.score(no_btc)
    trees = {"lgb", "xgb", "reference"}
    assert bar.path == "mean" and set(bar.models) == trees and "lstm" in bar.reason, bar
    assert "no complete feature row" in bar.reason and "btc" in bar.reason.lower(), bar.reason
    assert bar.probabilities["5"] == pytest.approx(np.mean([bar.base[m]["5"] for m in trees]))

    # one tree's graph fails: the other scores alone
    broken = Scorer(read_bundle(bundle_bytes))

    class Fails:
        def run(self, *a, **k):
            raise RuntimeError("ONNX exploded")

    broken.models["xgb"].session = Fails()
    broken.models["reference"].session = Fails()
    (bar,) = broken.score(no_btc)
    assert bar.path == "single" and bar.models == ["lgb"] and "ONNX error" in bar.reason, bar

    # stacking off (the old ML_ENABLE_STACKING=0): the mean of every model, never the stacked path
    (bar,) = Scorer(read_bundle(bundle_bytes), stacking=False).score(frames)
    assert bar.path == "mean" and len(bar.models) == 4 and bar.reason == "stacking is off"

    # the newest bar is inside the warm-up after an outage: nothing can score, and the bar says why
    eth = frames["ETHUSDT"]
    gap = pl.concat([eth.head(eth.height - 30), eth.tail(20)])  # 10 missing hours, 20 bars after them
    (bar,) = scorer.score({**frames, "ETHUSDT": gap})
    assert bar.path == "none" and bar.probabilities is None and "warm-up" in bar.reason, bar

    # too little data for any model: an error naming how many bars are needed
    with pytest.raises(InsufficientData, match=f"needs at least {scorer.bars_needed}"):
        scorer.score({k: v.tail(50) for k, v in frames.items()})

    # a graph that answers outside [0, 1]: never a probability; the ensemble's, a fallback that says why
    wild = Scorer(read_bundle(bundle_bytes))

    class Wild:
        def __init__(self, real, only=None):
            self.real, self.only = real, only

        def get_outputs(self):
            return self.real.get_outputs()

        def run(self, names, feeds):
            outs = self.real.run(names, feeds)
            if self.only is None:
                return [np.full_like(o, 7.5) for o in outs]
            return [np.full_like(o, 7.5) if o_.name == self.only else o for o, o_ in zip(outs, self.get_outputs())]

    wild.models["xgb"].session = Wild(wild.models["xgb"].session)
    (bar,) = wild.score(no_btc)
    assert "xgb" not in bar.models and "xgb: output outside [0, 1]" in bar.reason, bar
    wild._ensemble = Wild(wild._ensemble, only="shipped")
    (bar,) = wild.score(frames)
    assert bar.path != "stacked" and "outside [0, 1]" in bar.reason, bar
    assert all(0 <= p <= 1 for p in bar.probabilities.values())

    # a candle dated in the future is bad input, not a warm-up
    future = frames["ETHUSDT"].with_columns(
        pl.when(pl.int_range(pl.len()) == pl.len() - 1)
        .then(pl.datetime(2999, 1, 1, time_zone="UTC"))
        .otherwise(pl.col("timestamp"))
        .alias("timestamp")
    )
    from macd_ml.errors import DataError

    with pytest.raises(DataError, match="in the future"):
        scorer.score({**frames, "ETHUSDT": future})


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("attack", ["external-data", "custom-op"])
def test_a_graph_that_reads_files_or_runs_custom_code_is_refused(attack, bundle_bytes, tmp_path, monkeypatch):
    """Even signed (a compromised publisher): a tensor stored as external data named ``secret.txt`` would make
    onnxruntime read that file from the bot's folder; a custom-domain operator runs native code."""
    import onnx

    members = dict(read_bundle(bundle_bytes).members)
    model = onnx.load_from_string(members["onnx/lgb.onnx"])
    if attack == "external-data":
        t = next(t for t in model.graph.initializer if t.raw_data or t.float_data or t.int64_data)
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("int64_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "secret.txt"
    else:
        model.graph.node[0].domain = "com.evil"
    members["onnx/lgb.onnx"] = model.SerializeToString()
    manifest = json.loads(members["manifest.json"])
    for e in manifest["artifacts"]:
        if e["path"] == "onnx/lgb.onnx":
            e["sha256"], e["bytes"] = (
                hashlib.sha256(members["onnx/lgb.onnx"]).hexdigest(),
                len(members["onnx/lgb.onnx"]),
            )
    members["manifest.json"] = json.dumps(store.sign_manifest(manifest)).encode()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_repack(members))
    (tmp_path / "secret.txt").write_bytes(b"\x00\x00\x80\x3f" * 4096)  # what a stolen file would decode as
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="external data" if attack == "external-data" else "not standard ONNX"):
        Scorer.load(bad)
    code, stdout, err = cli("predict", "--bundle", str(bad), "--data", str(tmp_path))
    assert code == 3 and stdout == "" and "refusing" in err, err


# --------------------------------------------------------------------------------------------- shadow


@pytest.mark.usefixtures("prefect_server")
def test_shadow_replay_then_report(bundle_bytes, market, tmp_path):
    (tmp_path / "b.tar.gz").write_bytes(bundle_bytes)
    log = tmp_path / "shadow.jsonl"
    code, _, err = cli(
        "shadow", "--bundle", str(tmp_path / "b.tar.gz"), "--data", str(market), "--log", str(log), "--last", "60"
    )
    assert code == 0, err
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 60 and all(x["path"] == "stacked" and x["error"] is None for x in lines)
    assert all(
        x["latency_ms"] > 0 and x["run_id"] and set(x["base"]) == {"lgb", "xgb", "lstm", "reference"} for x in lines
    )
    code, stdout, _ = cli(
        "shadow-report",
        "--logs",
        str(log),
        "--data",
        str(market),
        "--bundle",
        str(tmp_path / "b.tar.gz"),
        "--json",
        "--plot",
        str(tmp_path / "rates.png"),
    )
    rep = json.loads(stdout)
    assert code == 0 and rep["passed"], stdout
    assert rep["bars"] == 60 and rep["coverage"] == 1.0 and rep["stacking"] == 1.0 and rep["lstm_normal"] == 1.0
    assert rep["realised_auc"]["5"]["n"] > 0 and set(rep["drift"]) == {"5", "12", "24"}
    assert (tmp_path / "rates.png").stat().st_size > 5_000

    # the same bars without stacking: stacking activation 0 %, so the report fails (exit 3)
    log2 = tmp_path / "nostack.jsonl"
    cli(
        "shadow",
        "--bundle",
        str(tmp_path / "b.tar.gz"),
        "--data",
        str(market),
        "--log",
        str(log2),
        "--last",
        "30",
        "--no-stacking",
    )
    code, stdout, _ = cli("shadow-report", "--logs", str(log2))
    assert code == 3 and "stacking activation" in stdout and "FAIL" in stdout
    # targets come from the config (shadow.*); a flag wins over it
    code, stdout, _ = cli("shadow-report", "--logs", str(log2), "--set", "shadow.stacking=0")
    assert code == 0 and "shadow report: PASS" in stdout, stdout
    code, stdout, _ = cli("shadow-report", "--logs", str(log2), "--set", "shadow.stacking=0", "--min-stacking", "0.5")
    assert code == 3, stdout


def test_shadow_report_counts_malformed_lines_and_stuck_lstm(tmp_path):
    good = {
        "time": "2024-01-01T00:00:00+00:00",
        "probabilities": {"5": 0.5},
        "path": "stacked",
        "models": ["lstm"],
        "base": {"lstm": {"5": 0.42}},
        "latency_ms": 3.0,
        "error": None,
    }
    lines = []
    for i in range(30):
        t = f"2024-01-02T{i % 24:02d}:00:00+00:00" if i < 24 else f"2024-01-03T{i - 24:02d}:00:00+00:00"
        lines.append(json.dumps({**good, "time": t}))  # the LSTM says 0.42 on every bar: stuck
    lines[3] = "{not json"
    lines[7] = json.dumps({"time": "yesterday", "path": "stacked", "models": []})
    lines[9] = json.dumps(["a", "list"])
    lines[12] = json.dumps(
        {
            **good,
            "time": "2024-01-02T12:00:00+00:00",
            "probabilities": None,
            "path": "none",
            "base": {},
            "error": {"kind": "DataError", "message": "bad candle"},
        }
    )
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n" + "\x00\xff garbage\n")
    rep = report(tmp_path, Targets())
    assert [n for _, n, _ in rep.malformed] == [4, 8, 10, 31]
    assert rep.bars == 27 and rep.errors == {"DataError": 1} and rep.coverage == pytest.approx(26 / 27)
    assert rep.lstm_normal == 0.0 and not rep.passed
    failed = {c["name"] for c in rep.checks if not c["passed"]}
    assert failed == {"LSTM normal-output rate", "bars with an ML error"}, rep.checks
    assert "malformed lines 4 (a.jsonl:4, a.jsonl:8, a.jsonl:10, a.jsonl:31)" in rep.table()
    # the same LSTM moving a little on every bar is normal
    moving = [
        json.dumps({**good, "time": f"2024-02-01T{i:02d}:00:00+00:00", "base": {"lstm": {"5": 0.4 + i / 1e3}}})
        for i in range(24)
    ]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.jsonl").write_text("\n".join(moving) + "\n")
    rep = report(tmp_path / "b", Targets())
    assert rep.lstm_normal == 1.0 and rep.passed, rep.table()


def test_shadow_report_counts_schema_breaks_as_malformed_and_each_bar_once(tmp_path):
    good = {
        "time": "2024-01-01T00:00:00+00:00",
        "probabilities": {"5": 0.5},
        "path": "stacked",
        "models": ["lgb"],
        "base": {"lgb": {"5": 0.5}},
        "latency_ms": 3.0,
        "error": None,
    }
    lines = [json.dumps(good)] * 21  # one bar logged 21 times (a restarted replay)
    lines += [
        json.dumps({**good, "time": "2024-01-01T01:00:00+00:00", "probabilities": {"5": 7.5}}),
        json.dumps({**good, "time": "2024-01-01T02:00:00+00:00", "probabilities": None}),
        json.dumps({**good, "time": "2999-01-01T00:00:00+00:00"}),
        json.dumps({**good, "time": "2024-01-01T03:00:00+00:00", "latency_ms": -4}),
        json.dumps({**good, "time": "2024-01-01T04:00:00+00:00", "base": {"lgb": {"5": -0.1}}}),
        json.dumps({**good, "time": "2024-01-01T05:00:00+00:00", "path": "teleport"}),
        json.dumps({**good, "time": "2024-01-01T06:00:00"}),
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    rep = report(tmp_path / "a.jsonl", Targets())
    assert [n for _, n, _ in rep.malformed] == list(range(22, 29)), rep.malformed
    why = " | ".join(w for _, _, w in rep.malformed)
    for part in ("not a probability", "null where the path says stacked", "in the future", "latency_ms", "path"):
        assert part in why, why
    assert rep.bars == 1 and rep.coverage == 1.0


@pytest.mark.usefixtures("prefect_server")
def test_shadow_follow_scores_new_bars_as_they_arrive(bundle_bytes, market, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in market.glob("*.csv"):
        lines = f.read_text().splitlines()
        (data / f.name).write_text("\n".join(lines[:-2]) + "\n")  # the last two hours have not happened yet
    (tmp_path / "b.tar.gz").write_bytes(bundle_bytes)
    log = tmp_path / "follow.jsonl"
    proc = spawn(
        "shadow",
        "--bundle",
        tmp_path / "b.tar.gz",
        "--data",
        data,
        "--log",
        log,
        "--follow",
        "--poll",
        "0.2",
        "--max-bars",
        "3",
        "--timeout",
        "120",
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.2)
    for f in market.glob("*.csv"):  # the two hours arrive
        (data / f.name).write_text(f.read_text())
    assert proc.wait(120) == 0, proc.stderr.read()[-2000:]
    times = [json.loads(x)["time"] for x in log.read_text().splitlines()]
    last_two = pl.read_csv(market / "ETHUSDT_1h.csv")["timestamp"].tail(2).to_list()
    assert len(times) == 3 and [t[:13] for t in times[1:]] == [t.replace(" ", "T")[:13] for t in last_two]

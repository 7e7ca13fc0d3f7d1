"""The bot's contract (docs/bot-contract.md): what ``Scorer.score`` returns and what ``macd-ml shadow`` logs validate
against the versioned JSON Schemas committed under ``docs/schemas/``; lines that break the contract do not.

The outputs are real: a bundle from a real (small) retrain, scored on every path (stacked, mean, single, none), and
a shadow log written by the real command plus an error line written by the real shadow loop. The schemas are
closed (``additionalProperties: false``), so a field the code adds, drops or renames fails here until the schema
gets a new version (docs/bot-contract.md, "Versions")."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import polars as pl
import pytest
from jsonschema import Draft202012Validator

from macd_ml.artifacts import store
from macd_ml.features.ingest import load_market
from macd_ml.serving import Scorer, read_bundle
from macd_ml.serving.shadow import read_logs, score_bars
from tests.cliutil import cli

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"
SCORE = "score.v2.schema.json"
SHADOW = "shadow-log.v2.schema.json"
SCORE_FIELDS = ["time", "probabilities", "path", "models", "base", "reason", "latency_ms", "gate"]
SHADOW_FIELDS = [*SCORE_FIELDS, "error", "bundle", "run_id"]
V1 = {  # the previous version stays for bots that still read it
    "score.v1.schema.json": SCORE_FIELDS[:-1],
    "shadow-log.v1.schema.json": [*SCORE_FIELDS[:-1], "error", "bundle", "run_id"],
}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(name: str, doc: dict) -> list[str]:
    return [e.message for e in _validator(name).iter_errors(doc)]


# --------------------------------------------------------------------------------------------- the schemas alone


@pytest.mark.parametrize("name,fields", [(SCORE, SCORE_FIELDS), (SHADOW, SHADOW_FIELDS), *V1.items()])
def test_schemas_are_valid_draft_2020_12_and_carry_their_version(name, fields):
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    kind, version = name.removesuffix(".schema.json").rsplit(".", 1)
    assert schema["$id"].endswith(f":{kind}:{version}"), "the $id names the file's version"
    assert schema["required"] == fields and schema["additionalProperties"] is False


# --------------------------------------------------------------------------------------------- real outputs


@pytest.fixture(scope="module")
def bundle_file(market, tmp_path_factory, prefect_server) -> Path:
    """The bundle of a real promoted run, kept small: LightGBM (own features) and the reference, 3 folds."""
    out = tmp_path_factory.mktemp("contract-out")
    code, _, err = cli(
        *["retrain", "--data", str(market), "--out", str(out), "--set", "folds.n_folds=3"]
        + ["--set", 'models.enabled=["lgb"]']
    )
    assert code == 0, err
    bundle = out / "bundles" / f"{store.current_run(out)}.tar.gz"
    assert bundle.is_file()
    return bundle


def _frames(market_dir: Path) -> dict[str, pl.DataFrame]:
    m = load_market(market_dir, "ETHUSDT", ["BTCUSDT"])
    return {"ETHUSDT": m.target.frame, "BTCUSDT": m.cross[0].frame}


def _scores_on_every_path(bundle_file: Path, market: Path) -> list[dict]:
    bundle = read_bundle(bundle_file.read_bytes())
    frames = _frames(market)
    scorer = Scorer(bundle)
    bars = scorer.score(frames, last=3)  # stacked
    no_btc = {**frames, "BTCUSDT": frames["BTCUSDT"].head(frames["BTCUSDT"].height - 1)}
    bars += scorer.score(no_btc)  # the cross symbol's bar is late: no complete feature row, the mean of the rest
    one_left = Scorer(bundle)

    class Fails:
        def run(self, *a, **k):
            raise RuntimeError("ONNX exploded")

    one_left.models["reference"].session = Fails()
    bars += one_left.score(no_btc)  # single
    bars += Scorer(bundle, stacking=False).score(frames)  # mean, "stacking is off"
    eth = frames["ETHUSDT"]
    bars += scorer.score({**frames, "ETHUSDT": pl.concat([eth.head(eth.height - 30), eth.tail(20)])})  # none
    return [b.to_json() for b in bars]


@pytest.mark.slow
def test_real_scores_on_every_path_validate_against_the_score_schema(bundle_file, market):
    scores = _scores_on_every_path(bundle_file, market)
    assert {s["path"] for s in scores} == {"stacked", "mean", "single", "none"}, "every path is exercised"
    for s in scores:
        assert _errors(SCORE, json.loads(json.dumps(s))) == [], s  # through JSON, as predict prints it

    code, stdout, err = cli(*["predict", "--bundle", str(bundle_file), "--data", str(market), "--last", "2"])
    assert code == 0, err
    printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 2
    for line in printed:
        assert _errors(SCORE, line) == [], line


@pytest.mark.slow
def test_real_shadow_lines_validate_and_broken_lines_do_not(bundle_file, market, tmp_path):
    log = tmp_path / "shadow.jsonl"
    code, _, err = cli(
        *["shadow", "--bundle", str(bundle_file), "--data", str(market), "--log", str(log), "--last", "3"]
    )
    assert code == 0, err
    # and the line the shadow writes when scoring fails: a bar inside the warm-up (InsufficientData)
    scorer = Scorer(read_bundle(bundle_file.read_bytes()))
    m = load_market(market, scorer.target, scorer.cross)
    score_bars(scorer, m, m.target.frame["timestamp"].to_list()[:1], log)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 4 and lines[-1]["error"]["kind"] == "InsufficientData", lines[-1]
    assert {x["path"] for x in lines} == {"stacked", "none"}
    for line in lines:
        assert _errors(SHADOW, line) == [], line
    frame, malformed = read_logs(log)
    assert malformed == [] and frame.height == 4, "shadow-report reads every line the schema accepts"

    # negative controls: each required field missing, and values the contract forbids
    good, failed = lines[0], lines[-1]
    for name in SHADOW_FIELDS:
        broken = {k: v for k, v in good.items() if k != name}
        assert any(f"'{name}' is a required property" in e for e in _errors(SHADOW, broken)), name
    for edit in (
        lambda d: d["probabilities"].update({"5": 7.5}),  # not a probability
        lambda d: d.update(probabilities=None),  # the stacked path always has one
        lambda d: d.update(path="magic"),
        lambda d: d.update(time=d["time"].removesuffix("+00:00")),  # a time without its zone
        lambda d: d.update(latency_ms=-1.0),
        lambda d: d.update(bundle="not-a-sha"),
        lambda d: d.update(extra="a field v1 does not have"),
        lambda d: d["base"].update(lgb={"5": "0.52"}),  # a number as text
    ):
        broken = copy.deepcopy(good)
        edit(broken)
        assert _errors(SHADOW, json.loads(json.dumps(broken))), broken
    no_kind = copy.deepcopy(failed)
    del no_kind["error"]["kind"]
    assert _errors(SHADOW, no_kind), "an error names its kind"
    assert _errors(SHADOW, {**failed, "reason": "x", "error": None, "path": "stacked"}), "stacked needs numbers"

    # a score line lacks the shadow fields; a shadow line has fields a score does not
    assert _errors(SHADOW, {k: good[k] for k in SCORE_FIELDS})
    assert _errors(SCORE, good)

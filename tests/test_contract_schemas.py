"""The bot's contract (docs/bot-contract.md): what ``Scorer.score`` returns, what ``macd-ml shadow`` logs and the
pointer ``macd-ml publish`` signs validate against the versioned JSON Schemas committed under ``docs/schemas/``;
documents that break the contract do not, and a published schema file never changes (its sha256 is frozen here).

The outputs are real: a bundle from a real (small) retrain, scored on every path (stacked, mean, single, none), and
a shadow log written by the real command plus an error line written by the real shadow loop. The schemas are
closed (``additionalProperties: false``), so a field the code adds, drops or renames fails here until the schema
gets a new version (docs/bot-contract.md, "Versions")."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from jsonschema import Draft202012Validator

from macd_ml.artifacts import store
from macd_ml.features.ingest import load_market
from macd_ml.serving import Scorer, read_bundle
from macd_ml.serving.contract import CONTRACT_VERSION, DOCUMENTS, schema_file
from macd_ml.serving.publish import publish, read_pointer, refresh, rollback
from macd_ml.serving.shadow import read_logs, score_bars
from tests.cliutil import cli
from tests.trustutil import small_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"
SCORE = schema_file("score")
SHADOW = schema_file("shadow-log")
POINTER = schema_file("publish-pointer")
V1_SCORE = ["time", "probabilities", "path", "models", "base", "reason", "latency_ms"]
SCORE_FIELDS = ["contract_version", *V1_SCORE, "gate", "flags", "dissimilarity", "model_age_hours"]
SHADOW_FIELDS = [*SCORE_FIELDS, "error", "bundle", "run_id"]
POINTER_FIELDS = ["contract_version", "bundle", "sha256", "run_id", "published_at", "history"]
PREVIOUS = {  # earlier versions stay for bots that still read them
    "score.v1.schema.json": V1_SCORE,
    "shadow-log.v1.schema.json": [*V1_SCORE, "error", "bundle", "run_id"],
    "score.v2.schema.json": [*V1_SCORE, "gate"],
    "shadow-log.v2.schema.json": [*V1_SCORE, "gate", "error", "bundle", "run_id"],
}
# Every published schema file and its sha256. A published version never changes: a change to a document is a new
# CONTRACT_VERSION with new files (docs/bot-contract.md, "Versions"), whose hashes are added here.
FROZEN = {
    "publish-pointer.v3.schema.json": "8bc75de9ab60a7073b711f82e06f367e91b11ba0f9f7fb67dbc5da2b13117d62",
    "score.v1.schema.json": "56d892ff3d393e84e6fa3a54c2d5159275cc7f2424e8a35dd953a7a9dd1705c2",
    "score.v2.schema.json": "e5b3a62b91bf0ccabe545605057ac2ca6910db02720754f09d5bd843850e1508",
    "score.v3.schema.json": "d77700e62257c9b6ac1512cff0b7cd5ee334f5b85cc60ee52da2886d9aadc5ee",
    "shadow-log.v1.schema.json": "14f8cbe07ee963b661fbaaa1e3a9dd8927df9cbd75195b0a900a816c3e9555c3",
    "shadow-log.v2.schema.json": "262e9c79208ba405484a7d6a0115fa9eec191e5bf1f97cc62ae51ecc33724fa2",
    "shadow-log.v3.schema.json": "4fe773e191c35d1bcc7802dc91db52aed743a95859ccc7f9104433a0de2cb68c",
}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(name: str, doc: dict) -> list[str]:
    return [e.message for e in _validator(name).iter_errors(doc)]


# --------------------------------------------------------------------------------------------- the schemas alone


@pytest.mark.parametrize(
    "name,fields", [(SCORE, SCORE_FIELDS), (SHADOW, SHADOW_FIELDS), (POINTER, POINTER_FIELDS), *PREVIOUS.items()]
)
def test_schemas_are_valid_draft_2020_12_and_carry_their_version(name, fields):
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    kind, version = name.removesuffix(".schema.json").rsplit(".", 1)
    assert schema["$id"].endswith(f":{kind}:{version}"), "the $id names the file's version"
    assert schema["required"] == fields and schema["additionalProperties"] is False


def test_published_schemas_never_change_and_the_newest_is_the_contract_version():
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SCHEMAS.glob("*.json")}
    assert set(files) == set(FROZEN), "a schema file was added or removed: a new version adds its files and hashes"
    changed = sorted(name for name, sha in files.items() if FROZEN[name] != sha)
    assert not changed, f"published schema files changed: {changed}; a change to the contract is a new version"
    newest = max(int(n.split(".v")[1].split(".")[0]) for n in files)
    assert newest == CONTRACT_VERSION
    for doc in DOCUMENTS:
        assert (SCHEMAS / schema_file(doc)).is_file(), f"{doc} has no schema at contract version {CONTRACT_VERSION}"
        assert _schema(schema_file(doc))["properties"]["contract_version"] == {
            "description": 'the bot contract\'s version (docs/bot-contract.md, "Versions")',
            "const": CONTRACT_VERSION,
        }


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
    # an expired model (fallback: no probability) and bars unlike the training data (flagged)
    aged = Scorer(bundle)
    aged.guards.data_end -= timedelta(days=30)
    bars += aged.score(frames, last=1)
    strange = Scorer(bundle, serving={"on_expired": "flag"})
    strange.guards.familiarity = dataclasses.replace(strange.guards.familiarity, threshold=0.0)
    strange.guards.data_end -= timedelta(days=30)
    bars += strange.score(frames, last=1)
    assert bars[-2].flags == ["expired"] and bars[-2].path == "none"
    assert bars[-1].flags == ["expired", "unfamiliar"] and bars[-1].probabilities is not None
    return [b.to_json() for b in bars]


@pytest.mark.slow
def test_real_scores_on_every_path_validate_against_the_score_schema(bundle_file, market):
    scores = _scores_on_every_path(bundle_file, market)
    assert {s["path"] for s in scores} == {"stacked", "mean", "single", "none"}, "every path is exercised"
    for s in scores:
        assert _errors(SCORE, json.loads(json.dumps(s))) == [], s  # through JSON, as predict prints it
        assert s["contract_version"] == CONTRACT_VERSION
    for edit in (
        lambda d: d.update(contract_version=2),  # another version's document
        lambda d: d.update(flags=["stale"]),  # a flag the contract does not know
        lambda d: d.update(flags=["expired", "expired"]),
        lambda d: d.update(dissimilarity=-0.1),
    ):
        broken = copy.deepcopy(scores[0])
        edit(broken)
        assert _errors(SCORE, broken), broken

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


def test_the_publish_pointer_validates_through_publish_rollback_and_refresh(tmp_path):
    """The pointer a bot reads (LATEST's ``custom``) after each command that writes it."""
    dest = str(tmp_path / "dest")
    pointers = [publish(small_bundle(tmp_path, n), dest) for n in range(3)]
    pointers += [rollback(dest), refresh(dest), read_pointer(dest)]
    assert pointers[-1]["rolled_back_from"] and len(pointers[-1]["history"]) == 1
    for p in pointers:
        assert _errors(POINTER, json.loads(json.dumps(p))) == [], p
        assert p["contract_version"] == CONTRACT_VERSION
    good = read_pointer(dest)
    for edit in (
        lambda d: d.pop("contract_version"),
        lambda d: d.update(sha256="abc"),
        lambda d: d.update(extra=1),
        lambda d: d.update(history=[{"bundle": "x"}]),
        lambda d: d["rolled_back_from"].update(published_at="yesterday"),
    ):
        broken = copy.deepcopy(good)
        edit(broken)
        assert _errors(POINTER, broken), broken

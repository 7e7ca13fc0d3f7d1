"""The stages are plain functions (flows/stages_runner.py): the whole pipeline runs without Prefect's engine, API or
result cache, writes the same cache folders the flow would, and publishes a run that verifies. And a cold run
parses each candle file once and builds the feature table once (docs/architecture.md, "Candles parsed once")."""

from __future__ import annotations

from pathlib import Path

import pytest

from macd_ml.artifacts import store
from macd_ml.artifacts.records import RECORD
from macd_ml.flows.config import RetrainConfig
from macd_ml.flows.pipeline import run_pipeline
from macd_ml.flows.preflight import preflight
from macd_ml.flows.stages_runner import direct_stages
from macd_ml.tasks import candles as inputs
from macd_ml.tasks.table import feature_table
from tests.flowutil import lenient

pytestmark = pytest.mark.slow


def _config(data, out) -> RetrainConfig:
    return lenient(
        RetrainConfig.model_validate(
            {"data_dir": str(data), "out_dir": str(out), "folds": {"n_folds": 3}, "models": {"enabled": ["lgb"]}}
        )
    )


def _count_parses(monkeypatch) -> dict[str, int]:
    """Every parse of a candle file, whoever asks (features.ingest reads raw files in one function), and every
    feature table built by the pipeline's stages."""
    from macd_ml.features import ingest

    counts = {"parsed": 0}
    raw = ingest._read_raw

    def counting(path):
        counts["parsed"] += 1
        return raw(path)

    monkeypatch.setattr(ingest, "_read_raw", counting)
    monkeypatch.setitem(inputs.COUNTS, "built", 0)
    return counts


def test_the_pipeline_runs_without_prefect_and_parses_each_file_once(market, tmp_path, monkeypatch):
    from prefect.context import FlowRunContext, TaskRunContext

    counts = _count_parses(monkeypatch)
    out = tmp_path / "out"
    config = _config(market, out)
    run_id = store.new_run_id()

    shape = preflight(config, out)  # as the command does before the flow
    assert counts["parsed"] == 2 and inputs.COUNTS["built"] == 1  # ETHUSDT and its cross BTCUSDT; one table
    assert preflight(config, out) == shape  # the flow's own call finds the command's result: nothing again
    run = run_pipeline(config, out, run_id, direct_stages(workers=2))

    assert FlowRunContext.get() is None and TaskRunContext.get() is None
    assert counts["parsed"] == 2, "a candle file was parsed again after preflight"
    assert inputs.COUNTS["built"] == 1, "the feature table was built again after preflight"
    manifest = store.verify_run(run.path)  # a published run, signed, every file checked
    assert store.current_run(out) == run.run_id and len(manifest["artifacts"]) > 10
    assert any((out / "cache" / "features").iterdir())  # the folders the flow's tasks would write


def test_a_stored_input_that_does_not_verify_is_parsed_again(market, tmp_path, monkeypatch):
    """The stored candles are a cache, never an authority: a record whose parquet was swapped is not used."""
    counts = _count_parses(monkeypatch)
    out = tmp_path / "out"
    config = _config(market, out)
    preflight(config, out)
    assert counts["parsed"] == 2
    parquet = next((out / "cache" / "candles").rglob("candles.parquet"))  # one of the two symbols
    parquet.write_bytes(parquet.read_bytes()[:-8] + b"\0" * 8)  # damaged after the record was signed
    inputs.candle_reader(out)(Path(market) / "ETHUSDT_1h.csv", "ETHUSDT")
    inputs.candle_reader(out)(Path(market) / "BTCUSDT_1h.csv", "BTCUSDT")
    assert counts["parsed"] == 3  # the damaged one parsed again (and stored again), the intact one reused


def test_a_record_edited_after_it_was_signed_is_not_used(market, tmp_path, monkeypatch):
    """A stored feature table whose record was rewritten (its row count, here) is built again, not trusted."""
    import json

    from macd_ml.features.ingest import load_market

    out = tmp_path / "out"
    config = _config(market, out)
    preflight(config, out)
    monkeypatch.setitem(inputs.COUNTS, "built", 0)
    m = load_market(market, "ETHUSDT", ["BTCUSDT"], read=inputs.candle_reader(out))
    feature_table(m, config.features, config.gap_tolerance_hours, out)
    assert inputs.COUNTS["built"] == 0  # stored by preflight: reused
    (record,) = (out / "cache" / "feature-table").rglob(RECORD)
    signed = json.loads(record.read_text())
    signed["doc"]["names"] = signed["doc"]["names"][:-1]
    record.write_text(json.dumps(signed))
    table = feature_table(m, config.features, config.gap_tolerance_hours, out)
    assert inputs.COUNTS["built"] == 1 and len(table.names) == len(signed["doc"]["names"]) + 1


def test_a_stage_run_directly_names_its_folder_with_the_key_prefect_gives_it():
    """run_direct computes the key through the task's own cache policy (what Prefect calls), so a stage run
    directly writes the folder its task would; outside both, asking for the key is an error."""
    from macd_ml.tasks.keys import make_key
    from macd_ml.tasks.policy import current_key, direct_key, run_direct, task_code_version
    from macd_ml.tasks.results import cached_task

    @cached_task(name="probe")
    def probe(x: int, out_dir: str) -> str:
        return current_key()

    key = run_direct(probe, 3, "o")
    assert key == direct_key(probe, (3,), {"out_dir": "o"})
    assert key == make_key("probe", task_code_version(probe.fn), {"x": 3, "out_dir": "o"})
    assert run_direct(probe, 4, "o") != key  # another input, another folder
    with pytest.raises(RuntimeError, match="no cache key"):
        current_key()


def test_the_synthetic_market_too_is_parsed_once_and_built_once(tmp_path, monkeypatch):
    """``make run``'s path: preflight checks the generated market in memory, then writes its files, reads them back
    once and stores its table under their content; the flow's stages reuse both."""
    counts = _count_parses(monkeypatch)
    out = tmp_path / "out"
    config = lenient(
        RetrainConfig.model_validate(
            {
                "out_dir": str(out),
                "synthetic": {"hours": 3_000, "seed": 4},
                "folds": {"n_folds": 3},
                "models": {"enabled": ["lgb"]},
            }
        )
    )
    preflight(config, out)
    run = run_pipeline(config, out, store.new_run_id(), direct_stages(workers=2))
    assert counts["parsed"] == 2 and inputs.COUNTS["built"] == 1, (counts, inputs.COUNTS)
    store.verify_run(run.path)

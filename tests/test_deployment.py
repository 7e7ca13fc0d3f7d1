"""The nightly deployment: schedule, UI form, prefect.yaml consistency, CLI help for every subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from macd_ml.deployments.nightly import DEFAULT_CRON, build
from macd_ml.flows.cli import build_parser, main
from macd_ml.flows.config import RetrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_deployment_schedule_and_parameters():
    cfg = RetrainConfig(data_dir="/data/candles", out_dir="/srv/out")
    dep = build(cfg)
    assert dep.name == "nightly"
    assert [s.schedule.cron for s in dep.schedules] == [DEFAULT_CRON]
    assert dep.parameters["config"]["data_dir"] == "/data/candles"
    assert dep.concurrency_limit == 1


def test_ui_form_is_the_pydantic_config():
    from macd_ml.flows.retrain import retrain

    schema = retrain.parameters.model_dump()
    assert list(schema["properties"]) == ["config", "run_id"]  # run_id: empty, or a failed run to finish
    assert schema.get("required", []) == []
    defs = schema["definitions"]
    form = defs["RetrainConfig"]["properties"]
    for key in ("data_dir", "target", "cross", "horizons", "folds", "features", "force"):
        assert key in form, key
    assert "FoldSpec" in defs and "FeatureSpec" in defs


def test_prefect_yaml_matches_the_flow():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"nightly", "export-onnx", "health"}
    for dep in deps.values():
        module, func = dep["entrypoint"].split(":")
        assert (ROOT / module).is_file()
        loaded = load_flow_from_entrypoint(str(ROOT / module) + ":" + func)
        assert loaded.name in ("retrain", "export-onnx", "health")
    assert deps["nightly"]["schedules"][0]["cron"] == DEFAULT_CRON
    assert any("set_working_directory" in next(iter(step)) for step in spec["pull"])


@pytest.mark.parametrize(
    "cmd",
    [
        "retrain",
        "features",
        "synth",
        "serve",
        "resume",
        "stack",
        "report",
        "export-onnx",
        "health",
        "bundle",
        "publish",
        "rollback",
        "predict",
        "shadow",
        "shadow-report",
    ],
)
def test_every_subcommand_has_help(cmd, capsys):
    """Not just argparse's usage line: the command's own description and a help text for every option."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert sub.description and " ".join(sub.description.split()) in text, f"{cmd} has no description"
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{cmd} {action.option_strings or action.dest} has no help text"
        assert " ".join(action.help.split()) in text
        for opt in action.option_strings:
            assert opt in text


def test_parser_lists_subcommands():
    text = build_parser().format_help()
    for cmd in ("retrain", "features", "synth", "serve", "resume", "stack", "report"):
        assert cmd in text

"""Deployments: prefect.yaml, the served deployment, the pull step, data locations, the UI form, CLI help."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from macd_ml.deployments.nightly import DEFAULT_CRON, build
from macd_ml.errors import ConfigError
from macd_ml.flows.cli import build_parser
from macd_ml.flows.config import RetrainConfig, validate_config
from tests.cliutil import cli

ROOT = Path(__file__).resolve().parents[1]


def test_served_deployment_has_its_own_name_and_schedules_only_real_data():
    cfg = RetrainConfig(data_dir="/data/candles", out_dir="/srv/out")
    dep = build(cfg)
    assert dep.name == "served"  # never one of prefect.yaml's deployments
    assert [s.schedule.cron for s in dep.schedules] == [DEFAULT_CRON]
    assert dep.schedules[0].schedule.timezone == "UTC"
    assert dep.parameters["config"]["data_dir"] == "/data/candles"
    assert dep.parameters["require_data"] is True and dep.parameters["skip_unchanged"] is True
    assert dep.concurrency_limit == 1
    berlin = build(cfg, timezone="Europe/Berlin")
    assert berlin.schedules[0].schedule.timezone == "Europe/Berlin"
    # the API checks a deployment's parameters against its form's schema (a null optional field was a 422)
    from prefect._internal.schemas.validators import validate_values_conform_to_schema

    validate_values_conform_to_schema(dep.parameters, dep._parameter_openapi_schema.model_dump(), ignore_required=True)
    assert RetrainConfig.model_validate(dep.parameters["config"]) == cfg
    synthetic = build(RetrainConfig())
    assert synthetic.schedules == [] and synthetic.parameters["require_data"] is False
    assert synthetic.parameters["skip_unchanged"] is False


def _form():
    from macd_ml.flows.retrain import retrain

    return retrain.parameters.model_dump()


def _fields(schema):
    """(path, field schema) for every field of the form, nested models included."""
    defs = schema["definitions"]

    def walk(props, path):
        for name, field in props.items():
            yield f"{path}{name}", field
            ref = field.get("$ref") or next((a.get("$ref") for a in field.get("allOf", [])), None)
            if ref:
                yield from walk(defs[ref.rsplit("/", 1)[-1]]["properties"], f"{path}{name}.")

    yield from walk(schema["properties"], "")


def test_ui_form_is_the_pydantic_config():
    schema = _form()
    assert list(schema["properties"]) == ["config", "run_id", "require_data", "skip_unchanged"]
    assert schema.get("required", []) == []
    form = schema["definitions"]["RetrainConfig"]["properties"]
    for key in ("data_dir", "target", "cross", "horizons", "folds", "features", "force"):
        assert key in form, key


def test_every_form_field_is_described_and_usable_without_a_type_toggle():
    fields = dict(_fields(_form()))
    assert len(fields) > 60
    undescribed = [p for p, f in fields.items() if not f.get("description")]
    assert undescribed == [], f"form fields without a description: {undescribed}"
    toggles = [p for p, f in fields.items() if "anyOf" in f or f.get("type") == "null" or "null" in str(f.get("type"))]
    assert toggles == [], f"nullable fields (a type toggle in the UI): {toggles}"
    raw = [p for p, f in fields.items() if f.get("type") == "object" and "properties" not in f]
    assert raw == [], f"free-form JSON boxes: {raw}"


def test_models_are_an_enum_multi_select_and_feature_sets_typed():
    fields = dict(_fields(_form()))
    enabled = fields["config.models.enabled"]
    assert enabled["type"] == "array"
    assert set(enabled["items"]["enum"]) == {"lgb", "xgb", "lgb_cross", "lstm", "tft"}
    for m in ("lgb", "xgb", "lgb_cross", "lstm", "tft"):
        assert fields[f"config.models.feature_sets.{m}"]["enum"] == ["own", "all"]
    with pytest.raises(ConfigError, match="unknown model.*'gbm'"):
        validate_config({"models": {"enabled": ["lgb", "gbm"]}})
    with pytest.raises(ConfigError, match="feature_sets.lgb"):
        validate_config({"models": {"feature_sets": {"lgb": "some"}}})


@pytest.mark.parametrize(
    "key, blank",
    [("folds.embargo_hours", ""), ("health.primary_horizon", None), ("models.lstm.max_train_rows", "")],
)
def test_optional_numbers_take_an_empty_value_or_a_number(key, blank):
    section, *rest = key.split(".")

    def cfg(v):
        d: dict = {}
        cur = d
        for part in [section, *rest[:-1]]:
            cur = cur.setdefault(part, {})
        cur[rest[-1]] = v
        return validate_config(d)

    def read(c):
        obj = c
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    assert read(cfg(blank)) is None
    assert read(cfg(120 if "rows" in key else 24)) == (120 if "rows" in key else 24)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg(0)  # the constraints still hold


def test_cross_empty_means_default_and_none_means_no_reference():
    assert RetrainConfig().cross_symbols() is None
    assert RetrainConfig(cross=None).cross_symbols() is None  # config files from before the form change
    assert RetrainConfig(cross=["none"]).cross_symbols() == []
    assert RetrainConfig(cross=["btcusdt"]).cross_symbols() == ["BTCUSDT"]
    with pytest.raises(ConfigError, match="cross"):
        validate_config({"cross": ["none", "BTCUSDT"]})
    assert RetrainConfig(data_dir=None).data_dir == ""


def test_prefect_yaml_deployments_load_by_module_path():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {
        "retrain",
        "retrain-nightly",
        "fleet-nightly",
        "walkforward",
        "export",
        "health",
        "bundle",
        "publish",
    }
    names = {}
    for name, dep in deps.items():
        # a module path, not a file path: the flow comes from the installed package wherever the worker runs
        assert ":" not in dep["entrypoint"] and dep["entrypoint"].startswith("macd_ml."), dep["entrypoint"]
        names[name] = load_flow_from_entrypoint(dep["entrypoint"]).name
        assert dep["work_pool"]["name"] == "macd-ml"
    assert names == {
        "retrain": "retrain",
        "retrain-nightly": "retrain",
        "fleet-nightly": "fleet",
        "walkforward": "walkforward",
        "export": "export-onnx",
        "health": "health",
        "bundle": "bundle",
        "publish": "publish",
    }
    nightly = deps["retrain-nightly"]
    assert nightly["schedules"][0]["cron"] == DEFAULT_CRON and nightly["schedules"][0]["timezone"] == "UTC"
    assert nightly["parameters"] == {"require_data": True, "skip_unchanged": True}
    assert "schedules" not in deps["retrain"]
    fleet = deps["fleet-nightly"]  # the watchlist is a config key like any other
    assert RetrainConfig.model_validate(fleet["parameters"]["config"]).targets == [
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
        "BNBUSDT",
        "XRPUSDT",
    ]
    assert fleet["schedules"][0]["active"] is False and fleet["parameters"]["require_data"] is True
    assert spec["pull"] == [{"macd_ml.deployments.steps.enter_home": {}}]
    assert "served" not in deps


def test_pull_step_enters_the_home_from_anywhere(tmp_path, monkeypatch):
    from macd_ml.deployments import steps

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "elsewhere" / "home"
    monkeypatch.setenv("MACD_ML_HOME", str(home))
    assert steps.enter_home() == {"directory": str(home)}
    assert Path.cwd() == home.resolve()
    monkeypatch.delenv("MACD_ML_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setattr("prefect.variables.Variable.get", lambda name, default=None: default)
    assert steps.enter_home() == {"directory": str(tmp_path / "user" / "macd-ml")}


def test_locations_in_a_deployment_come_from_parameters_then_variables(monkeypatch):
    from macd_ml.flows import locations

    variables = {"macd_ml_data_dir": "/data/candles", "macd_ml_out_dir": "/srv/out"}
    monkeypatch.setattr("prefect.variables.Variable.get", lambda name, default=None: variables.get(name, default))
    got = locations.resolve(RetrainConfig(), deployment=True)
    assert (got.data_dir, got.out_dir) == ("/data/candles", "/srv/out")
    given = locations.resolve(RetrainConfig(data_dir="/mine", out_dir="/o"), deployment=True)
    assert (given.data_dir, given.out_dir) == ("/mine", "/o")
    cli = locations.resolve(RetrainConfig(), deployment=False)  # the CLI never reads Variables
    assert (cli.data_dir, cli.out_dir) == ("", "out")
    variables.clear()
    with pytest.raises(ConfigError, match="macd_ml_data_dir"):
        locations.resolve(RetrainConfig(), require_data=True, deployment=True)
    assert locations.resolve(RetrainConfig(), deployment=True).data_dir == ""  # manual run: synthetic


def _commands(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command of the parser, nested ones (``config show``) included."""
    import argparse

    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(*prefix, name), *_commands(sub, (*prefix, name))]
    return found


@pytest.mark.parametrize("cmd", _commands(), ids=" ".join)
def test_every_subcommand_has_help(cmd):
    """Not just argparse's usage line: the command's own description and a help text for every option (a renamed
    flag's old spelling is hidden on purpose)."""
    import argparse

    sub = build_parser()
    for name in cmd:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    code, out, _ = cli(*cmd, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert sub.description and " ".join(sub.description.split()) in text, f"{cmd} has no description"
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{cmd} {action.option_strings or action.dest} has no help text"
        assert " ".join(action.help.split()) in text
        for opt in action.option_strings:
            assert opt in text


def test_parser_lists_subcommands():
    text = build_parser().format_help()
    for cmd in ("retrain", "features", "synth", "serve", "resume", "stack", "report"):
        assert cmd in text


def test_report_artifact_embeds_every_plot():
    import base64

    from macd_ml.tasks.report import embed_images

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    md = "# r\n![calibration_h5](plots/calibration_h5.png)\n![importance](plots/importance.png)\n"
    out = embed_images(md, {"plots/calibration_h5.png": png, "plots/importance.png": png[::-1]})
    assert "](plots/" not in out
    uris = [line.split("](", 1)[1].rstrip(")") for line in out.splitlines() if line.startswith("![")]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in uris] == [png, png[::-1]]

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
    # the run form's shape: what differs from the defaults (flows/config.py, form_values)
    assert dep.parameters["config"] == {"data_dir": "/data/candles", "out_dir": "/srv/out"}
    assert dep.parameters["require_data"] is True and dep.parameters["skip_unchanged"] is True
    # one run per output folder is the flow's own slot (flows/retrain.py, output_slot), taken after its checks
    assert dep.concurrency_limit is None and dep.enforce_parameter_schema is True
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
    """(path, field schema) for every field of the form, nested models and folded sections included."""
    defs = schema["definitions"]

    def walk(props, path):
        for name, field in props.items():
            yield f"{path}{name}", field
            ref = field.get("$ref") or next((a.get("$ref") for a in field.get("allOf", [])), None)
            if ref:
                yield from walk(defs[ref.rsplit("/", 1)[-1]]["properties"], f"{path}{name}.")
            elif "properties" in field:  # a folded section (flows/config.py, _folded)
                yield from walk(field["properties"], f"{path}{name}.")

    yield from walk(schema["properties"], "")


def _folded(field) -> bool:
    """A section the form shows folded: "Defaults" (null) or "Edit" (its fields)."""
    return [o.get("title") for o in field.get("anyOf", [])] == ["Defaults", "Edit"] and "properties" in field


def test_ui_form_is_the_pydantic_config():
    schema = _form()
    assert list(schema["properties"]) == ["config", "run_id", "require_data", "skip_unchanged"]
    assert schema.get("required", []) == []
    form = schema["definitions"]["RetrainConfig"]["properties"]
    assert list(form) == ["target", "data_dir", "horizons", "until", "force", "out_dir", "advanced"]
    for key in ("cross", "folds", "features", "models", "serving"):
        assert key in form["advanced"]["properties"], key


def test_every_form_field_is_described_and_usable_without_a_type_toggle():
    fields = dict(_fields(_form()))
    assert len(fields) > 60
    undescribed = [p for p, f in fields.items() if not f.get("description")]
    assert undescribed == [], f"form fields without a description: {undescribed}"
    # a type toggle only where it folds a section ("Defaults" / "Edit"), never on a field a user types into
    toggles = [
        p
        for p, f in fields.items()
        if ("anyOf" in f and not _folded(f)) or f.get("type") == "null" or "null" in str(f.get("type"))
    ]
    assert toggles == [], f"nullable fields (a type toggle in the UI): {toggles}"
    raw = [p for p, f in fields.items() if f.get("type") == "object" and "properties" not in f]
    assert raw == [], f"free-form JSON boxes: {raw}"


def test_models_are_an_enum_multi_select_and_feature_sets_typed():
    fields = dict(_fields(_form()))
    enabled = fields["config.advanced.models.enabled"]
    assert enabled["type"] == "array"
    assert set(enabled["items"]["enum"]) == {"lgb", "xgb", "lgb_cross", "lstm", "tft"}
    for m in ("lgb", "xgb", "lgb_cross", "lstm", "tft"):
        assert fields[f"config.advanced.models.feature_sets.{m}"]["enum"] == ["own", "all"]
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
    # a retrain waits for its output folder inside the flow, after its checks (flows/retrain.py, output_slot)
    assert "concurrency_limit" not in deps["retrain"] and "concurrency_limit" not in nightly
    fleet = deps["fleet-nightly"]  # the watchlist is a config key like any other
    assert RetrainConfig.model_validate(fleet["parameters"]["config"]).targets == [
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
        "BNBUSDT",
        "XRPUSDT",
    ]
    assert fleet["schedules"][0]["active"] is False and fleet["parameters"]["require_data"] is True
    assert fleet["concurrency_limit"] == 1
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


# --------------------------------------------------------------------------------------------- a deployment run


@pytest.fixture(scope="module")
def retrain_deployment(prefect_server):
    """The retrain flow as a deployment on the test API; its runs are executed here, as a worker would."""
    from macd_ml.flows.retrain import retrain

    return retrain.to_deployment(name="slot-test").apply()


def _deployment_run(deployment_id, parameters: dict):
    """Create a flow run of the deployment and run it in this process: (flow run id, final state)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from macd_ml.flows.retrain import retrain

    with get_client(sync_client=True) as client:
        fr = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    return fr.id, run_flow(retrain, flow_run=fr, parameters=fr.parameters, return_type="state")


def _slot(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


class _Held:
    """Another run's hold on an output folder's slot (a lease, as the flow takes it)."""

    def __init__(self, out: Path):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists

        from macd_ml.flows.retrain import slot_name

        self.name = slot_name(out)
        with get_client(sync_client=True) as client:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=self.name, limit=1))
            except ObjectAlreadyExists:
                pass
            got = client.increment_concurrency_slots_with_lease([self.name], 1, "concurrency", lease_duration=600)
        self.lease = got.json()["lease_id"]

    def release(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(self.lease)


def test_a_bad_deployment_run_fails_at_once_with_one_line_while_another_holds_its_folder(retrain_deployment, tmp_path):
    """A rule across keys (the form cannot refuse it): the run ends FAILED in seconds, its state's message one line
    naming the key, without waiting for the output folder another run holds and without writing anything."""
    import time

    out = tmp_path / "out"
    held = _Held(out)
    try:
        config = {"horizons": [5, 24], "out_dir": str(out), "advanced": {"folds": {"embargo_hours": 6}}}
        t0 = time.monotonic()
        _, state = _deployment_run(retrain_deployment, {"config": config})
        assert time.monotonic() - t0 < 60
        assert state.is_failed(), state
        assert state.message.startswith("config key 'folds.embargo_hours': ") and "\n" not in state.message
        assert _slot(held.name).active_slots == 1  # still the other run's
        assert not out.exists()  # nothing written
    finally:
        held.release()


def test_a_deployment_run_waits_for_its_output_folder_after_its_checks_and_is_named_by_what_it_does(
    retrain_deployment, tmp_path, monkeypatch
):
    """A good run checks its input first, then waits while another run holds its output folder, and starts writing
    only once it holds the folder itself; its flow run is named by its target and run id."""
    import threading
    import time
    from types import SimpleNamespace

    from prefect.client.orchestration import get_client

    import macd_ml.flows.retrain as retrain_module

    checked, ran = threading.Event(), threading.Event()
    monkeypatch.setattr(retrain_module, "preflight", lambda config, out: checked.set())

    def pipeline(config, out, run_id, s):
        assert _slot(retrain_module.slot_name(out)).active_slots == 1  # its own
        ran.set()
        return SimpleNamespace(run_id=run_id, path=str(out / "runs" / run_id))

    monkeypatch.setattr(retrain_module, "run_pipeline", pipeline)
    monkeypatch.setattr(retrain_module, "remember", lambda *a: None)
    out = tmp_path / "out"
    held = _Held(out)
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(
            zip(
                ("id", "state"),
                _deployment_run(retrain_deployment, {"config": {"target": "btcusdt", "out_dir": str(out)}}),
            )
        )
    )
    try:
        runner.start()
        assert checked.wait(60), "preflight never ran"
        time.sleep(3)
        assert runner.is_alive() and not ran.is_set(), "it did not wait for the folder another run holds"
    finally:
        held.release()
    runner.join(120)
    assert not runner.is_alive() and ran.is_set() and result["state"].is_completed(), result
    assert _slot(held.name).active_slots == 0  # released at the end
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(result["id"])
    assert fr.name == f"BTCUSDT {fr.expected_start_time:%Y%m%dT%H%M%SZ}-{str(fr.id)[:8]}", fr.name


def test_the_outputs_artifact_is_the_flow_runs_only_one_and_a_retry_rewrites_it(prefect_server):
    """The Artifacts tab lists a flow run's own artifacts first, in id order (random UUIDs): the outputs artifact
    is its only own one, rewritten in place by a second attempt; the report's belong to a task run."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from macd_ml.tasks.report import RunOutputs, publish_outputs, publish_ui_artifacts

    @task
    def report() -> dict:
        return {"report.md": "x"}

    def outputs(status: str) -> RunOutputs:
        return RunOutputs("ETHUSDT", "20260101T000000Z-0000000a", status, "why", "/o/runs/r", "/o/runs/r/report.md",
                          None, "/o", None)  # fmt: skip

    @flow
    def attempt() -> None:
        made = report()
        from macd_ml.models.evaluation.metrics import Metrics

        metrics = Metrics.model_construct(target="ETHUSDT", run_id="r", health=None, models={}, meta={})
        publish_ui_artifacts(metrics, "# report", made_by=made)
        publish_outputs(outputs("failed"))
        publish_outputs(outputs("promoted"))

    state = attempt(return_state=True)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    own = [a for a in arts if a.task_run_id is None]
    assert [a.key for a in own] == ["macd-ml-ethusdt-outputs"], [(a.key, a.task_run_id) for a in arts]
    assert "promoted" in own[0].data and "failed" not in own[0].data and "`/o/runs/r`" in own[0].data
    assert {a.key for a in arts if a.task_run_id is not None} >= {"macd-ml-ethusdt-report", "macd-ml-ethusdt-auc"}
